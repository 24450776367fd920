"""Prometheus text for one Service Engine, rendered from its status report. Pure."""

from __future__ import annotations

from typing import Any

__all__ = ["render_metrics"]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(se_name: str, status: dict[str, Any]) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, doc: str, samples: list[tuple[dict[str, str], Any]]) -> None:
        lines.append(f"# HELP {name} {doc}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in {"se": se_name, **labels}.items())
            lines.append(f"{name}{{{text}}} {value}")

    se = status.get("se") or {}
    metric("avictl_se_applied_revision", "gauge", "Slice revision this SE applied", [({}, status.get("applied_revision"))])
    metric("avictl_se_nack", "gauge", "1 while the last slice had errors", [({}, 1 if status.get("nack") else 0)])
    metric("avictl_se_cpu_percent", "gauge", "CPU use of the SE process", [({}, se.get("cpu_percent"))])
    metric("avictl_se_memory_bytes", "gauge", "Resident memory of the SE process", [({}, int(se.get("memory_mb", 0) * 2**20))])
    vs = status.get("telemetry") or {}
    per_vs = lambda key: [({"vs": name}, v.get(key)) for name, v in sorted(vs.items())]  # noqa: E731
    metric("avictl_vs_open_connections", "gauge", "Open client connections", per_vs("open_connections"))
    metric("avictl_vs_connections_total", "counter", "Client connections accepted", per_vs("total_connections"))
    metric("avictl_vs_bytes_in_total", "counter", "Bytes received from clients", per_vs("bytes_in"))
    metric("avictl_vs_bytes_out_total", "counter", "Bytes sent to clients", per_vs("bytes_out"))
    metric("avictl_vs_requests_total", "counter", "HTTP requests", per_vs("requests"))
    metric("avictl_vs_backend_connect_failures_total", "counter", "Backend connects that failed", per_vs("connect_failures"))
    metric("avictl_vs_responses_total", "counter", "HTTP responses by class",
           [({"vs": name, "class": cls}, n) for name, v in sorted(vs.items()) for cls, n in sorted((v.get("responses") or {}).items())])
    lines.append("# HELP avictl_vs_latency_seconds Request latency, request head to last response byte")
    lines.append("# TYPE avictl_vs_latency_seconds histogram")
    for name, v in sorted(vs.items()):
        latency = v.get("latency") or {}
        for le, count in latency.get("buckets") or []:
            lines.append(f'avictl_vs_latency_seconds_bucket{{se="{_escape(se_name)}",vs="{_escape(name)}",le="{le}"}} {count}')
        lines.append(f'avictl_vs_latency_seconds_sum{{se="{_escape(se_name)}",vs="{_escape(name)}"}} {latency.get("sum", 0)}')
        lines.append(f'avictl_vs_latency_seconds_count{{se="{_escape(se_name)}",vs="{_escape(name)}"}} {latency.get("count", 0)}')
    servers = status.get("servers") or {}
    metric("avictl_pool_server_up", "gauge", "1 when the SE's health monitors see the server up",
           [({"pool": pool, "server": key}, 1 if up else 0) for pool, states in sorted(servers.items()) for key, up in sorted(states.items())])
    return "\n".join(lines) + "\n"
