"""``avictl`` / ``python -m avictl``.

Every expected error leaves as one line on stderr (exit 1: refused, 2: bad usage; click's usage
errors included); see :func:`avictl.errors.run_guarded`, which the root group's ``main`` uses so
that click's test runner sees exactly what a user sees.
"""

from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["main"]


def main(argv: Optional[Sequence[str]] = None) -> None:
    from avictl.cli import cli

    cli.main(args=argv, prog_name="avictl")


if __name__ == "__main__":
    main()
