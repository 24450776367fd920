"""The leader's reconcile loop itself (not only its pure cores): a real single-node controller
(pysyncobj, event store) in this process, rounds driven by hand on a fake clock."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from cluster import commands as c
from cluster import decide as d
from cluster.config import NodeConfig, hash_password, hash_token
from cluster.node import Controller
from cluster.reconciler import Reconciler
from storage import codec
from storage.events import AutoscaleAlerted
from tests.helpers import free_port, wait_for

pytestmark = pytest.mark.slow


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Controller]:
    config = NodeConfig(
        node_id="n1",
        data_dir=str(tmp_path / "n1"),
        api_host="127.0.0.1",
        api_port=free_port(),
        raft_addr=f"127.0.0.1:{free_port()}",
        peers=(),
        cluster_secret=secrets.token_hex(32),
        admin_user="admin",
        admin_password_hash=hash_password("unused-password"),
        admin_token_hash=hash_token("unused-token"),
    )
    controller = Controller(config)
    await controller.start()
    try:
        await wait_for(lambda: controller.raft.is_leader, 10.0, what="the single node to lead")
        yield controller
    finally:
        await controller.stop()


async def write(node: Controller, command: Any) -> str:
    decision, _ = await node.write(command)
    return decision.uuid


def create(kind: str, body: dict[str, Any]) -> c.CreateObject:
    return c.CreateObject(kind, body, "admin", d.new_uuid(kind))


def register(name: str, group: str) -> c.RegisterServiceEngine:
    return c.RegisterServiceEngine({"name": name, "se_group_ref": f"/api/serviceenginegroup/{group}"}, d.new_uuid("serviceengine"))


def events_of(node: Controller, kind: type) -> list[Any]:
    found = []
    for record in node.store.read_from_revision(1):
        for command in codec.decode(record.payload).commands:
            found.extend(e for e in command.events if isinstance(e, kind))
    return found


async def test_a_hot_se_is_alerted_at_most_once_per_cooldown(node: Controller) -> None:
    """An SE group with a 300 s cooldown and an SE over its open-connections capacity for 20 s of
    250 ms rounds gets one AutoscaleAlerted, and a second only once the cooldown has passed."""
    group = await write(node, create("serviceenginegroup", {
        "name": "hot-group", "auto_rebalance": False, "auto_rebalance_interval": 300,
        "auto_rebalance_criteria": ["SE_AUTO_REBALANCE_OPEN_CONNS"], "auto_rebalance_capacity_per_se": [1],
    }))
    ses = [
        await write(node, register(n, group))
        for n in ("se-1", "se-2")
    ]
    pool = await write(node, create("pool", {"name": "p"}))
    vip = await write(node, create("vsvip", {
        "name": "vip", "vip": [{"vip_id": "1", "ip_address": {"addr": "127.10.0.9", "type": "V4"}}],
    }))
    await write(node, create("virtualservice", {
        "name": "vs", "vsvip_ref": f"/api/vsvip/{vip}", "pool_ref": f"/api/pool/{pool}",
        "services": [{"port": 8080}], "se_group_ref": f"/api/serviceenginegroup/{group}",
    }))

    clock = FakeClock(1_000_000.0)
    reconciler = Reconciler(node, None, clock=clock)

    async def rounds(seconds: float) -> None:
        end = clock.now + seconds
        while clock.now < end:
            # The SE that carries the VS holds 5 connections; the other is idle.
            for se in ses:
                held = 5 if node.view.placed_on(se) else 0
                node.se_status[se] = {"time": clock.now, "report_interval": 1.0, "se": {"open_connections": held}}
            await reconciler.round()  # raises on any failure: a failed round fails the test
            clock.now += 0.25

    await rounds(20.0)
    (hot,) = [se for se in ses if node.view.placed_on(se)]
    alerts = events_of(node, AutoscaleAlerted)
    assert [a.se_uuid for a in alerts] == [hot]
    assert alerts[0].action == "migrate"
    assert reconciler.rounds == 80

    await rounds(280.0)
    assert len(events_of(node, AutoscaleAlerted)) == 1, "still inside the 300 s cooldown"
    await rounds(1.0)
    assert len(events_of(node, AutoscaleAlerted)) == 2, "the cooldown has passed: one more alert"


async def test_a_round_that_proposes_many_commands_makes_them_all(node: Controller) -> None:
    """One round commits every command the cores return (the loop does not stop after the first)."""
    group = await write(node, create("serviceenginegroup", {
        "name": "g", "max_vs_per_se": 10}))
    se = await write(node, register("se-1", group))
    pool = await write(node, create("pool", {"name": "p"}))
    vss = []
    for i in range(5):
        vip = await write(node, create("vsvip", {
            "name": f"vip{i}", "vip": [{"vip_id": "1", "ip_address": {"addr": f"127.10.1.{i + 1}", "type": "V4"}}],
        }))
        vss.append(await write(node, create("virtualservice", {
            "name": f"vs{i}", "vsvip_ref": f"/api/vsvip/{vip}", "pool_ref": f"/api/pool/{pool}",
            "services": [{"port": 80}], "se_group_ref": f"/api/serviceenginegroup/{group}",
        })))
    clock = FakeClock(1_000_000.0)
    reconciler = Reconciler(node, None, clock=clock)
    node.se_status[se] = {"time": clock.now, "report_interval": 1.0, "se": {}}
    await reconciler.round()
    assert all(node.view.placement(vs) == (se,) for vs in vss)
    assert node.view.se_ready(se)


async def test_a_failed_round_is_counted_and_logged(node: Controller, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop survives a round that raises, and counts it where tests and /metrics see it."""
    reconciler = Reconciler(node, None, interval=0.01)

    async def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(reconciler, "round", broken)
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.run(stop))
    await wait_for(lambda: reconciler.failed_rounds >= 3, 5.0, what="three failed rounds")
    stop.set()
    await asyncio.wait_for(task, 5.0)
    assert reconciler.last_failure == "RuntimeError: boom"


async def test_an_se_the_cloud_cannot_start_is_reported_and_the_others_start(node: Controller, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """With the real local cloud: one group's SE cannot be started (its directory is a file), the
    other group's SE starts; the round does not fail, and the bad group's runtime says why."""
    from cluster.cloud.local import LocalCloud

    home = tmp_path / "cloud"
    monkeypatch.setenv("AVICTL_HOME", str(home))
    cloud = LocalCloud(home, ["http://127.0.0.1:9"], "unused-token")
    (home / "se").mkdir(parents=True)
    (home / "se" / "Bad-1").write_text("not a directory")
    for prefix in ("Good", "Bad"):
        group = await write(node, create("serviceenginegroup", {"name": f"{prefix.lower()}-group", "se_name_prefix": prefix, "buffer_se": 0}))
        pool = await write(node, create("pool", {"name": f"{prefix}-pool"}))
        vip = await write(node, create("vsvip", {"name": f"{prefix}-vip", "vip": [{"ip_address": {"addr": f"127.10.5.{len(prefix)}", "type": "V4"}}]}))
        await write(node, create("virtualservice", {"name": f"{prefix}-vs", "vsvip_ref": f"/api/vsvip/{vip}", "pool_ref": f"/api/pool/{pool}",
                                                    "services": [{"port": 80}], "se_group_ref": f"/api/serviceenginegroup/{group}"}))
    reconciler = Reconciler(node, cloud)
    try:
        for _ in range(3):
            await reconciler.round()  # raises on any failure
        assert set(node.view.se_requested()) == {"Good-1", "Bad-1"}
        assert "Good-1" in cloud.running() and "Bad-1" not in cloud.running()
        assert list(reconciler.cloud_errors) == ["bad-group"]
        assert reconciler.cloud_errors["bad-group"].startswith("cannot start Bad-1:")
    finally:
        for name in cloud.running():
            cloud.stop(name, timeout=2.0)
