"""The lab's pure parts: the nftables JSON of a cut, what a prober's and an ARP watch's records
mean, the state file. No root, no processes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simulations.lab import NFT_TABLE, LabProcess, LabState, cut_ruleset, heal_ruleset
from simulations.lab_probe import ArpFrame, ArpResult, Attempt, Outage, ProbeResult
from simulations.netns import NetHost, mac_of


def _rules(doc: dict[str, Any], family: str, chain: str) -> list[list[Any]]:
    return [c["add"]["rule"]["expr"] for c in doc["nftables"]
            if "rule" in c.get("add", {}) and c["add"]["rule"]["family"] == family and c["add"]["rule"]["chain"] == chain]


def test_a_cut_replaces_the_hosts_tables_in_one_transaction() -> None:
    """The ruleset first adds then deletes both lab tables (so it applies whether or not a cut was
    there), then builds the inet table afresh; without arp no arp table is left."""
    doc = cut_ruleset(["10.99.0.22"], harness="10.99.0.1", arp=False)
    head = doc["nftables"][:4]
    assert head == heal_ruleset()["nftables"]
    assert [c for c in doc["nftables"][4:] if "table" in c.get("add", {})] == [{"add": {"table": {"family": "inet", "name": NFT_TABLE}}}]
    json.dumps(doc)  # what `nft -j -f -` reads


def test_a_cut_drops_the_peers_both_ways_but_never_loopback_or_the_harness() -> None:
    """Input matches the source, output the destination; loopback and the harness are accepted before the drop."""
    doc = cut_ruleset(["10.99.0.0/24", "10.99.0.22"], harness="10.99.0.1", arp=False)
    sets = [c["add"]["set"] for c in doc["nftables"] if "set" in c.get("add", {})]
    assert sets[0]["elem"] == [{"prefix": {"addr": "10.99.0.0", "len": 24}}, "10.99.0.22"] and sets[0]["flags"] == ["interval"]
    for chain, iface, field in (("input", "iifname", "saddr"), ("output", "oifname", "daddr")):
        rules = _rules(doc, "inet", chain)
        assert rules[0] == [{"match": {"op": "==", "left": {"meta": {"key": iface}}, "right": "lo"}}, {"accept": None}]
        assert rules[1] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": "10.99.0.1"}},
                            {"accept": None}]
        assert rules[2][0] == {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": field}}, "right": "@cut"}}
        assert rules[2][-1] == {"drop": None}


def test_a_cut_with_arp_drops_arp_to_and_from_the_peers_and_may_cut_the_harness_too() -> None:
    doc = cut_ruleset(["10.99.0.22"], harness=None, arp=True)
    assert _rules(doc, "arp", "input") == [[{"match": {"op": "==", "left": {"payload": {"protocol": "arp", "field": "saddr ip"}},
                                                       "right": "@cut"}}, {"drop": None}]]
    assert _rules(doc, "arp", "output")[0][0]["match"]["left"]["payload"]["field"] == "daddr ip"
    assert len(_rules(doc, "inet", "input")) == 2  # loopback, then the drop: no harness rule


def test_a_cut_needs_a_peer() -> None:
    with pytest.raises(ValueError):
        cut_ruleset([], harness=None, arp=False)


def _attempt(i: int, ok: bool, error: str | None = None) -> Attempt:
    return Attempt(i, i * 20, i * 20 + 5, ok, error)  # milliseconds, so the sums are exact


def test_an_outage_runs_from_the_first_failure_to_the_next_served_attempt() -> None:
    result = ProbeResult(tuple(_attempt(i, ok) for i, ok in enumerate([True, False, False, True, True, False])))
    assert result.outages() == [Outage(20, 60, 2, True), Outage(100, 105, 1, False)]
    assert result.longest_outage() == 40
    assert (result.served, result.failed) == (3, 3)


def test_a_run_without_failures_has_no_outage() -> None:
    result = ProbeResult(tuple(_attempt(i, True) for i in range(5)))
    assert result.outages() == [] and result.longest_outage() == 0.0 and result.errors() == {}


def test_an_arp_watch_tells_contested_and_unanswered_rounds() -> None:
    """Replies are grouped by the request round they answer; a gratuitous ARP counts as no reply."""
    frames = (ArpFrame(0.01, 0, "aa", "reply"), ArpFrame(0.11, 1, "aa", "reply"), ArpFrame(0.12, 1, "bb", "reply"),
              ArpFrame(0.15, 1, "bb", "request"), ArpFrame(0.31, 3, "bb", "reply"))
    result = ArpResult((0.0, 0.1, 0.2, 0.3), frames)
    assert result.macs() == {"aa": 2, "bb": 2}
    assert result.contested() == [1]
    assert result.unanswered() == [2]


def test_the_state_file_round_trips() -> None:
    """What `avictl lab status|down` read back is what the lab wrote."""
    host = NetHost("c1", "avl-1-c1", "avl1h1", "10.99.0.11", mac_of("10.99.0.11"))
    proc = LabProcess("controller", "n1", "c1", 42, "/x/node.json", "/x/controller.log")
    state = LabState("/x", 7, "10.99.0.0/24", "avlb7", "10.99.0.1", (host,), ("http://10.99.0.11:7001",), "tok", (proc,),
                     LabProcess("keeper", "keeper", "-", 7, "avictl-lab-keeper:/x", ""))
    assert LabState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert host.mac == "02:00:0a:63:00:0b"


def test_without_root_or_nft_the_lab_says_why_and_its_tests_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reason names what is missing; require_lab turns it into a skip, not a failure."""
    import shutil

    from simulations import netns
    from simulations.lab import check_lab_support
    from tests.lab.conftest import require_lab

    real_which = shutil.which
    monkeypatch.setattr(netns.shutil, "which", lambda tool: None if tool == "nft" else real_which(tool))
    assert "`nft` command (nftables) is not installed" in (check_lab_support() or "")
    monkeypatch.setattr(netns.shutil, "which", lambda tool: f"/usr/sbin/{tool}")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "need root" in (check_lab_support() or "")
    with pytest.raises(pytest.skip.Exception, match="need root"):
        require_lab()
