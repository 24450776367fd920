"""Config propagation: from an API acknowledgement to the ACK of every subscribed Service Engine.

Starts a 3-node cluster and N real SE processes (one small VS each, all over one shared pool),
then makes K changes to the shared pool one at a time; for each, the time from the API's answer
to the arrival at a controller of the last SE's ACK of that change (controller wall clock, same
machine as the client). Also reports the SE-side "applied" times. Ends with one JSON line holding
``ses``, ``changes``, ``p50_ms``, ``p99_ms``, ``max_ms`` (ACKs) and ``applied_p50_ms``, ``applied_p99_ms``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

HELP = "config propagation p50/p99 from API ack to applied on every SE (50 SE processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ses", type=int, default=50, help="SE processes (default 50)")
    parser.add_argument("--changes", type=int, default=30, help="changes to measure (default 30)")
    parser.add_argument("--quick", action="store_true", help="10 SEs, 10 changes")


def run(args: argparse.Namespace) -> int:
    from simulations.bench._stats import percentile
    from simulations.local_cluster import LocalCluster, die_with_parent, free_port, wait_until

    ses = 10 if args.quick else args.ses
    changes = 10 if args.quick else args.changes
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(os.path.join(tmp, "cluster"), nodes=3) as cluster:
        try:
            cluster.start_all()
            urls = ",".join(cluster.api(n) for n in cluster.ids)
            _, pool = cluster.request("n1", "POST", "/api/pool", {"name": "shared", "default_server_port": free_port(),
                                                                 "servers": [{"ip": {"addr": "127.0.0.1", "type": "V4"}}]})
            for i in range(ses):
                name = f"se-{i + 1}"
                log = open(os.path.join(tmp, f"{name}.log"), "ab")
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "avictl", "--api", urls, "--token", cluster.token, "se", "run", "--name", name,
                     "--state-dir", os.path.join(tmp, name), "--report-interval", "30", "--log-level", "warning"],
                    stdout=log, stderr=log, env={**os.environ, "AVICTL_HOME": tmp}, preexec_fn=die_with_parent,
                ))
                log.close()
            wait_until(lambda: _count(cluster) >= ses, 120, interval=0.5, what=f"{ses} SEs to register")
            for i in range(ses):
                _, vip = cluster.request("n1", "POST", "/api/vsvip", {"name": f"vip-{i}", "vip": [{"ip_address": {"addr": f"127.20.{i // 250}.{i % 250 + 1}", "type": "V4"}}]})
                _, vs = cluster.request("n1", "POST", "/api/virtualservice", {"name": f"vs-{i}", "services": [{"port": 8080}], "pool_ref": pool["url"], "vsvip_ref": vip["url"], "application_profile_ref": "/api/applicationprofile?name=System-L4-Application"})
                cluster.request("n1", "POST", f"/api/virtualservice/{vs['uuid']}/placement", {"serviceengine_refs": [f"se-{i + 1}"]})
            wait_until(lambda: _all_applied(cluster, 0, up_to_date=True) is not None, 60, interval=0.2, what="every SE to apply its VS")
            samples: list[float] = []
            applied_samples: list[float] = []
            for n in range(changes):
                code, changed = cluster.request("n1", "PATCH", f"/api/pool/{pool['uuid']}", {"replace": {"default_server_port": 20000 + n}})
                acked_at = time.time()
                assert code == 200, changed
                revision = int(changed["_last_modified"])
                times = wait_until(lambda revision=revision: _all_applied(cluster, revision), 30, interval=0.02, what=f"change {n} everywhere")
                samples.append((max(t[1] for t in times) - acked_at) * 1000)
                applied_samples.append((max(t[0] for t in times) - acked_at) * 1000)
                print(f"change {n + 1}: ACKed by all {ses} SEs {samples[-1]:.1f} ms after the API ack "
                      f"(applied by all after {applied_samples[-1]:.1f} ms)", file=sys.stderr, flush=True)
        finally:
            for p in procs:
                p.kill()
            for p in procs:
                p.wait(10)
    samples.sort()
    applied_samples.sort()
    result = {"ses": ses, "changes": changes, "p50_ms": round(percentile(samples, 50), 1), "p99_ms": round(percentile(samples, 99), 1),
              "max_ms": round(samples[-1], 1), "applied_p50_ms": round(percentile(applied_samples, 50), 1),
              "applied_p99_ms": round(percentile(applied_samples, 99), 1), "cpu_count": os.cpu_count()}
    print(json.dumps(result))
    return 0


def _count(cluster: Any) -> int:
    code, body = cluster.request("n1", "GET", "/api/serviceengine?page_size=1&stale=true")
    return int(body["count"]) if code == 200 else 0


def _all_applied(cluster: Any, revision: int, *, up_to_date: bool = False) -> list[tuple[float, float]] | None:
    """(applied_at, acked_at) of every SE once each applied ``revision`` or later (or its latest slice), else None.

    An SE reports a fresh apply at once only to the controller it streams from (to the others on
    its report interval), so the freshest report of each SE over all nodes counts.
    """
    best: dict[str, dict[str, Any]] = {}
    for node in cluster.ids:
        page = 1
        while True:
            code, body = cluster.request(node, "GET", f"/api/serviceengine?page_size=200&page={page}&stale=true")
            if code != 200:
                return None
            for se in body["results"]:
                runtime = se.get("runtime") or {}
                seen = best.get(se["name"])
                newer = seen is None or (runtime.get("applied_revision") or -1) > (seen.get("applied_revision") or -1)
                same_earlier = (seen is not None and runtime.get("applied_revision") == seen.get("applied_revision")
                                and (runtime.get("acked_at") or 1e18) < (seen.get("acked_at") or 1e18))
                if newer or same_earlier:
                    best[se["name"]] = runtime
            if not body.get("next"):
                break
            page += 1
    times: list[tuple[float, float]] = []
    for runtime in best.values():
        if (runtime.get("applied_revision") or -1) < revision or runtime.get("applied_at") is None or runtime.get("acked_at") is None:
            return None
        if up_to_date and (runtime.get("lag") != 0 or not runtime.get("virtualservices")):
            return None
        times.append((runtime["applied_at"], runtime["acked_at"]))
    return times
