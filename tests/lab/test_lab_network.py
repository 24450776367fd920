"""The lab's network alone (no processes): labs of different owners side by side, and a dead
owner's leftovers removed by the next lab. Root."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from simulations.lab import HOSTS, Lab, NetnsUnavailable, leftovers
from simulations.netns import namespace_names
from tests.lab.conftest import require_lab

pytestmark = pytest.mark.slow


def test_two_labs_of_different_owners_get_their_own_names_and_subnets(tmp_path: Path) -> None:
    """A harness's lab and a detached one (owned by its keeper) at once: no shared name or subnet;
    a second lab of the same owner is refused by name; closing both leaves nothing."""
    require_lab()
    first = Lab(tmp_path / "a")
    try:
        with pytest.raises(NetnsUnavailable, match="already has"):
            Lab(tmp_path / "again")
        second = Lab(tmp_path / "b", detached=True)
        try:
            assert second.net.owner_pid != first.net.owner_pid and second.keeper is not None
            assert second.net.subnet != first.net.subnet
            assert not set(first.net.namespaces + first.net.links) & set(second.net.namespaces + second.net.links)
            assert len(first.hosts) == len(second.hosts) == len(HOSTS)
            first.can_connect("client", first.addr("b1"), 9, timeout=0.5)  # nothing listens; the ARP exchange is the point
            entry = first.neighbour("client", first.addr("b1"))
            assert entry is not None and entry.mac == first.mac("b1"), entry
        finally:
            second.close()
        assert second.leftovers() == []
    finally:
        first.close()
    assert first.leftovers() == []


def test_the_next_lab_removes_what_a_dead_owner_left(tmp_path: Path) -> None:
    """A detached lab whose keeper was killed is a leftover: the next lab made here removes its
    namespaces, veths and bridge before building its own."""
    require_lab()
    orphan = Lab(tmp_path / "orphan", detached=True)
    assert orphan.keeper is not None
    orphan.keeper.kill(signal.SIGKILL)
    state = orphan.state()
    assert set(orphan.net.namespaces) <= set(namespace_names())
    with Lab(tmp_path / "next") as lab:
        assert leftovers(state, timeout=5.0) == []
        assert set(lab.net.namespaces) <= set(namespace_names())
    assert lab.leftovers() == []
