"""Leader pause: SIGSTOP the leader under load, SIGCONT it, and time how long it takes to catch up.

pysyncobj 0.3.17 can leave such a node behind until the leader's next compaction (see
cluster/_pysyncobj_compat.py); this scenario is the regression test of that fix.

    python -m simulations.leader_pause --runs 10 [--pause 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from typing import Optional

from simulations.background import BackgroundWriter
from simulations.local_cluster import LocalCluster, wait_until

__all__ = ["pause_leader_once"]


def pause_leader_once(cluster: LocalCluster, bg: BackgroundWriter, pause_s: float = 8.0, catch_up_limit: float = 20.0) -> float:
    """Pause the leader ``pause_s`` under load; seconds from SIGCONT until it applied what the new leader had then."""
    old = cluster.wait_leader(10)
    cluster.pause(old)
    paused_at = time.monotonic()
    try:
        new = wait_until(lambda: (now := cluster.leader()) not in (None, old) and now, 10, what="a new leader")
        acked_before = len(bg.writer.acked)
        wait_until(lambda: time.monotonic() - paused_at >= pause_s and len(bg.writer.acked) > acked_before, pause_s + 10,
                   what="the pause to last and writes to go on")
    finally:
        cluster.resume(old)
    resumed_at = time.monotonic()
    target = wait_until(lambda: (cluster.status(str(new)) or {}).get("applied_revision"), 5, what="the new leader's revision")

    def caught_up() -> bool:
        st = cluster.status(old)
        return bool(st and st["applied_revision"] >= target)

    wait_until(caught_up, catch_up_limit, interval=0.02, what=f"{old} to catch up to revision {target}")
    return time.monotonic() - resumed_at


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.leader_pause", description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--pause", type=float, default=8.0)
    args = parser.parse_args(argv)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, LocalCluster(tmp, nodes=3) as cluster:
        cluster.start_all()
        with BackgroundWriter(cluster, concurrency=8, max_seconds=args.runs * (args.pause + 30)) as bg:
            wait_until(lambda: len(bg.writer.acked) > 20, 20, what="first writes")
            for run in range(args.runs):
                try:
                    t = pause_leader_once(cluster, bg, args.pause)
                except TimeoutError as exc:
                    print(f"run {run + 1}: FAILED: {exc}", flush=True)
                    times.append(float("inf"))
                    continue
                times.append(t)
                print(f"run {run + 1}: caught up {t:.3f} s after SIGCONT", flush=True)
        acked = len(bg.writer.acked)
    ok = sum(1 for t in times if t <= 2.0)
    finite = [t for t in times if t != float("inf")]
    print(json.dumps({"runs": args.runs, "within_2s": ok, "max_s": max(times), "median_s": statistics.median(finite) if finite else None, "acked_writes": acked}))
    return 0 if ok == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
