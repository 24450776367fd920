"""``avictl se run``: one Service Engine in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Callable, Optional

__all__ = ["EXIT_RETIRED", "run_service_engine"]

#: the exit status of an SE whose record the cluster deleted: a service manager must not restart
#: it under the same identity (EX_CONFIG; e.g. systemd's RestartPreventExitStatus=78)
EXIT_RETIRED = 78


def run_service_engine(
    name: str,
    controllers: list[str],
    token: str,
    state_dir: str | Path,
    *,
    report_interval: float = 5.0,
    metrics_listen: Optional[tuple[str, int]] = None,
    ha_dir: Optional[str | Path] = None,
    scaleout_mode: str = "auto",
    data_interface: Optional[str] = None,
) -> int:
    """Serve until stopped; the exit status: 0, or :data:`EXIT_RETIRED` when the cluster deleted this SE."""
    from engine.agent import ServiceEngineAgent

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        agent = ServiceEngineAgent(name, controllers, token, state_dir, report_interval=report_interval, metrics_listen=metrics_listen,
                                   ha_dir=ha_dir, scaleout_mode=scaleout_mode, data_interface=data_interface)
        await agent.run(stop)
        return EXIT_RETIRED if agent.retired else 0

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main())


def _loop_factory() -> Optional[Callable[[], asyncio.AbstractEventLoop]]:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
