"""Logging for long-running avictl processes (controllers): structlog, one event per line.

JSON lines when stderr is not a terminal (files, service managers, ``cluster up``'s logs); a
readable console rendering when it is. Standard-library loggers (aiohttp, pysyncobj) go through
the same renderer, so a log file never mixes formats.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

import structlog

__all__ = ["configure_logging"]


def configure_logging(node_id: Optional[str] = None, level: str = "info", *, stream: Any = None) -> None:
    """Configure structlog and stdlib logging for this process; bind ``node_id`` to every event."""
    stream = stream if stream is not None else sys.stderr
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if is_tty:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        shared.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared,
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    structlog.contextvars.clear_contextvars()
    if node_id is not None:
        structlog.contextvars.bind_contextvars(node_id=node_id)
