"""Running a Service Engine (``avictl se run``) and placing virtual services on Service Engines
(``avictl vs place|scale-out|scale-in|migrate|switchover``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Optional

import click

from avictl import render
from avictl.commands._crud import find_or_fail
from avictl.commands._output import emit, output_option
from avictl.commands._settings import client_of, settings
from avictl.context import avictl_home, load_context
from avictl.errors import UsageFault

__all__ = ["SERVICE_ENGINE_COMMANDS", "VIRTUAL_SERVICE_COMMANDS"]


@click.command("run")
@click.option("--name", required=True, help="The SE's name (registered with the cluster on first start).")
@click.option("--controller", "controllers", multiple=True, metavar="URL",
              help="Controller API URL (repeatable; default: the global --api, else the context's nodes).")
@click.option("--state-dir", metavar="DIR", help="Where the last good slice is kept (default: $AVICTL_HOME/se/<name>).")
@click.option("--report-interval", type=click.FloatRange(0.2, 3600.0), default=5.0, show_default=True,
              help="Seconds between status reports to the controllers.")
@click.option("--metrics", "metrics_listen", metavar="HOST:PORT",
              help="Serve Prometheus /metrics here (e.g. 127.0.0.1:9910; port 0 picks one; default: off).")
@click.option("--ha-dir", metavar="DIR",
              help="Where this SE's Unix socket for active/standby VIP handoff lives (default: $AVICTL_HOME/run).")
@click.option("--scaleout-mode", type=click.Choice(["auto", "relay"]), default="auto", show_default=True,
              help="How an active/active primary hands connections to its secondaries: auto passes the accepted "
                   "socket (relaying only when that fails); relay always relays them through this SE.")
@click.option("--data-interface", metavar="IF",
              help="On a host of a cloud of hosts (CLOUD_LINUXSERVER): the interface whose network carries the VIPs; "
                   "the SE reports its MAC and addresses when it registers.")
@click.option("--enrol-token", envvar="AVICTL_ENROL_TOKEN", metavar="TOKEN",
              help="A single-use enrolment token ('avictl se enrol'): registers this SE once; it then uses its own credential.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.pass_context
def se_run(ctx: click.Context, name: str, controllers: tuple[str, ...], state_dir: Optional[str], report_interval: float,
           metrics_listen: Optional[str], ha_dir: Optional[str], scaleout_mode: str, data_interface: Optional[str],
           enrol_token: Optional[str], log_level: str) -> None:
    """Run a Service Engine in the foreground: it registers, receives the VSs placed on it and serves them.

    It registers with --enrol-token (or the global --token) and keeps the credential the cluster
    answers with in its state directory (owner only): after that it needs no other token.
    """
    from cluster.logsetup import configure_logging

    opts = settings(ctx)
    urls = [u.strip() for value in (controllers or opts.api) for u in value.split(",") if u.strip()]
    token = enrol_token or opts.token
    if not urls or not token:
        context = load_context()
        if context is None:
            raise UsageFault("no controller given: use --controller URL and --token, or run 'avictl cluster up' first")
        urls = urls or context.api_urls
        token = token or context.token
    listen = None
    if metrics_listen:
        host, _, port = metrics_listen.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise UsageFault(f"--metrics must be HOST:PORT, not {metrics_listen!r}")
        listen = (host, int(port))
    if data_interface is not None:
        from engine.interfaces import describe

        try:
            describe(data_interface)
        except OSError as exc:
            raise UsageFault(f"--data-interface {data_interface}: {exc.strerror or exc}") from None
    configure_logging(node_id=f"se:{name}", level=log_level)
    from engine.main import run_service_engine

    def _default_ha_dir() -> Path:
        import hashlib
        import tempfile

        # A Unix socket path holds at most 107 bytes: a deep AVICTL_HOME gets a short stand-in.
        run = avictl_home() / "run"
        if len(os.fsencode(str(run / f"{name}.sock"))) <= 107:
            return run
        digest = hashlib.sha1(os.fsencode(str(run))).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"avictl-run-{digest}"

    status = run_service_engine(name, urls, str(token), state_dir or avictl_home() / "se" / name, report_interval=report_interval,
                                metrics_listen=listen, ha_dir=ha_dir or _default_ha_dir(), scaleout_mode=scaleout_mode,
                                data_interface=data_interface)
    if status:
        click.echo(f"error: service engine {name} was deleted by the cluster; it stopped serving (exit {status})", err=True)
        sys.exit(status)


@click.command("place")
@click.argument("name")
@click.option("--se", "ses", multiple=True, metavar="SE", help="A Service Engine to serve NAME on (repeatable; none unplaces it).")
@output_option
@click.pass_context
def vs_place(ctx: click.Context, name: str, ses: tuple[str, ...], fmt: str) -> None:
    """Place virtual service NAME on exactly the given Service Engines (an event in the log)."""
    client = client_of(ctx)
    obj = find_or_fail(client, "virtualservice", name)
    placed = client.post(f"/api/virtualservice/{obj['uuid']}/placement", {"serviceengine_refs": list(ses)})
    emit(render.render_objects("virtualservice", [placed], fmt))


# The product's VS actions act on one VIP; avictl's virtual services have one, vip_id "0".
_VIP_ID = "0"


def _vs_action(ctx: click.Context, name: str, action: str, body: dict[str, Any], fmt: str) -> None:
    """POST ``body`` to virtual service NAME's action route; print the VS it answers, as ``vs place`` does.

    An SE is sent as given (name, path or URL): the server resolves it.
    """
    client = client_of(ctx)
    obj = find_or_fail(client, "virtualservice", name)
    answered = client.post(f"/api/virtualservice/{obj['uuid']}/{action}", {"vip_id": _VIP_ID, **body})
    emit(render.render_objects("virtualservice", [answered], fmt))


@click.command("scale-out")
@click.argument("name")
@click.option("--to", "to_se", metavar="SE", help="The Service Engine to add (default: the controller picks one).")
@output_option
@click.pass_context
def vs_scale_out(ctx: click.Context, name: str, to_se: Optional[str], fmt: str) -> None:
    """Serve virtual service NAME on one more Service Engine."""
    _vs_action(ctx, name, "scaleout", {"to_se_ref": to_se} if to_se else {}, fmt)


@click.command("scale-in")
@click.argument("name")
@click.option("--se", "se", metavar="SE", help="The Service Engine to remove (default: the controller picks one).")
@output_option
@click.pass_context
def vs_scale_in(ctx: click.Context, name: str, se: Optional[str], fmt: str) -> None:
    """Serve virtual service NAME on one Service Engine fewer."""
    _vs_action(ctx, name, "scalein", {"se_ref": se} if se else {}, fmt)


@click.command("migrate")
@click.argument("name")
@click.option("--to", "to_se", required=True, metavar="SE", help="The Service Engine to move to.")
@click.option("--from", "from_se", metavar="SE", help="The Service Engine to move from (default: the controller picks).")
@output_option
@click.pass_context
def vs_migrate(ctx: click.Context, name: str, to_se: str, from_se: Optional[str], fmt: str) -> None:
    """Move virtual service NAME from one Service Engine to another."""
    _vs_action(ctx, name, "migrate", {"to_se_ref": to_se, **({"from_se_ref": from_se} if from_se else {})}, fmt)


@click.command("switchover")
@click.argument("name")
@output_option
@click.pass_context
def vs_switchover(ctx: click.Context, name: str, fmt: str) -> None:
    """Hand virtual service NAME's primary role to another of its Service Engines."""
    _vs_action(ctx, name, "switchover", {}, fmt)


# Added to the ``serviceengine`` and ``virtualservice`` kind groups, beside their CRUD verbs.
@click.command("enrol")
@click.option("--name", default="", help="The SE name the token may register (default: any new name).")
@click.option("--ttl", type=click.IntRange(60, 7 * 24 * 3600), default=3600, show_default=True, help="Seconds the token stays good.")
@output_option
@click.pass_context
def se_enrol(ctx: click.Context, name: str, ttl: int, fmt: str) -> None:
    """Make a single-use enrolment token for one new Service Engine ('avictl se run --enrol-token').

    The token is shown once; the cluster keeps only its hash.
    """
    made = client_of(ctx).post("/api/serviceengine/enrolment", {"name": name, "ttl": ttl} if name else {"ttl": ttl})
    emit(made["token"] if fmt == "table" else render.dump(made, fmt))


SERVICE_ENGINE_COMMANDS = (se_run, se_enrol)
VIRTUAL_SERVICE_COMMANDS = (vs_place, vs_scale_out, vs_scale_in, vs_migrate, vs_switchover)
