"""Leader loss and whole-cluster loss with real processes: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest

from simulations.background import BackgroundWriter
from simulations.local_cluster import LocalCluster, wait_until
from simulations.writers import Writer
from storage import codec
from storage import events as _events  # noqa: F401 - registers the event tags

pytestmark = pytest.mark.slow


def assert_all_acked_present_once(cluster: LocalCluster, acked_names: set[str], acked_ids: set[str]) -> None:
    for node in cluster.ids:
        names = cluster.object_names(node)
        missing = acked_names - set(names)
        assert not missing, f"{node} lost {len(missing)} acknowledged writes, e.g. {sorted(missing)[:3]}"
    # Each acknowledged command id appears in exactly one committed record.
    records = cluster.raw_records(cluster.ids[0])
    seen = Counter(c.command_id for r in records for c in codec.decode(r[3]).commands)
    assert all(seen[c] == 1 for c in acked_ids)


def assert_identical_logs(cluster: LocalCluster) -> int:
    logs = {node: cluster.raw_records(node) for node in cluster.ids}
    reference = logs[cluster.ids[0]]
    for node, records in logs.items():
        assert records == reference, f"{node}'s event log differs from {cluster.ids[0]}'s"
    revisions = [r[1] + i for r in reference for i in range(r[2])]
    assert revisions == list(range(1, len(revisions) + 1)), "revisions are not gapless"
    return len(revisions)


def test_leader_kill_while_writing(fresh_cluster3: LocalCluster) -> None:
    """kill -9 of the leader five times under writes: writes resume fast and nothing acked is lost."""
    cluster = fresh_cluster3
    gaps = []
    with BackgroundWriter(cluster) as bg:
        wait_until(lambda: len(bg.writer.acked) > 20, 20, what="first writes")
        for _trial in range(5):
            leader = cluster.wait_leader(10)
            killed_at = time.monotonic()
            cluster.kill(leader)
            resumed = wait_until(lambda killed_at=killed_at: bg.first_ack_started_after(killed_at), 10, interval=0.01, what="writes to resume")
            gaps.append(resumed - killed_at)
            cluster.start(leader)
            wait_until(lambda leader=leader: cluster.status(leader) is not None, 20, what=f"{leader} to come back")
            wait_until(lambda trial=_trial: len(bg.writer.acked) > 20 + 30 * (trial + 1), 30, what="more writes")
    acked = bg.writer.acked
    print(f"failover gaps (s): {[round(g, 3) for g in gaps]}, median {statistics.median(gaps):.3f}; acked {len(acked)}")
    assert statistics.median(gaps) <= 1.5
    assert max(gaps) <= 3.0
    cluster.wait_converged(30)
    assert_all_acked_present_once(cluster, {r.name for r in acked}, {r.command_id for r in acked})
    assert assert_identical_logs(cluster) >= len(acked)


def test_all_nodes_killed_after_3000_writes_lose_nothing(fresh_cluster3: LocalCluster) -> None:
    """kill -9 of every node at once after 3 000 acknowledged writes: after restart all 3 000 are there."""
    cluster = fresh_cluster3
    writer = Writer([cluster.api(n) for n in cluster.ids], cluster.token, prefix="all")
    asyncio.run(writer.run(concurrency=32, count=3000))
    acked = writer.acked
    assert len(acked) == 3000, Counter(r.outcome for r in writer.results)
    for node in cluster.ids:
        cluster.kill(node)
    for node in cluster.ids:
        cluster.start(node)
    cluster.wait_leader(30)
    names = set(cluster.object_names("n2", stale=False))
    assert {r.name for r in acked} <= names
    cluster.wait_converged(30)
    assert_all_acked_present_once(cluster, {r.name for r in acked}, {r.command_id for r in acked})
    assert assert_identical_logs(cluster) >= 3000


def test_paused_leader_catches_up_within_two_seconds(fresh_cluster3: LocalCluster) -> None:
    """SIGSTOP the leader 8 s under load, twice: each time it has caught up within 2 s of SIGCONT."""
    from simulations.leader_pause import pause_leader_once

    cluster = fresh_cluster3
    with BackgroundWriter(cluster, concurrency=8) as bg:
        wait_until(lambda: len(bg.writer.acked) > 20, 20, what="first writes")
        times = [pause_leader_once(cluster, bg, pause_s=8.0) for _ in range(2)]
    print(f"catch-up after SIGCONT (s): {[round(t, 3) for t in times]}")
    assert max(times) <= 2.0
    cluster.wait_converged(30)
    assert_identical_logs(cluster)


def test_node_that_missed_a_compaction_catches_up_from_peers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A follower down while the leader compacted gets a snapshot, fetches the missing records, and ends identical."""
    import json

    cluster = LocalCluster(tmp_path / "c", nodes=3, env={"AVICTL_RAFT_TUNING": json.dumps({"compaction_min_entries": 50})})
    with cluster:
        cluster.start_all()
        leader = cluster.wait_leader()
        follower = next(n for n in cluster.ids if n != leader)
        cluster.kill(follower)
        writer = Writer([cluster.api(n) for n in cluster.ids if n != follower], cluster.token, prefix="gap")
        asyncio.run(writer.run(concurrency=8, count=600))
        assert len(writer.acked) == 600
        cluster.start(follower)
        cluster.wait_converged(30)
        assert_identical_logs(cluster)
        log_text = (tmp_path / "c" / follower / "controller.log").read_text()
        assert "catchup_needed" in log_text and "catchup_done" in log_text
        assert {r.name for r in writer.acked} <= set(cluster.object_names(follower))


def test_without_quorum_writes_and_reads_get_503_and_nothing_is_applied(fresh_cluster3: LocalCluster) -> None:
    """With two of three nodes down, the survivor answers 503 + Retry-After to writes and linearizable reads."""
    cluster = fresh_cluster3
    leader = cluster.wait_leader()
    survivor = next(n for n in cluster.ids if n != leader)
    for node in cluster.ids:
        if node != survivor:
            cluster.kill(node)
    before = cluster.status(survivor)["applied_revision"]  # type: ignore[index]
    code, body = cluster.request(survivor, "POST", "/api/pool", {"name": "no-quorum", "servers": []}, timeout=30)
    assert code == 503, body
    assert body["error"]["code"] == "no_quorum"
    # Known to be leaderless for longer than an election takes: answered at once, not at the
    # request's deadline (10 s for writes, 5 s for a read's barrier).
    for method, path, payload in (("POST", "/api/pool", {"name": "no-quorum", "servers": []}), ("GET", "/api/pool", None)):
        started = time.monotonic()
        code, body = cluster.request(survivor, method, path, payload, timeout=30)
        assert code == 503, body
        assert time.monotonic() - started < 1.0, f"{method} {path} took {time.monotonic() - started:.2f} s"
    code, body = cluster.request(survivor, "GET", "/api/pool?stale=true", timeout=30)
    assert code == 200
    for node in cluster.ids:
        if node != survivor:
            cluster.start(node)
    cluster.wait_leader(30)
    cluster.wait_converged(30)
    # Converged is not connected: the survivor redials the restarted nodes every
    # connection_retry_time, and until then it rightly answers 503 at once.
    wait_until(lambda: (cluster.status(survivor) or {}).get("has_quorum"), 10, what="the survivor to rejoin the majority")
    assert "no-quorum" not in cluster.object_names(survivor, stale=False)
    assert cluster.status(survivor)["applied_revision"] == before  # type: ignore[index]


def test_leader_alone_reports_unknown_and_a_retry_applies_at_most_once(fresh_cluster3: LocalCluster) -> None:
    """A leader cut off from both followers answers 504 outcome_unknown; retrying the command id later applies it once."""
    cluster = fresh_cluster3
    leader = cluster.wait_leader()
    for node in cluster.ids:
        if node != leader:
            cluster.kill(node)
    headers = {"X-Avi-Command-Id": "unknown-outcome-1"}
    body = {"name": "maybe-pool", "servers": []}
    code, answer = cluster.request(leader, "POST", "/api/pool", body, timeout=30, headers=headers)
    assert code == 504, answer
    assert answer["error"]["code"] == "outcome_unknown"
    assert answer["error"]["command_id"] == "unknown-outcome-1"
    for node in cluster.ids:
        if node != leader:
            cluster.start(node)
    new_leader = cluster.wait_leader(30)
    code, answer = cluster.request(new_leader, "POST", "/api/pool", body, timeout=30, headers=headers)
    assert code == 201, answer
    cluster.wait_converged(30)
    assert cluster.object_names(new_leader, stale=False).count("maybe-pool") == 1
    records = cluster.raw_records(new_leader)
    assert sum(1 for r in records for c in codec.decode(r[3]).commands if c.command_id == "unknown-outcome-1") == 1


def test_a_failed_journal_sync_stops_the_node_and_a_restart_keeps_every_ack(tmp_path: Path) -> None:
    """fdatasync of the Raft journal failing (EIO injected at the failpoint) stops the node with exit
    70 and a critical log line instead of ticking on; restarted without the fault, it holds every
    write it acknowledged."""
    cluster = LocalCluster(tmp_path / "c", nodes=1, env={"AVICTL_FAILPOINTS_EIO": "raft.journal.before_sync=40"})
    try:
        cluster.start_all(timeout=30)
        acked: list[str] = []
        deadline = time.monotonic() + 30
        while cluster.alive("n1") and time.monotonic() < deadline:
            name = f"eio-{len(acked)}"
            try:
                code, _ = cluster.request("n1", "POST", "/api/pool", {"name": name, "servers": []}, timeout=5)
            except OSError:
                break
            if code == 201:
                acked.append(name)
        wait_until(lambda: not cluster.alive("n1"), 10, what="the node to stop after the injected EIO")
        assert cluster.procs["n1"].returncode == 70
        log_text = (tmp_path / "c" / "n1" / "controller.log").read_text()
        assert "raft_journal_sync_failed" in log_text
        assert acked, "no write was acknowledged before the fault"
        cluster.env.clear()
        cluster.start("n1")
        cluster.wait_leader(30)
        assert set(acked) <= set(cluster.object_names("n1"))
    finally:
        cluster.close()
