"""Network partitions between controllers: the namespace mechanism and a short partition-leader run.

Both need root (network namespaces, veths, a bridge). They do not skip without it: CI runs as
root, so a machine that cannot make namespaces fails here with the reason.
"""

from __future__ import annotations

import tempfile
import time

import pytest

from simulations.chaos import partitions
from simulations.local_cluster import wait_until
from simulations.netns_cluster import NetnsCluster, check_netns_support

pytestmark = pytest.mark.slow


def _require_netns() -> None:
    problem = check_netns_support()
    if problem is not None:
        pytest.fail(f"partition tests need network namespaces (run as root with iproute2): {problem}", pytrace=False)


def _leftovers(cluster: NetnsCluster) -> list[str]:
    return cluster.net.leftovers()


def test_partition_cut_and_heal_between_namespaced_nodes() -> None:
    """Each node in its own namespace and reachable over the bridge; partition, one-way cut and heal
    change what n1 can reach; close() leaves no namespace, veth or bridge behind."""
    _require_netns()
    with tempfile.TemporaryDirectory() as tmp:
        cluster = NetnsCluster(tmp, nodes=3)
        try:
            assert len(set(cluster.addrs.values())) == 3
            assert all(cluster.configs[n].api_host == cluster.addrs[n] for n in cluster.ids)
            cluster.start_all(30)
            for node in cluster.ids:
                st = wait_until(lambda node=node: cluster.status(node), 15, what=f"{node}'s API over the bridge")
                assert st["raft"] == f"{cluster.addrs[node]}:7002" and st["api"] == f"http://{cluster.addrs[node]}:7001", st
            assert cluster.can_connect("n1", "n2") and cluster.can_connect("n2", "n1")

            cluster.partition([["n1"], ["n2", "n3"]])
            assert not cluster.can_connect("n1", "n2") and not cluster.can_connect("n2", "n1")
            assert not cluster.can_connect("n3", "n1")
            assert cluster.can_connect("n2", "n3") and cluster.can_connect("n3", "n2")
            # The harness still reaches the cut-off node.
            assert cluster.status("n1") is not None
            cluster.heal()
            assert cluster.can_connect("n1", "n2") and cluster.can_connect("n2", "n1")

            cluster.cut("n1", "n3")
            assert cluster.cuts == {("n1", "n3")}
            assert not cluster.can_connect("n1", "n3")
            assert cluster.can_connect("n1", "n2") and cluster.can_connect("n3", "n2")
            cluster.heal()
            assert cluster.cuts == set() and cluster.can_connect("n1", "n3")

            # The cluster still works as one after all that.
            leader = cluster.wait_leader(15)
            code, _ = cluster.request(leader, "POST", "/api/pool", {"name": "after-heal"})
            assert code == 201
            cluster.wait_converged(15)
        finally:
            cluster.close()
        assert _leftovers(cluster) == []
        assert all(not cluster.alive(n) for n in cluster.ids)


def test_partition_leader_smoke() -> None:
    """A 20 s partition-leader run with one cut of the leader: pass, and the cut-off leader was asked and acked nothing."""
    _require_netns()
    started = time.monotonic()
    report = partitions.run_network_scenario(partitions.NETWORK_SCENARIOS["partition-leader"], duration=20, seed=5)
    failed = [f"{c['name']}: {c['violations'][:2]}" for c in report["checks"] if not c["ok"]]
    assert report["verdict"] == "pass", failed
    assert report["faults"] and report["faults"][0]["isolated"] == [report["faults"][0]["leader_before"]]
    iso = report["network"]["isolated_side"][0]
    assert iso["sent_during_cut"] > 0 and iso["writes_acked"] == 0
    names = {c["name"] for c in report["checks"]}
    assert {"isolated_side", "stale_reads", "acknowledged_writes", "logs_identical", "linearizable", "write_recovery"} <= names
    assert time.monotonic() - started <= 30


def test_network_schedules_are_reproducible() -> None:
    for scenario in partitions.NETWORK_SCENARIOS.values():
        assert scenario.faults(7, 60) == scenario.faults(7, 60)
    steps = partitions.NETWORK_SCENARIOS["partition-leader"].faults(7, 60)
    assert len(steps) >= 3 and all(s.action == "partition" and s.target == "leader" and s.hold == 6.0 for s in steps)
    assert all(s.at + s.hold + 4.0 <= 60 for s in steps)
    skew = partitions.NETWORK_SCENARIOS["clock-skew"].faults(7, 60)
    assert [(s.target, s.offset) for s in skew] == [("follower", "+1h"), ("leader", "-30m")]


def test_clock_skew_without_faketime_is_a_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitions, "faketime_lib", lambda: None)
    report = partitions.run_network_scenario(partitions.NETWORK_SCENARIOS["clock-skew"], duration=30, seed=1)
    assert report["verdict"] == "skip"
    assert report["reason"] == "skipped: needs faketime (apt-get install faketime)"
