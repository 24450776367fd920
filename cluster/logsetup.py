"""structlog set-up shared by every avictl process: JSON lines when stderr is not a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Optional

import structlog

__all__ = ["configure_logging"]


def configure_logging(node_id: Optional[str] = None, level: int = logging.INFO) -> None:
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
    ]
    if sys.stderr.isatty():
        processors.append(structlog.dev.ConsoleRenderer())
    else:
        processors.append(structlog.processors.JSONRenderer())
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    if node_id is not None:
        structlog.contextvars.bind_contextvars(node_id=node_id)
    # pysyncobj logs through the standard library; keep its warnings, in the same stream.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
