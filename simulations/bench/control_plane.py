"""``python -m simulations.bench control-plane``: avictl's write path against raw pysyncobj.

Runs, one after the other in this process tree (never concurrently: they would share the CPUs):

1. the raw pysyncobj baseline (:mod:`simulations.bench.raw_raft`) twice, with pysyncobj's
   default timings and with our ``RaftTuning()``; the better throughput is the baseline;
2. the avictl API benchmark (:mod:`simulations.bench.api_load`) on a fresh 3-node cluster.

Prints a human summary to stderr; stdout ends with one JSON line. ``ratio`` is avictl events/s
over the baseline commits/s (one API write is one event and one Raft entry). Exit status 1 when
a part that was asked for could not run (its error is in the JSON as well).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from typing import Any

__all__ = ["HELP", "add_arguments", "run", "summarize"]

HELP = "throughput and latency of API writes vs raw pysyncobj on 3 local processes"

_QUICK = {"duration_s": 3.0, "raw_lone_budget_s": 4.0, "api_lone_budget_s": 15.0}
_FULL = {"duration_s": 10.0, "raw_lone_budget_s": 25.0, "api_lone_budget_s": 60.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="3 s load phases instead of 10 s")
    parser.add_argument("--duration", type=float, default=None, help="seconds per load phase (overrides --quick)")
    parser.add_argument("--only", choices=("baseline", "api"), default=None, help="run one half only")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent API writers (default 64)")
    parser.add_argument("--payload-bytes", type=int, default=300, help="raw baseline entry payload (default 300)")
    parser.add_argument("--max-inflight", type=int, default=2000, help="raw baseline writes in flight (default 2000)")
    parser.add_argument("--macro-size", type=int, default=100,
                        help="objects per POST /api/macro in the bulk phase (default 100, a bulk apply of a few apps; 0 skips the phase)")
    parser.add_argument("--lone-writes", type=int, default=200, help="sequential writes for lone-write latency (default 200)")
    parser.add_argument("--lone-budget", type=float, default=None, help="max seconds per lone-write phase (default: by profile)")
    parser.add_argument("--tmp-dir", default=None, help="where the journals and cluster data go (default: system temp)")


def _baseline(args: argparse.Namespace, profile: dict[str, float], duration_s: float) -> dict[str, Any]:
    from simulations.bench.raw_raft import (
        pysyncobj_default_conf,
        run_raw_baseline,
        tuned_conf,
    )

    out: dict[str, Any] = {}
    for label, make_conf in (("default", pysyncobj_default_conf), ("tuned", tuned_conf)):
        try:
            result = run_raw_baseline(
                label,
                make_conf(),
                duration_s=duration_s,
                payload_bytes=args.payload_bytes,
                max_inflight=args.max_inflight,
                lone_writes=args.lone_writes,
                lone_budget_s=profile["raw_lone_budget_s"],
                tmp_root=args.tmp_dir,
            )
            out[label] = result.to_json()
            _say(_describe_raw(result.to_json()))
        except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
            out[label] = {"error": _error_text(exc)}
            _say(f"baseline[{label}] FAILED: {exc}")
    return out


def _api(args: argparse.Namespace, profile: dict[str, float], duration_s: float) -> dict[str, Any]:
    try:
        from simulations.bench.api_load import run_api_bench

        result = run_api_bench(
            duration_s=duration_s,
            concurrency=args.concurrency,
            lone_writes=args.lone_writes,
            lone_budget_s=profile["api_lone_budget_s"],
            tmp_root=args.tmp_dir,
            macro_size=args.macro_size,
        )
    except Exception as exc:  # noqa: BLE001 - reported in the summary, never hidden
        _say(f"avictl API FAILED: {exc}")
        return {"error": _error_text(exc)}
    data = result.to_json()
    data["errors"] = result.errors
    _say(_describe_api(data))
    return data


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (ImportError, AttributeError, TypeError, KeyError)):
        return "".join(traceback.format_exception(exc))[-3000:]
    return f"{type(exc).__name__}: {exc}"[-3000:]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe_raw(r: dict[str, Any]) -> str:
    lone = r["lone"]
    return (
        f"baseline[{r['label']}]: {r['events_per_s']:.0f} commits/s over {r['duration_s']:g} s "
        f"(per second {r['per_second']}, failures {r['failures'] or 0}, undrained {r['undrained']}, "
        f"leader CPU {r['leader_cpu_fraction']:.0%}); lone write p50 {lone['p50']} ms p99 {lone['p99']} ms "
        f"(n={lone['n']}, errors {r['lone_errors']}); {r['payload_bytes']} B payload"
    )


def _describe_api(a: dict[str, Any]) -> str:
    c, lone = a["concurrent"], a["lone"]
    return (
        f"avictl API: {a['events_per_s']:.0f} events/s over {a['duration_s']:g} s with {a['concurrency']} writers "
        f"(per second {a['per_second']}); concurrent p50 {c['p50']} ms p99 {c['p99']} ms (n={c['n']}); "
        f"lone write (leader {a['leader']}) p50 {lone['p50']} ms p99 {lone['p99']} ms (n={lone['n']}); "
        f"errors {a['errors']} {a['concurrent_errors'] or ''}{a['lone_errors'] or ''}; "
        f"client CPU {a['client_cpu_fraction']:.0%}, controllers CPU {a['controller_cpu_fraction']}"
    ) + (
        f"\navictl API, {a['macro_size']} pools per POST /api/macro: {a['macro_events_per_s']:.0f} events/s "
        f"(request p50 {a['macro_concurrent'].get('p50')} ms p99 {a['macro_concurrent'].get('p99')} ms); "
        f"errors {a['macro_errors'] or 0}; client CPU {a['macro_client_cpu_fraction']:.0%}, "
        f"controllers CPU {a['macro_controller_cpu_fraction']}"
        if a.get("macro_events_per_s") is not None else ""
    )


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def summarize(baseline: dict[str, Any], api: dict[str, Any], *, duration_s: float, payload_bytes: int) -> dict[str, Any]:
    """The one-line JSON report from the parts' results (missing parts give nulls)."""
    rates = {label: _get(baseline, label, "events_per_s") for label in ("default", "tuned")}
    best_label = max((k for k, v in rates.items() if v is not None), key=lambda k: rates[k], default=None)
    best = rates[best_label] if best_label is not None else None
    events = api.get("events_per_s")
    macro_events = api.get("macro_events_per_s")
    api_errors = api.get("errors")
    baseline_errors = sum(
        sum(_get(baseline, label, "failures").values()) + _get(baseline, label, "lone_errors")
        for label in ("default", "tuned")
        if _get(baseline, label, "failures") is not None
    )
    return {
        "events_per_s": events,
        "baseline_events_per_s": best,
        "ratio": round(events / best, 4) if events is not None and best else None,
        "ratio_vs_tuned": round(events / rates["tuned"], 4) if events is not None and rates["tuned"] else None,
        "macro_size": api.get("macro_size"),
        "macro_events_per_s": macro_events,
        "macro_ratio": round(macro_events / best, 4) if macro_events is not None and best else None,
        "macro_ratio_vs_tuned": round(macro_events / rates["tuned"], 4) if macro_events is not None and rates["tuned"] else None,
        "p50_ms": _get(api, "lone", "p50"),
        "p99_ms": _get(api, "lone", "p99"),
        "concurrent_p50_ms": _get(api, "concurrent", "p50"),
        "concurrent_p99_ms": _get(api, "concurrent", "p99"),
        "baseline_default_events_per_s": rates["default"],
        "baseline_tuned_events_per_s": rates["tuned"],
        "baseline_setting": best_label,
        "baseline_lone_p50_ms": {label: _get(baseline, label, "lone", "p50") for label in ("default", "tuned")},
        "baseline_lone_p99_ms": {label: _get(baseline, label, "lone", "p99") for label in ("default", "tuned")},
        "baseline_default_lone_p50_ms": _get(baseline, "default", "lone", "p50"),
        "baseline_tuned_lone_p50_ms": _get(baseline, "tuned", "lone", "p50"),
        "errors": (api_errors or 0) + baseline_errors,
        "api_errors": api_errors,
        "baseline_errors": baseline_errors,
        "payload_bytes": payload_bytes,
        "avictl_proposal_bytes": api.get("proposal_bytes"),
        "duration_s": duration_s,
        "concurrency": api.get("concurrency"),
        "cpu_count": os.cpu_count(),
        "api_error": api.get("error"),
        "baseline_error": {k: v["error"] for k, v in baseline.items() if isinstance(v, dict) and "error" in v} or None,
        "details": {"baseline": baseline, "api": api},
    }


def run(args: argparse.Namespace) -> int:
    profile = dict(_QUICK if args.quick else _FULL)
    if args.lone_budget is not None:
        profile["raw_lone_budget_s"] = profile["api_lone_budget_s"] = float(args.lone_budget)
    duration_s = float(args.duration if args.duration is not None else profile["duration_s"])
    baseline: dict[str, Any] = {}
    api: dict[str, Any] = {}
    if args.only in (None, "baseline"):
        baseline = _baseline(args, profile, duration_s)
    if args.only in (None, "api"):
        api = _api(args, profile, duration_s)
        from simulations.bench.api_load import avictl_proposal_bytes

        api["proposal_bytes"] = avictl_proposal_bytes()
    report = summarize(baseline, api, duration_s=duration_s, payload_bytes=args.payload_bytes)
    if report["ratio"] is not None:
        _say(
            f"=> avictl {report['events_per_s']:.0f} events/s vs raw pysyncobj {report['baseline_events_per_s']:.0f} "
            f"commits/s ({report['baseline_setting']} settings): ratio {report['ratio']:.3f}; "
            f"lone API write p50 {report['p50_ms']} ms p99 {report['p99_ms']} ms; {os.cpu_count()} CPUs"
        )
    if report["macro_ratio"] is not None:
        _say(
            f"=> avictl macro ({report['macro_size']} objects per request) {report['macro_events_per_s']:.0f} events/s: "
            f"ratio {report['macro_ratio']:.3f} ({report['macro_ratio_vs_tuned']:.3f} of raw pysyncobj at our settings)"
        )
    print(json.dumps(report, sort_keys=False), flush=True)
    failed = bool(report["api_error"]) or bool(report["baseline_error"])
    return 1 if failed else 0
