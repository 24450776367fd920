"""The ``avictl`` command line: local cluster lifecycle, CRUD for every kind, apply, events.

Every command that prints data takes ``-o table|json|yaml`` (default ``table``, or
``$AVICTL_OUTPUT``). Errors leave through :func:`avictl.errors.run_guarded`: one line on stderr,
exit 1 when refused, 2 for bad usage.

This module builds the root group and its global options; the commands live in
:mod:`avictl.commands` and are registered at the end.
"""

from __future__ import annotations

import sys
from typing import Any, Optional, Sequence

import click

from avictl.commands import cluster_hosts as _cluster_hosts  # noqa: F401  (adds 'cluster init' and 'cluster join')
from avictl.commands._settings import Settings
from avictl.commands.apply import apply_cmd
from avictl.commands.chaos import chaos_group
from avictl.commands.cluster import cluster_group
from avictl.commands.controller import controller_group
from avictl.commands.events import events_cmd
from avictl.commands.kinds import make_kind_group
from avictl.commands.lab import lab_group
from avictl.commands.service_engines import SERVICE_ENGINE_COMMANDS, VIRTUAL_SERVICE_COMMANDS
from avictl.commands.telemetry import logs_cmd, metrics_cmd
from avictl.errors import run_guarded
from avictl.objects import ALL_KINDS, canonical_kind

__all__ = ["cli", "Settings"]


class AvictlGroup(click.Group):
    """The root group: resolves kind aliases and turns every expected error into one line."""

    def main(self, args: Optional[Sequence[str]] = None, prog_name: Optional[str] = None,
             complete_var: Optional[str] = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        invoke = lambda: super(AvictlGroup, self).main(  # noqa: E731
            args, prog_name or "avictl", complete_var, standalone_mode=False, **extra
        )
        sys.exit(run_guarded(invoke))

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, cmd_name)
        if command is None:
            kind = canonical_kind(cmd_name)
            if kind is not None:
                command = super().get_command(ctx, kind)
        return command


@click.group(cls=AvictlGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--api", multiple=True, envvar="AVICTL_API", metavar="URL",
              help="Controller API URL (repeatable or comma-separated; default: the context's nodes).")
@click.option("--token", envvar="AVICTL_TOKEN", metavar="TOKEN", help="Bearer token (default: the context's).")
@click.option("--deadline", type=click.FloatRange(0.0, 3600.0), default=15.0, envvar="AVICTL_DEADLINE", show_default=True,
              help="Seconds to keep retrying a request across nodes.")
@click.option("--tenant", envvar="AVICTL_TENANT", help="Tenant (X-Avi-Tenant; default admin).")
@click.pass_context
def cli(ctx: click.Context, api: tuple[str, ...], token: Optional[str], deadline: float, tenant: Optional[str]) -> None:
    """avictl: an event-sourced load-balancer controller cluster.

    \b
    Start here:
      avictl cluster up --nodes 3
      avictl pool create web-pool --server 127.0.0.1:9001 --algorithm round_robin
      avictl vs create web --vip 127.10.0.1 --port 8080 --pool web-pool
      avictl events --follow

    The context (nodes, token) lives in $AVICTL_HOME/context.json (default ~/.avictl).
    """
    if isinstance(ctx.obj, Settings):
        return  # injected (tests)
    api = tuple(a for value in api for a in value.split())
    ctx.obj = Settings(api=api, token=token, deadline=deadline, tenant=tenant)


def _register(root: click.Group) -> None:
    """Every command of :mod:`avictl.commands` under ``root``; SE and VS operations join their kind's CRUD group."""
    kinds = {kind: make_kind_group(kind) for kind in ALL_KINDS}
    for command in SERVICE_ENGINE_COMMANDS:
        kinds["serviceengine"].add_command(command)
    for command in VIRTUAL_SERVICE_COMMANDS:
        kinds["virtualservice"].add_command(command)
    for command in (cluster_group, controller_group, *kinds.values(), apply_cmd, events_cmd, logs_cmd, metrics_cmd, chaos_group,
                    lab_group):
        root.add_command(command)


_register(cli)
