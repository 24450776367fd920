"""An SE applies its slice per virtual service: one VS it cannot serve is refused alone, and every
other VS of the slice is served (as xDS ACKs and NACKs per resource)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine.agent import ServiceEngineAgent
from engine.config import SliceError, read_slice
from tests.engine.test_dataplane import RR, TcpBackend, pool_doc, stub_dataplane, vs_doc


def slice_doc(*vss: dict[str, Any], revision: int = 1) -> dict[str, Any]:
    return {"revision": revision, "se_name": "se-1", "virtual_services": list(vss)}


def test_a_vs_that_does_not_validate_is_refused_alone() -> None:
    """A VS with an algorithm this SE does not know is refused by name; the others are served."""
    bad_pool = pool_doc([("127.0.0.1", 9000)], uuid="pool-2", name="p2", algorithm="LB_ALGORITHM_FASTEST_RESPONSE")
    config, refused = read_slice(slice_doc(
        vs_doc("a", "127.10.3.1", 80, "l4", pool_doc([("127.0.0.1", 9000)])),
        vs_doc("b", "127.10.3.2", 80, "l4", bad_pool),
        vs_doc("c", "127.10.3.3", 80, "http", None),
    ))
    assert [vs.name for vs in config.virtual_services] == ["a", "c"]
    assert list(refused) == ["b"]
    assert "LB_ALGORITHM_FASTEST_RESPONSE" in refused["b"] and "virtual_services[1].pool.lb_algorithm" in refused["b"]


def test_two_vss_on_one_listener_keep_the_one_served_before() -> None:
    """Of two VSs on one VIP and port, the one already served keeps it and the newcomer is refused,
    whatever their order in the slice; with no history, the first in the slice wins."""
    a = vs_doc("a", "127.10.3.1", 80, "l4", None)
    b = vs_doc("b", "127.10.3.1", [81, 80], "l4", None)
    first, refused = read_slice(slice_doc(a, b))
    assert ([vs.name for vs in first.virtual_services], refused) == (["a"], {"b": "127.10.3.1:80 is also served by a"})
    previous, _ = read_slice(slice_doc(b))
    later, refused = read_slice(slice_doc(a, b, revision=2), previous)
    assert [vs.name for vs in later.virtual_services] == ["b"]
    assert refused == {"a": "127.10.3.1:80 is also served by b"}


def test_a_vs_refused_after_being_served_keeps_its_last_good_version() -> None:
    """A served VS whose new version does not validate keeps serving its previous version."""
    good = vs_doc("a", "127.10.3.1", 80, "l4", pool_doc([("127.0.0.1", 9000)]))
    previous, _ = read_slice(slice_doc(good))
    broken = dict(good, ports=[0])
    config, refused = read_slice(slice_doc(broken, revision=2), previous)
    assert config.virtual_services == previous.virtual_services
    assert config.revision == 2
    assert "ports" in refused["a"]


@pytest.mark.parametrize("doc", [None, {"revision": "x", "se_name": "s", "virtual_services": []},
                                 {"revision": 1, "se_name": "s", "virtual_services": {}}])
def test_a_slice_whose_own_fields_are_wrong_is_refused_whole(doc: Any) -> None:
    with pytest.raises(SliceError):
        read_slice(doc)


async def test_the_agent_serves_every_good_vs_and_reports_the_refused_one(tmp_path: Path) -> None:
    """On real sockets: a slice whose second VS clashes with the first and whose third is invalid
    is ACKed at its revision; the first and fourth VSs carry traffic; the report names the refused
    VSs; a corrected slice serves the third."""
    backend = await TcpBackend(b"srv", greet=True).start()
    agent = ServiceEngineAgent("se-1", ["http://127.0.0.1:1"], "unused", tmp_path, dataplane=stub_dataplane())
    pool = pool_doc([("127.0.0.1", backend.port)])
    a = vs_doc("a", "127.10.3.1", 18081, "l4", pool)
    clash = vs_doc("b", "127.10.3.1", 18081, "l4", pool)
    invalid = vs_doc("c", "127.10.3.3", 18081, "l4", dict(pool, lb_algorithm="LB_ALGORITHM_NEWER_THAN_THIS_SE"))
    d = vs_doc("d", "127.10.3.4", 18081, "l4", pool)
    try:
        assert await agent.apply(slice_doc(a, clash, invalid, d, revision=7))
        assert agent.applied_revision == 7
        assert set(agent.ack()["vs_errors"]) == {"b", "c"}
        for vip in ("127.10.3.1", "127.10.3.4"):
            reader, writer = await asyncio.wait_for(asyncio.open_connection(vip, 18081), 5)
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"srv"
            writer.close()
        with pytest.raises(OSError):
            await asyncio.wait_for(asyncio.open_connection("127.10.3.3", 18081), 5)

        assert await agent.apply(slice_doc(a, dict(invalid, pool=dict(pool, lb_algorithm=RR)), d, revision=8))
        assert (agent.applied_revision, agent.ack()["vs_errors"]) == (8, {})
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.10.3.3", 18081), 5)
        assert await asyncio.wait_for(reader.readexactly(3), 5) == b"srv"
        writer.close()
    finally:
        await agent.dataplane.close()
        backend.close()


async def test_an_se_that_is_not_registered_yet_does_not_spin(tmp_path: Path) -> None:
    """Before registration the report loop waits its interval instead of looping at once (it used
    to spin on the event loop until the SE had registered)."""
    import os

    agent = ServiceEngineAgent("se-1", ["http://127.0.0.1:9"], "unused", tmp_path, dataplane=stub_dataplane(),
                               report_interval=0.5)
    import aiohttp

    agent._session = aiohttp.ClientSession()
    stop = asyncio.Event()
    try:
        cpu = sum(os.times()[:2])
        task = asyncio.create_task(agent._report(stop))
        await asyncio.sleep(1.0)  # measuring the CPU the loop burns over a second is the point here
        stop.set()
        agent._report_now.set()
        await asyncio.wait_for(task, 5)
        assert sum(os.times()[:2]) - cpu < 0.2
    finally:
        await agent._session.close()
        await agent.dataplane.close()
