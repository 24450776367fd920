"""``avictl controller run``: one controller node in the foreground."""

from __future__ import annotations

import click

from avictl.errors import Refused, UsageFault

__all__ = ["controller_group"]


@click.group("controller")
def controller_group() -> None:
    """Run a controller node in the foreground."""


@controller_group.command("run")
@click.option("--config", "config_path", required=True, metavar="PATH", help="The node's node.json.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
def controller_run(config_path: str, log_level: str) -> None:
    """Run one controller node until SIGTERM/SIGINT (for service managers and 'cluster up')."""
    from cluster.config import ConfigError, NodeConfig
    from cluster.logsetup import configure_logging

    try:
        config = NodeConfig.load(config_path)
    except ConfigError as exc:
        raise UsageFault(str(exc)) from None
    configure_logging(node_id=config.node_id, level=log_level)
    from cluster.main import run_controller

    try:
        run_controller(config)
    except OSError as exc:
        raise Refused(f"controller {config.node_id} cannot run: {exc}") from None
