"""How commands print: the ``-o`` option, data to stdout, remarks to stderr."""

from __future__ import annotations

from typing import Any, Callable

import click

from avictl import render

__all__ = ["emit", "note", "output_option"]


def output_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-o", "--output", "fmt", type=click.Choice(render.FORMATS), default="table", show_default=True,
        envvar="AVICTL_OUTPUT", help="Output format.",
    )(fn)


def emit(text: str) -> None:
    if text:
        click.echo(text)


def note(text: str) -> None:
    """Progress and remarks go to stderr, so stdout stays parseable."""
    click.echo(text, err=True)
