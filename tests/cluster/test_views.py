"""The config view and apply-time checks: pure, deterministic, and safe under stale decisions."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from cluster import decide as d
from cluster.apply import apply
from cluster.views import Accepted, ConfigView, Duplicate, Rejected, ref_uuid
from storage.events import Proposal

_ids = itertools.count(1)


def fresh_view() -> ConfigView:
    return ConfigView.with_builtins(d.builtin_events())


def proposal_of(view: ConfigView, decision: d.Decision, command_id: str | None = None) -> Proposal:
    return Proposal(command_id or f"c{next(_ids)}", view.revision, 0.0, decision.preconditions, decision.events)


def commit(view: ConfigView, proposal: Proposal) -> Any:
    """Apply ``proposal`` as the next Raft entry; its outcome."""
    ((_command_id, outcome),) = apply(view, view.raft_index + 1, proposal).outcomes
    return outcome


def pool_body(name: str) -> dict[str, Any]:
    return {"name": name, "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}


def make_vs(view: ConfigView, name: str, pool_uuid: str, addr: str = "127.10.0.1", port: int = 80) -> d.Decision:
    vip = d.decide_create(view, "vsvip", {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": addr, "type": "V4"}}]}, tenant="admin", uuid=d.new_uuid("vsvip"))
    commit(view, proposal_of(view, vip))
    body = {"name": name, "services": [{"port": port}], "pool_ref": f"/api/pool/{pool_uuid}", "vsvip_ref": f"/api/vsvip/{vip.uuid}"}
    return d.decide_create(view, "virtualservice", body, tenant="admin", uuid=d.new_uuid("virtualservice"))


def test_builtins_are_present_at_revision_zero() -> None:
    """A new view holds Default-Group, Default-Cloud and System-HTTP, at revision 0."""
    view = fresh_view()
    assert view.revision == 0
    assert view.by_name("serviceenginegroup", "Default-Group") is not None
    assert view.by_name("cloud", "Default-Cloud") is not None
    assert view.by_name("healthmonitor", "System-HTTP") is not None


def test_duplicate_command_id_applies_once() -> None:
    """The same command id committed twice applies once; the second reports the first's revisions."""
    view = fresh_view()
    decision = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    first = commit(view, proposal_of(view, decision, "same"))
    second = commit(view, proposal_of(view, decision, "same"))
    assert first == Accepted(1, 1)
    assert second == Duplicate(Accepted(1, 1))
    assert view.revision == 1


def test_two_virtual_services_on_one_vip_address_and_port_are_refused_at_decide_and_at_apply() -> None:
    """A second VS on a VIP address and port is refused when decided (409 naming the address, the
    port and the VS that holds it); decided on a view that did not have the first yet, it is
    refused at apply. Another port, or the same port on another address, is fine; so is a vsvip
    change, unless it moves a VS onto a taken address and port."""
    view = fresh_view()
    pool = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    commit(view, proposal_of(view, pool))
    first, stale_second = make_vs(view, "first", pool.uuid), make_vs(view, "second", pool.uuid, addr="127.10.0.1")
    assert isinstance(commit(view, proposal_of(view, first)), Accepted)
    outcome = commit(view, proposal_of(view, stale_second))
    assert outcome == Rejected(409, "127.10.0.1:80 is already served by virtualservice 'first'", "services[0].port")
    with pytest.raises(d.CommandError) as info:
        make_vs(view, "third", pool.uuid, addr="127.10.0.1")
    assert (info.value.code, info.value.field, info.value.message) == (409, "services[0].port", "127.10.0.1:80 is already served by virtualservice 'first'")
    assert isinstance(commit(view, proposal_of(view, make_vs(view, "fourth", pool.uuid, addr="127.10.0.1", port=81))), Accepted)
    other = make_vs(view, "fifth", pool.uuid, addr="127.10.0.2")
    assert isinstance(commit(view, proposal_of(view, other)), Accepted)
    fifth = view.by_name("virtualservice", "fifth")
    vip = view.get(ref_uuid(fifth.body["vsvip_ref"]))  # type: ignore[union-attr]
    assert vip is not None
    with pytest.raises(d.CommandError) as info:
        d.decide_update(view, vip, {"name": vip.name, "vip": [{"ip_address": {"addr": "127.10.0.1", "type": "V4"}}]}, if_revision=None)
    assert (info.value.code, info.value.field) == (409, "vip")
    moved = d.decide_update(view, vip, {"name": vip.name, "vip": [{"ip_address": {"addr": "127.10.0.3", "type": "V4"}}]}, if_revision=None)
    assert isinstance(commit(view, proposal_of(view, moved)), Accepted)
    assert view.endpoint_holders("127.10.0.3", 80) == {fifth.uuid}  # type: ignore[union-attr]
    assert view.endpoint_holders("127.10.0.2", 80) == set()


def test_stale_precondition_is_rejected_412() -> None:
    """An update decided against an older revision of the object is rejected at apply."""
    view = fresh_view()
    create = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    commit(view, proposal_of(view, create))
    obj = view.get(create.uuid)
    assert obj is not None
    a = d.decide_update(view, obj, dict(pool_body("p"), default_server_port=81), if_revision=None)
    b = d.decide_update(view, obj, dict(pool_body("p"), default_server_port=82), if_revision=None)
    assert isinstance(commit(view, proposal_of(view, a)), Accepted)
    outcome = commit(view, proposal_of(view, b))
    assert isinstance(outcome, Rejected) and outcome.code == 412
    assert view.get(create.uuid).body["default_server_port"] == 81  # type: ignore[union-attr]


def test_delete_decided_before_a_new_reference_is_refused_at_apply() -> None:
    """Deleting a pool decided while unused is refused if a VS started using it before the delete applied."""
    view = fresh_view()
    create = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    commit(view, proposal_of(view, create))
    obj = view.get(create.uuid)
    assert obj is not None
    delete = proposal_of(view, d.decide_delete(view, obj))
    assert isinstance(commit(view, proposal_of(view, make_vs(view, "vs", create.uuid))), Accepted)
    outcome = commit(view, delete)
    assert isinstance(outcome, Rejected) and outcome.code == 409
    assert view.get(create.uuid) is not None


def test_reference_to_an_object_deleted_before_apply_is_refused() -> None:
    """A VS decided while its pool existed is refused if the pool was deleted first."""
    view = fresh_view()
    create = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    commit(view, proposal_of(view, create))
    vs = make_vs(view, "vs", create.uuid)
    obj = view.get(create.uuid)
    assert obj is not None
    assert isinstance(commit(view, proposal_of(view, d.decide_delete(view, obj))), Accepted)
    outcome = commit(view, proposal_of(view, vs))
    assert isinstance(outcome, Rejected) and outcome.code == 409 and outcome.field == "pool_ref"


def test_same_name_created_concurrently_applies_once() -> None:
    """Two creates of one name decided concurrently: the second is refused at apply."""
    view = fresh_view()
    a = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    b = d.decide_create(view, "pool", pool_body("p"), tenant="admin", uuid=d.new_uuid("pool"))
    assert isinstance(commit(view, proposal_of(view, a)), Accepted)
    outcome = commit(view, proposal_of(view, b))
    assert isinstance(outcome, Rejected) and outcome.field == "name"


def test_builtins_cannot_be_deleted() -> None:
    """Default-Group is built in: deleting it is a 409."""
    view = fresh_view()
    group = view.by_name("serviceenginegroup", "Default-Group")
    assert group is not None
    with pytest.raises(d.CommandError) as err:
        d.decide_delete(view, group)
    assert err.value.code == 409


class ViewMachine(RuleBasedStateMachine):
    """Random writes (some decided on stale views) keep the view consistent, and replay is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.view = fresh_view()
        self.log: list[Proposal] = []
        self.stale = fresh_view()
        self.snapshots: list[tuple[int, bytes]] = []

    def _commit(self, proposal: Proposal) -> None:
        self.log.append(proposal)
        commit(self.view, proposal)

    def _catch_up_stale(self) -> None:
        self.stale = ConfigView.from_snapshot(self.view.to_snapshot())

    @rule(name=st.sampled_from(["a", "b", "c"]), on_stale=st.booleans())
    def create_pool(self, name: str, on_stale: bool) -> None:
        view = self.stale if on_stale else self.view
        try:
            decision = d.decide_create(view, "pool", pool_body(name), tenant="admin", uuid=d.new_uuid("pool"))
        except d.CommandError:
            return
        self._commit(proposal_of(view, decision))

    @rule(name=st.sampled_from(["a", "b", "c"]), on_stale=st.booleans())
    def delete_pool(self, name: str, on_stale: bool) -> None:
        view = self.stale if on_stale else self.view
        obj = view.by_name("pool", name)
        if obj is None:
            return
        try:
            decision = d.decide_delete(view, obj)
        except d.CommandError:
            return
        self._commit(proposal_of(view, decision))

    @rule(name=st.sampled_from(["a", "b", "c"]), port=st.integers(1, 65535), on_stale=st.booleans())
    def update_pool(self, name: str, port: int, on_stale: bool) -> None:
        view = self.stale if on_stale else self.view
        obj = view.by_name("pool", name)
        if obj is None:
            return
        decision = d.decide_update(view, obj, dict(pool_body(name), default_server_port=port), if_revision=None)
        if decision.events:
            self._commit(proposal_of(view, decision))

    @rule(pool=st.sampled_from(["a", "b", "c"]), port=st.sampled_from([80, 81]), on_stale=st.booleans())
    def create_vs(self, pool: str, port: int, on_stale: bool) -> None:
        view = self.stale if on_stale else self.view
        obj = view.by_name("pool", pool)
        if obj is None:
            return
        name = f"vs{next(_ids)}"
        body = {"name": name, "services": [{"port": port}], "pool_ref": f"/api/pool/{obj.uuid}",
                "vsvip_ref": f"/api/vsvip/{self._vip(view)}"}
        try:
            decision = d.decide_create(view, "virtualservice", body, tenant="admin", uuid=d.new_uuid("virtualservice"))
        except d.CommandError:
            return
        self._commit(proposal_of(view, decision))

    def _vip(self, view: ConfigView) -> str:
        existing = view.by_name("vsvip", "shared-vip")
        if existing is not None and self.view.get(existing.uuid) is not None:
            return existing.uuid
        decision = d.decide_create(self.view, "vsvip", {"name": "shared-vip", "vip": [{"ip_address": {"addr": "127.10.0.1", "type": "V4"}}]}, tenant="admin", uuid=d.new_uuid("vsvip"))
        self._commit(proposal_of(self.view, decision))
        self._catch_up_stale()
        return decision.uuid

    @rule()
    def catch_up(self) -> None:
        self._catch_up_stale()

    @rule()
    def snapshot(self) -> None:
        self.snapshots.append((len(self.log), self.view.to_snapshot()))

    @invariant()
    def refs_resolve(self) -> None:
        from cluster import schema

        for kind in list(self.view.kinds()):
            for obj in self.view.list(kind):
                for field, target, value in schema.ref_fields(kind, obj.body):
                    if value:
                        ref = self.view.get(ref_uuid(value))
                        assert ref is not None and ref.kind == target, f"{obj.name}.{field} dangles"

    @invariant()
    def one_virtual_service_per_vip_address_and_port(self) -> None:
        from cluster.views import vs_endpoints

        seen: dict[Any, str] = {}
        for vs in self.view.list("virtualservice"):
            vsvip = self.view.get(ref_uuid(vs.body["vsvip_ref"]))
            assert vsvip is not None
            for endpoint in vs_endpoints(vs.body, vsvip.body):
                assert endpoint not in seen, f"{endpoint} served by {seen[endpoint]} and {vs.name}"
                seen[endpoint] = vs.name
                assert self.view.endpoint_holders(*endpoint) == {vs.uuid}
        rebuilt = ConfigView.from_snapshot(self.view.to_snapshot())
        assert all(rebuilt.endpoint_holders(*e) == self.view.endpoint_holders(*e) for e in seen)

    @invariant()
    def replay_from_any_snapshot_equals_the_whole_fold(self) -> None:
        whole = fresh_view()
        for proposal in self.log:
            commit(whole, proposal)
        assert whole.to_snapshot() == self.view.to_snapshot()
        for position, data in self.snapshots[-2:]:
            partial = ConfigView.from_snapshot(data)
            for proposal in self.log[position:]:
                commit(partial, proposal)
            assert partial.to_snapshot() == self.view.to_snapshot()


ViewMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
TestViewMachine = ViewMachine.TestCase
