"""``avictl events``: the committed log, as a page or followed live."""

from __future__ import annotations

import json
from typing import Any, Optional

import click

from avictl import render
from avictl.commands._output import emit, note, output_option
from avictl.commands._settings import client_of

__all__ = ["events_cmd"]


_EVENT_WIDTHS = (6, 24, 16, 34)


def _event_line(event: dict[str, Any]) -> str:
    cells = [render.cell(v) for v in render.event_row(event)]
    return "  ".join(c.ljust(w) for c, w in zip(cells, _EVENT_WIDTHS, strict=False)) + "  " + cells[-1]


@click.command("events")
@click.option("--since", type=click.IntRange(min=1), default=None, help="First revision to show (default: the last --limit).")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True, help="Events to show before following.")
@click.option("--follow", "-F", is_flag=True, help="Keep streaming new events until Ctrl-C.")
@output_option
@click.pass_context
def events_cmd(ctx: click.Context, since: Optional[int], limit: int, follow: bool, fmt: str) -> None:
    """The log: committed events with revision, type, time and command id."""
    client = client_of(ctx)
    if since is None:
        head = client.get("/api/events", {"since": 0, "limit": 1})
        current = int((head or {}).get("revision") or 0)
        since = max(1, current - limit + 1)
        if follow and current == 0:
            since = 1
    if not follow:
        doc = client.get("/api/events", {"since": since, "limit": limit})
        emit(render.render_events(list((doc or {}).get("results") or []), fmt))
        return
    if fmt == "table":
        emit("  ".join(h.ljust(w) for h, w in zip(render.EVENT_HEADERS, _EVENT_WIDTHS, strict=False)) + "  " + render.EVENT_HEADERS[-1])
    outage: list[str] = []

    def on_retry(reason: str) -> None:
        if not outage:
            note(f"watch interrupted ({reason}); retrying")
        outage.append(reason)

    try:
        for event in client.watch(since, on_retry=on_retry):
            if outage:
                note("watch resumed")
                outage.clear()
            if fmt == "table":
                emit(_event_line(event))
            elif fmt == "json":
                emit(json.dumps(event, separators=(",", ":")))
            else:
                emit("---\n" + render.dump(event, "yaml"))
    except KeyboardInterrupt:
        return  # Ctrl-C ends --follow: not an error
