"""``avictl logs VS`` and ``avictl metrics VS``: what the Service Engines serving a virtual service report."""

from __future__ import annotations

from typing import Any

import click

from avictl import render
from avictl.commands._crud import find_or_fail
from avictl.commands._output import emit, output_option
from avictl.commands._settings import client_of

__all__ = ["logs_cmd", "metrics_cmd"]


@click.command("logs")
@click.argument("vs_name", metavar="VS")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="How many of the newest logs.")
@output_option
@click.pass_context
def logs_cmd(ctx: click.Context, vs_name: str, limit: int, fmt: str) -> None:
    """The newest client request logs of virtual service VS, from every SE that serves it."""
    client = client_of(ctx)
    vs = find_or_fail(client, "virtualservice", vs_name)
    logs = client.get(f"/api/virtualservice/{vs['uuid']}/logs", {"limit": limit})["results"]
    if fmt != "table":
        emit(render.dump(logs, fmt))
        return
    rows = ([_log_time(r.get("time")), r.get("se"), r.get("client"), r.get("method"), r.get("uri"), r.get("status"),
             r.get("latency_ms"), r.get("server")] for r in logs)
    emit(render.table(["TIME", "SE", "CLIENT", "METHOD", "URI", "STATUS", "MS", "SERVER"], rows))


def _log_time(when: Any) -> str:
    import datetime

    if not isinstance(when, (int, float)):
        return "-"
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%H:%M:%S.%f")[:-3]


@click.command("metrics")
@click.argument("vs_name", metavar="VS")
@output_option
@click.pass_context
def metrics_cmd(ctx: click.Context, vs_name: str, fmt: str) -> None:
    """Live counters of virtual service VS on each SE that serves it (as last reported)."""
    client = client_of(ctx)
    vs = find_or_fail(client, "virtualservice", vs_name)
    per_se = {}
    for se_name in (vs.get("runtime") or {}).get("serviceengines") or []:
        se = client.find("serviceengine", se_name)
        stats = (((se or {}).get("runtime") or {}).get("telemetry") or {}).get(vs_name)
        if stats:
            per_se[se_name] = {k: v for k, v in stats.items() if k not in ("uuid", "name")}
    if fmt != "table":
        emit(render.dump(per_se, fmt))
        return
    rows = ([se, s.get("open_connections"), s.get("total_connections"), s.get("requests"),
             (s.get("responses") or {}).get("2xx"), (s.get("responses") or {}).get("5xx"), s.get("bytes_in"), s.get("bytes_out")]
            for se, s in per_se.items())
    emit(render.table(["SE", "OPEN", "CONNECTIONS", "REQUESTS", "2XX", "5XX", "BYTES_IN", "BYTES_OUT"], rows))
