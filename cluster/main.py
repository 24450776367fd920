"""``avictl controller run``: one controller node in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING, Callable, Optional

import structlog
from aiohttp import web

from cluster.api.app import make_app
from cluster.config import NodeConfig
from cluster.node import Controller
from cluster.raft import RaftTuning
from cluster.reconciler import Reconciler

if TYPE_CHECKING:
    from cluster.cloud import CloudDriver

__all__ = ["run_controller", "serve"]

log = structlog.get_logger(__name__)


async def serve(config: NodeConfig, stop: asyncio.Event, tuning: Optional[RaftTuning] = None) -> None:
    node = Controller(config, tuning=tuning)
    await node.start()
    reconciler = Reconciler(node, _cloud_of(config))
    app = make_app(node, reconciler=reconciler)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, config.api_host, config.api_port, reuse_address=True)
    await site.start()
    log.info("controller_serving", node_id=config.node_id, api=config.api_url, raft=config.raft_addr)
    reconciling = asyncio.create_task(reconciler.run(stop))
    try:
        await stop.wait()
    finally:
        log.info("controller_stopping", node_id=config.node_id)
        await reconciling
        await runner.cleanup()
        await node.stop()


def _cloud_of(config: NodeConfig) -> Optional[CloudDriver]:
    if not config.local_cloud_home:
        return None
    from pathlib import Path

    from cluster.api.auth import cloud_enrolment_for
    from cluster.cloud.local import LocalCloud

    controllers = [config.api_url, *(p.api_url for p in config.peers)]
    home = Path(config.local_cloud_home)
    # One HA socket directory per cloud home, so SEs of two clusters on one host never meet.
    # Each SE the cloud starts gets an enrolment good for its own name only, once.
    return LocalCloud(home, controllers, lambda name: cloud_enrolment_for(config.cluster_secret, name), ha_dir=home / "run")


def run_controller(config: NodeConfig) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(config, stop)

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(main())


def _loop_factory() -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    """uvloop when installed (it roughly doubles aiohttp's request rate here), else asyncio's loop."""
    if os.environ.get("AVICTL_LOOP") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    import argparse
    import sys

    from cluster.config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m cluster.main", description="Run one avictl controller node.")
    parser.add_argument("--config", required=True, help="the node's JSON configuration file")
    args = parser.parse_args()
    try:
        node_config = NodeConfig.load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    from cluster.logsetup import configure_logging

    configure_logging(node_config.node_id)
    run_controller(node_config)
