"""What every chaos run reads back from its nodes, and the check of the log it reads.

- :func:`collect_present`: per node, the pools the write workload made (names under ``WRITE_PREFIX``),
  as each node's local view holds them after convergence;
- :func:`collect_logs`: every node's raw log records;
- :class:`LogTailSampler`: while the run goes on, each reachable node's new log tail every second,
  for ``log_prefixes_during_run``;
- :func:`check_log_shape`: revisions gapless, every acknowledged command once in the log.

The runner (:mod:`simulations.chaos.runner`) and the network scenarios
(:func:`simulations.chaos.partitions.run_network_scenario`) both use them, with the same workload
prefixes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import attrs

from simulations.chaos import checkers
from simulations.chaos.checkers import CheckResult, Violation
from simulations.local_cluster import LocalCluster

__all__ = ["REGISTER_PREFIX", "WRITE_PREFIX", "LogTailSampler", "check_log_shape", "collect_logs", "collect_present"]

WRITE_PREFIX = "cw"
REGISTER_PREFIX = "creg"


def collect_present(cluster: LocalCluster, prefix: str = WRITE_PREFIX) -> dict[str, list[str]]:
    """Per node, the names of the write workload's pools it holds (local view, after convergence)."""
    out: dict[str, list[str]] = {}
    for node in cluster.ids:
        out[node] = [n for n in cluster.object_names(node, "pool", stale=True) if n.startswith(prefix + "-")]
    return out


def collect_logs(cluster: LocalCluster) -> dict[str, list[list[Any]]]:
    return {node: cluster.raw_records(node) for node in cluster.ids}


class LogTailSampler:
    """Every ``interval`` s, each reachable node's records after the last raft index it returned
    (``/internal/records``, as :meth:`LocalCluster.raw_records` reads them, one batch per node and round);
    ``samples`` is what :func:`checkers.check_sampled_prefixes` folds. A node that does not answer within
    ``timeout`` (killed, paused, restarting) is skipped that round."""

    def __init__(self, cluster: LocalCluster, *, interval: float = 1.0, timeout: float = 1.0, limit: int = 5000) -> None:
        self.cluster = cluster
        self.interval = interval
        self.timeout = timeout
        self.limit = limit
        self.after: dict[str, int] = {n: 0 for n in cluster.ids}
        self.samples: list[tuple[float, str, list[list[Any]]]] = []
        self.rounds = 0
        self.misses: Counter[str] = Counter()

    def _fetch(self, node: str) -> list[list[Any]]:
        import urllib.request

        import msgpack

        req = urllib.request.Request(f"{self.cluster.api(node)}/internal/records?after_raft_index={self.after[node]}"
                                     f"&limit={self.limit}")
        req.add_header("Authorization", f"Bearer {self.cluster._internal_token()}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return list(msgpack.unpackb(resp.read(), raw=False))

    def sample_once(self, at: float) -> None:
        self.rounds += 1
        for node in self.cluster.ids:
            if not self.cluster.alive(node):
                self.misses[node] += 1
                continue
            try:
                batch = self._fetch(node)
            except (OSError, ValueError):
                self.misses[node] += 1
                continue
            if batch:
                self.after[node] = batch[-1][0]
            self.samples.append((at, node, batch))

    async def run(self, t0: float, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            began = time.monotonic()
            await asyncio.to_thread(self.sample_once, round(began - t0, 3))
            await asyncio.sleep(max(0.0, self.interval - (time.monotonic() - began)))

    def check(self) -> CheckResult:
        result = checkers.check_sampled_prefixes(self.samples)
        details = {**result.details, "rounds": self.rounds, "interval_s": self.interval,
                   "unreachable": dict(sorted(self.misses.items()))}
        return attrs.evolve(result, details=details)


def check_log_shape(reference: list[list[Any]], acked_command_ids: set[str]) -> CheckResult:
    """Revisions gapless from 1; every acked command id in exactly one committed record."""
    from storage import codec
    from storage import events as _events  # noqa: F401 - registers the event tags before decode

    violations: list[Violation] = []
    revisions = [r[1] + i for r in reference for i in range(r[2])]
    if revisions != list(range(1, len(revisions) + 1)):
        first_bad = next((i for i, rev in enumerate(revisions) if rev != i + 1), len(revisions))
        violations.append(Violation("gap", f"revisions are not gapless near position {first_bad}", {"position": first_bad}))
    seen: Counter[str] = Counter()
    for r in reference:
        for command in codec.decode(r[3]).commands:
            seen[command.command_id] += 1
    for cid in sorted(acked_command_ids):
        if seen[cid] != 1:
            violations.append(Violation("command_count", f"acked command {cid} is in {seen[cid]} records", {"id": cid, "count": seen[cid]}))
    return CheckResult.of("log_commands_once", violations[:50], {"revisions": len(revisions), "records": len(reference),
                                                                 "violations_total": len(violations)})
