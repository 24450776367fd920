"""The errors the CLI expects, and the one place that turns them into a line on stderr.

Exit codes are a contract (brief §2): 1 when the cluster (or the CLI on its behalf) refuses an
operation, 2 for bad usage. No traceback reaches the user unless ``AVICTL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any, Callable

import click

__all__ = ["EXIT_INTERRUPTED", "EXIT_REFUSED", "EXIT_USAGE", "AvictlError", "Refused", "UsageFault", "run_guarded"]

EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class AvictlError(Exception):
    """An error the CLI expects; shown as ``error: <str(self)>`` and exits with ``exit_code``."""

    exit_code = EXIT_REFUSED


class Refused(AvictlError):
    """The operation was refused or could not be carried out (exit 1)."""

    exit_code = EXIT_REFUSED


class UsageFault(AvictlError):
    """The command line, a context file or an input file is wrong (exit 2)."""

    exit_code = EXIT_USAGE


def _one_line(text: str) -> str:
    return "; ".join(part.strip() for part in str(text).splitlines() if part.strip()) or "failed"


def _say(message: str) -> None:
    line = _one_line(message)
    if not line.isprintable():
        # What a server names (an object's name) never reaches the terminal raw.
        line = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in line)
    click.echo(f"error: {line}", err=True)


def _usage_hint(exc: click.UsageError) -> str:
    ctx = exc.ctx
    if ctx is None:
        return ""
    return f" (see '{ctx.command_path} --help')"


def run_guarded(invoke: Callable[[], Any]) -> int:
    """Run ``invoke`` (a non-standalone click main) and return the process exit code.

    Every expected failure becomes exactly one line on stderr.
    """
    try:
        rv = invoke()
        return rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    except click.exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_USAGE
    except click.UsageError as exc:
        _say(exc.format_message() + _usage_hint(exc))
        return EXIT_USAGE
    except click.ClickException as exc:
        _say(exc.format_message())
        return exc.exit_code
    except AvictlError as exc:
        _say(str(exc))
        return exc.exit_code
    except (click.Abort, KeyboardInterrupt):
        _say("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # stdout went away (``avictl pool list | head``): not an error worth a line.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except Exception as exc:  # noqa: BLE001 - the last line of defence: one line, never a traceback
        if os.environ.get("AVICTL_DEBUG"):
            traceback.print_exc()
        _say(f"unexpected {type(exc).__name__}: {exc} (set AVICTL_DEBUG=1 for a traceback)")
        return EXIT_REFUSED
