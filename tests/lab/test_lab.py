"""The network lab itself (issue 12): every host in a namespace of its own on one bridge, the same
commands a real host runs, faults by nftables, and nothing left behind. Real processes; root."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Iterator

import pytest

from simulations.lab import API_PORT, BACKEND_HOSTS, BACKEND_PORT, CLIENT, CONTROLLER_HOSTS, RAFT_PORT, SE_HOSTS, Lab
from simulations.local_cluster import wait_until
from simulations.netns import run_cmd
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_lab()
    made = Lab(tmp_path_factory.mktemp("lab"))
    try:
        made.up(timeout=90)
        yield made
    finally:
        made.close()
    assert made.leftovers() == []


def _namespace_of(pid: int) -> str:
    return run_cmd("ip", "netns", "identify", str(pid), check=False).stdout.strip()


def test_every_host_has_its_address_and_every_process_runs_in_its_host(lab: Lab) -> None:
    """Nine hosts with distinct addresses in one /24 and MACs derived from them; each controller,
    SE and backend runs inside its own host's namespace; the client reaches nothing outside the lab."""
    assert list(lab.hosts) == [*CONTROLLER_HOSTS, *SE_HOSTS, CLIENT, *BACKEND_HOSTS]
    addresses = [lab.addr(h) for h in lab.hosts]
    assert len(set(addresses)) == 9 and all(a.startswith(str(lab.net.subnet.network_address)[:-1]) for a in addresses)
    assert lab.harness_address == str(lab.net.subnet.network_address + 1)
    procs = lab.all_processes()
    assert sorted((p.role, p.host) for p in procs) == sorted(
        [("controller", h) for h in CONTROLLER_HOSTS] + [("se", h) for h in SE_HOSTS] + [("backend", h) for h in BACKEND_HOSTS])
    for proc in procs:
        assert proc.alive() and _namespace_of(proc.pid) == lab.namespace(proc.host), proc
    out = lab.run(CLIENT, "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout
    assert f"{lab.addr(CLIENT)}/24" in out
    assert not lab.can_connect(CLIENT, "203.0.113.1", 80, timeout=0.5)


def test_the_controllers_listen_on_their_hosts_and_elect_a_leader_the_client_can_reach(lab: Lab) -> None:
    """n1..n3 serve their API and Raft on c1..c3's addresses; a leader is elected; the client host
    and the harness (over the bridge) both reach every API."""
    cluster = lab.controllers
    assert cluster is not None
    leader = cluster.wait_leader(15)
    for i, node in enumerate(cluster.ids):
        host = CONTROLLER_HOSTS[i]
        assert lab.controller_host(node) == host
        status = cluster.status(node)
        assert status is not None
        assert (status["api"], status["raft"]) == (f"http://{lab.addr(host)}:{API_PORT}", f"{lab.addr(host)}:{RAFT_PORT}")
        answer = lab.http_get(CLIENT, f"{lab.api_urls[i]}/api/cluster", headers={"Authorization": f"Bearer {lab.token}"})
        assert answer.status == 200, answer
        assert answer.json()["leader"] == leader
    assert lab.neighbour(CLIENT, lab.addr("c1")) is not None


def test_the_three_ses_are_registered_and_report_to_every_controller(lab: Lab) -> None:
    """s1..s3 registered with enrolment tokens, each with a credential of its own, and every
    controller has a recent status report from each."""
    records = lab.wait_ses_reporting(SE_HOSTS, timeout=15)
    assert sorted(records) == sorted(SE_HOSTS)
    for name, record in records.items():
        assert record["runtime"]["oper_status"] == "up", record
        assert (lab.host_dir(name) / "se" / name / "identity.json").exists()
    heard = {name: records[name]["runtime"]["last_heartbeat"] for name in records}
    wait_until(lambda: all((lab.se_record(n) or {}).get("runtime", {}).get("last_heartbeat", 0) > heard[n] for n in heard), 10,
               what="fresh status reports")


def test_the_backends_answer_the_client_and_its_neighbour_table_holds_their_macs(lab: Lab) -> None:
    """b1 and b2 answer HTTP from the client host with their names; the client's ARP entries hold their MACs."""
    for host in BACKEND_HOSTS:
        answer = lab.http_get(CLIENT, lab.backend_url(host, "/hello"))
        assert answer.status == 200 and answer.json()["server"] == host, answer
        entry = lab.neighbour(CLIENT, lab.addr(host))
        assert entry is not None and entry.mac == lab.mac(host), entry
    if shutil.which("arping"):
        replies = lab.arping(CLIENT, lab.addr("b1"), count=1)
        assert replies.sent == 1 and replies.macs == {lab.mac("b1"): 1}, replies


def test_a_host_cut_off_by_nftables_reaches_no_other_host_until_healed(lab: Lab) -> None:
    """c1 cut from the whole lab: no TCP to or from any other host, the harness still reaches it;
    healed, everything flows again and the cluster takes a write through any node."""
    c1 = lab.addr("c1")
    assert lab.can_connect(CLIENT, c1, API_PORT) and lab.can_connect("c1", lab.addr("c2"), RAFT_PORT)
    lab.cut("c1")
    try:
        assert lab.cuts == {"c1": frozenset({str(lab.net.subnet)})}
        assert not lab.can_connect(CLIENT, c1, API_PORT, timeout=0.5)
        assert not lab.can_connect("s1", c1, API_PORT, timeout=0.5)
        assert not lab.can_connect("c1", lab.addr("c2"), RAFT_PORT, timeout=0.5)
        assert not lab.can_connect("c1", lab.addr("b1"), BACKEND_PORT, timeout=0.5)
        assert lab.can_connect("c2", lab.addr("c3"), RAFT_PORT)
        assert lab.controllers is not None and lab.controllers.status("n1") is not None  # the harness still reaches it
        assert "avictl_lab" in lab.run("c1", "nft", "list", "tables").stdout
    finally:
        lab.heal()
    assert lab.cuts == {}
    assert lab.run("c1", "nft", "list", "tables").stdout.strip() == ""
    assert lab.can_connect(CLIENT, c1, API_PORT) and lab.can_connect("c1", lab.addr("c2"), RAFT_PORT)
    assert lab.controllers.wait_leader(15)
    wait_until(lambda: lab.request("POST", "/api/pool", {"name": f"after-cut-{time.monotonic_ns()}"}, node="n1")[0] == 201, 20,
               interval=0.5, what="a write through n1 after the heal")


def test_a_cut_between_two_hosts_drops_ip_and_optionally_arp(lab: Lab) -> None:
    """s1 cut from s2 only: TCP fails both ways while s1 still serves the client; without ``arp``
    s1 still answers s2's ARP requests (a link broken above layer 2), with it not at all; healed,
    s2 reaches s1 again."""
    s1 = lab.addr("s1")
    listener = lab.popen("s1", [sys.executable, "-m", "simulations.backend", "--host", s1, "--port", "8099", "--name", "s1-web"])
    try:
        wait_until(lambda: lab.can_connect(CLIENT, s1, 8099, timeout=0.5), 15, what="a listener on s1")
        lab.cut("s1", ["s2"])
        assert not lab.can_connect("s2", s1, 8099, timeout=0.5)
        assert lab.http_get("s1", lab.backend_url("b1")).status == 200
        assert lab.can_connect(CLIENT, s1, 8099)
        with lab.arp_watch("s2", s1, interval=0.05, count=10, max_seconds=5) as watch:
            seen = watch.wait(5)
        assert len(seen.sent) == 10 and set(seen.macs()) == {lab.mac("s1")}, seen
        lab.cut("s1", ["s2"], arp=True)
        assert lab.cuts["s1"] == frozenset({lab.addr("s2")})
        with lab.arp_watch("s2", s1, interval=0.05, count=10, max_seconds=5) as watch:
            silent = watch.wait(5)
        assert len(silent.sent) == 10 and silent.macs() == {}, silent
        lab.heal("s1")
        assert lab.can_connect("s2", s1, 8099)
    finally:
        lab.heal("s1")
        listener.kill()
        listener.wait(5)


def test_a_prober_sees_a_backend_go_away_and_come_back(lab: Lab) -> None:
    """A connection every 20 ms from the client to b1: one outage while b1 is stopped, refused
    connections, served again once it is back."""
    with lab.prober(CLIENT, lab.addr("b1"), BACKEND_PORT, interval=0.02, timeout=0.2, count=400, max_seconds=8.0,
                    http_path="/probe") as prober:
        wait_until(lambda: sum(a.ok for a in prober.attempts) >= 10, 5, what="served probes")
        lab.stop_backend("b1")
        wait_until(lambda: any(not a.ok for a in prober.attempts), 5, what="a failed probe")
        lab.start_backend("b1")
        lab.wait_backends(["b1"])
        started = len(prober.attempts)
        wait_until(lambda: sum(a.ok for a in prober.attempts[started:]) >= 10, 5, what="probes served again")
    result = prober.result()
    outages = result.outages()
    assert len(outages) == 1 and outages[0].recovered, outages
    assert all("ConnectionRefused" in e for e in result.errors()), result.errors()
    assert all(a.status == 200 and '"server": "b1"' in (a.body or "") for a in result.attempts if a.ok)
    assert result.attempts[-1].start - result.attempts[0].start < 8.5


def test_an_se_killed_with_sigkill_restarts_with_its_identity(lab: Lab) -> None:
    """kill -9 of s3 leaves nothing running in its host; started again, it reports under the same uuid."""
    before = lab.se_record("s3")
    assert before is not None
    lab.kill_se("s3")
    assert not lab.se("s3").alive()
    assert run_cmd("ip", "netns", "pids", lab.namespace("s3")).stdout.strip() == ""
    lab.start_se("s3")
    heard = before["runtime"]["last_heartbeat"]
    wait_until(lambda: (lab.se_record("s3") or {}).get("runtime", {}).get("last_heartbeat", 0) > heard, 20,
               what="s3 reporting again")
    assert lab.se_record("s3")["uuid"] == before["uuid"]
