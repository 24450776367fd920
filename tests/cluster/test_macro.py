"""The macro API's decisions: a hierarchy created or deleted as one command, all or nothing."""

from __future__ import annotations

import copy
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import decide as d
from cluster.macro import decide_macro_create, decide_macro_delete, macro_kind
from cluster.views import Accepted, ConfigView, Rejected, ref_uuid
from storage.events import ObjectCreated, ObjectDeleted
from tests.cluster.test_views import commit, fresh_view, proposal_of


def vs_hierarchy(name: str, hm_names: tuple[str, ...] = ("hm",)) -> dict[str, Any]:
    """The real product's documented macro example, on a loopback address of its own (one VIP
    address and port is one VS's)."""
    n = zlib.crc32(name.encode()) % 65000 + 1
    return {
        "name": name,
        "services": [{"port": 80}],
        "vsvip_ref_data": {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": f"127.11.{n // 256}.{n % 256}", "type": "V4"}}]},
        "pool_ref_data": {
            "name": f"{name}-pool",
            "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 8080}],
            "health_monitor_refs_data": [
                {"name": f"{name}-{hm}", "type": "HEALTH_MONITOR_HTTP", "http_monitor": {"http_response_code": ["HTTP_2XX"]}}
                for hm in hm_names
            ],
        },
    }


def create(view: ConfigView, data: Any, model: str = "VirtualService") -> Any:
    return commit(view, proposal_of(view, decide_macro_create(view, model, data, tenant="admin")))


def test_creates_the_hierarchy_children_first_in_one_command() -> None:
    """One command creates the HMs, the pool, the vsvip and the VS, with refs wired to the new objects."""
    view = fresh_view()
    decision = decide_macro_create(view, "VirtualService", vs_hierarchy("web", ("a", "b")), tenant="admin")
    kinds = [e.kind for e in decision.events]
    assert kinds == ["vsvip", "healthmonitor", "healthmonitor", "pool", "virtualservice"]
    outcome = commit(view, proposal_of(view, decision))
    assert isinstance(outcome, Accepted) and outcome.last_revision - outcome.first_revision == 4
    vs = view.by_name("virtualservice", "web")
    pool = view.by_name("pool", "web-pool")
    assert vs is not None and pool is not None
    assert ref_uuid(vs.body["pool_ref"]) == pool.uuid
    assert ref_uuid(vs.body["vsvip_ref"]) == view.by_name("vsvip", "web-vip").uuid  # type: ignore[union-attr]
    assert [ref_uuid(r) for r in pool.body["health_monitor_refs"]] == [
        view.by_name("healthmonitor", "web-a").uuid,  # type: ignore[union-attr]
        view.by_name("healthmonitor", "web-b").uuid,  # type: ignore[union-attr]
    ]
    assert decision.uuid == vs.uuid


def test_refs_to_existing_objects_mix_with_new_ones() -> None:
    """A nested object may refer to an existing one by name (System-HTTP) beside new ones."""
    view = fresh_view()
    data = vs_hierarchy("web", ())
    data["pool_ref_data"]["health_monitor_refs"] = ["/api/healthmonitor?name=System-HTTP"]
    del data["pool_ref_data"]["health_monitor_refs_data"]
    assert isinstance(create(view, data), Accepted)
    pool = view.by_name("pool", "web-pool")
    assert pool is not None
    assert ref_uuid(pool.body["health_monitor_refs"][0]) == view.by_name("healthmonitor", "System-HTTP").uuid  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "code", "field"),
    [
        (lambda b: b["pool_ref_data"]["servers"][0].update(port=70000), 422, "data.pool_ref_data.servers[0].port"),
        (lambda b: b["pool_ref_data"]["health_monitor_refs_data"][0].update(type="HEALTH_MONITOR_NOPE"), 422,
         "data.pool_ref_data.health_monitor_refs_data[0].type"),
        (lambda b: b.update(bogus_ref_data={"name": "x"}), 422, "data.bogus_ref_data"),
        (lambda b: b.update(pool_ref="/api/pool?name=other"), 422, "data.pool_ref_data"),
        (lambda b: b.update(pool_ref_data=[1]), 422, "data.pool_ref_data"),
        (lambda b: b.pop("services"), 422, "data.services"),
    ],
)
def test_a_refusal_anywhere_refuses_everything_and_names_the_path(mutate: Any, code: int, field: str) -> None:
    """Bad input deep in the hierarchy is refused with the field's path in the request; nothing is created."""
    view = fresh_view()
    data = vs_hierarchy("web")
    mutate(data)
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", data, tenant="admin")
    assert (info.value.code, info.value.field) == (code, field)
    assert view.revision == 0


def test_name_clash_with_an_existing_object_or_within_the_macro_is_409() -> None:
    """A nested object whose name exists (before or earlier in the same macro) is refused with 409."""
    view = fresh_view()
    create(view, vs_hierarchy("web"))
    again = vs_hierarchy("web2")
    again["pool_ref_data"]["name"] = "web-pool"
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", again, tenant="admin")
    assert (info.value.code, info.value.field) == (409, "data.pool_ref_data.name")
    twice = [vs_hierarchy("a"), vs_hierarchy("a")]
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", twice, tenant="admin")
    assert info.value.code == 409 and info.value.field is not None and info.value.field.startswith("data[1]")


def test_a_list_of_hierarchies_is_one_command() -> None:
    """data as a list (our extension) creates every hierarchy in one entry."""
    view = fresh_view()
    outcome = create(view, [{"name": f"p{i}", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}}]} for i in range(5)], "Pool")
    assert isinstance(outcome, Accepted) and outcome.last_revision == 5
    assert sorted(o.name for o in view.list("pool")) == [f"p{i}" for i in range(5)]


def test_model_name_is_checked() -> None:
    """model_name is required and must name a kind; lower case is accepted."""
    assert macro_kind("virtualservice") == "virtualservice"
    for bad in (None, "", "Nope", 3):
        with pytest.raises(d.CommandError) as info:
            macro_kind(bad)
        assert (info.value.code, info.value.field) == (422, "model_name")


def test_apply_refuses_the_whole_macro_when_a_referred_object_went_away() -> None:
    """Decided against a view where an existing HM was present, applied after it was deleted: nothing applies."""
    view = fresh_view()
    hm = d.decide_create(view, "healthmonitor", {"name": "shared", "type": "HEALTH_MONITOR_TCP"}, tenant="admin", uuid=d.new_uuid("healthmonitor"))
    commit(view, proposal_of(view, hm))
    data = vs_hierarchy("web", ())
    data["pool_ref_data"]["health_monitor_refs"] = ["/api/healthmonitor?name=shared"]
    del data["pool_ref_data"]["health_monitor_refs_data"]
    stale = proposal_of(view, decide_macro_create(view, "VirtualService", data, tenant="admin"))
    obj = view.by_name("healthmonitor", "shared")
    assert obj is not None
    commit(view, proposal_of(view, d.decide_delete(view, obj)))
    before = view.revision
    assert isinstance(commit(view, stale), Rejected)
    assert view.revision == before and view.by_name("pool", "web-pool") is None


def test_delete_removes_the_hierarchy_but_keeps_shared_and_builtin_objects() -> None:
    """Macro delete takes the VS and its own objects; an HM another pool uses and built-ins stay."""
    view = fresh_view()
    create(view, vs_hierarchy("web", ("own", "shared")))
    other = d.decide_create(
        view, "pool",
        {"name": "other", "servers": [{"ip": {"addr": "127.0.0.3", "type": "V4"}}], "health_monitor_refs": ["/api/healthmonitor?name=web-shared"]},
        tenant="admin", uuid=d.new_uuid("pool"),
    )
    commit(view, proposal_of(view, other))
    data = vs_hierarchy("web", ("own", "shared"))
    data["pool_ref_data"]["health_monitor_refs_data"].append({"name": "System-HTTP"})
    decision = decide_macro_delete(view, "VirtualService", data, tenant="admin")
    assert all(isinstance(e, ObjectDeleted) for e in decision.events)
    assert isinstance(commit(view, proposal_of(view, decision)), Accepted)
    for kind, name in (("virtualservice", "web"), ("pool", "web-pool"), ("vsvip", "web-vip"), ("healthmonitor", "web-own")):
        assert view.by_name(kind, name) is None, (kind, name)
    assert view.by_name("healthmonitor", "web-shared") is not None
    assert view.by_name("healthmonitor", "System-HTTP") is not None


def test_delete_of_a_top_object_in_use_or_absent_is_refused() -> None:
    """The top object must exist (404) and not be used from outside (409)."""
    view = fresh_view()
    create(view, vs_hierarchy("web"))
    with pytest.raises(d.CommandError) as info:
        decide_macro_delete(view, "Pool", {"name": "web-pool"}, tenant="admin")
    assert info.value.code == 409
    with pytest.raises(d.CommandError) as info:
        decide_macro_delete(view, "VirtualService", {"name": "nope"}, tenant="admin")
    assert info.value.code == 404


_names = st.text(alphabet="abcdefgh", min_size=1, max_size=3)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_names, st.lists(_names, max_size=3)), min_size=1, max_size=4))
def test_created_objects_are_exactly_the_decided_events(spec: list[tuple[str, list[str]]]) -> None:
    """Any batch of hierarchies either applies entirely (every event's object exists with its refs
    resolving) or is refused before apply with the view untouched."""
    view = fresh_view()
    data = [vs_hierarchy(f"vs-{name}", tuple(hms)) for name, hms in spec]
    snapshot = copy.deepcopy(view.to_snapshot())
    try:
        decision = decide_macro_create(view, "VirtualService", data, tenant="admin")
    except d.CommandError as exc:
        assert exc.code in (409, 422)
        assert view.to_snapshot() == snapshot
        return
    assert isinstance(commit(view, proposal_of(view, decision)), Accepted)
    for event in decision.events:
        assert isinstance(event, ObjectCreated)
        obj = view.get(event.uuid)
        assert obj is not None and obj.name == event.name
        for ref in obj.body.get("health_monitor_refs", []) + [obj.body.get("pool_ref"), obj.body.get("vsvip_ref")]:
            if ref:
                assert view.get(ref_uuid(ref)) is not None


def test_delete_does_not_depend_on_the_order_of_the_request() -> None:
    """An HM two pools of the hierarchy share goes too, whichever pool names it first; the same
    for a top object that a later top object uses."""
    view = fresh_view()
    create(view, vs_hierarchy("web", ("shared",)))
    other = d.decide_create(
        view, "pool",
        {"name": "second", "servers": [{"ip": {"addr": "127.0.0.3", "type": "V4"}}], "health_monitor_refs": ["/api/healthmonitor?name=web-shared"]},
        tenant="admin", uuid=d.new_uuid("pool"),
    )
    commit(view, proposal_of(view, other))
    data = [
        {"name": "web-pool", "health_monitor_refs_data": [{"name": "web-shared"}]},  # listed under the first pool only
        {"name": "second"},
    ]
    with pytest.raises(d.CommandError) as info:  # web-pool is still used by the VS
        decide_macro_delete(view, "Pool", data, tenant="admin")
    assert info.value.code == 409 and info.value.field == "data[0]"
    data.insert(0, {"name": "web", "vsvip_ref_data": {"name": "web-vip"}})
    with pytest.raises(d.CommandError):
        decide_macro_delete(view, "Pool", data, tenant="admin")  # a VS is not a Pool
    assert isinstance(commit(view, proposal_of(view, decide_macro_delete(view, "VirtualService", {"name": "web"}, tenant="admin"))), Accepted)
    decision = decide_macro_delete(view, "Pool", data[1:], tenant="admin")
    assert isinstance(commit(view, proposal_of(view, decision)), Accepted)
    assert view.by_name("healthmonitor", "web-shared") is None
    assert view.by_name("pool", "second") is None and view.by_name("pool", "web-pool") is None


def test_a_name_alias_beside_ref_data_is_refused() -> None:
    """application_profile_name and application_profile_ref_data together are ambiguous: 422."""
    view = fresh_view()
    data = vs_hierarchy("web")
    data["application_profile_name"] = "System-HTTP"
    data["application_profile_ref_data"] = {"name": "mine", "type": "APPLICATION_PROFILE_TYPE_HTTP"}
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", data, tenant="admin")
    assert info.value.code == 422 and info.value.field == "data.application_profile_ref_data"


def test_two_virtual_services_on_one_vip_and_port_are_refused_in_a_macro_and_across_macros() -> None:
    """A macro whose VSs (or whose VS and an existing one) would listen on the same VIP address and
    port is refused (409 naming the address, the port and the VS holding it) before anything applies."""
    view = fresh_view()
    create(view, vs_hierarchy("web"))
    clash = vs_hierarchy("web-too")
    clash["vsvip_ref_data"]["vip"] = vs_hierarchy("web")["vsvip_ref_data"]["vip"]
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", clash, tenant="admin")
    addr = clash["vsvip_ref_data"]["vip"][0]["ip_address"]["addr"]
    assert (info.value.code, info.value.field) == (409, "data.services[0].port")
    assert info.value.message == f"{addr}:80 is already served by virtualservice 'web'"
    first, second = vs_hierarchy("x1"), vs_hierarchy("x2")
    second["vsvip_ref_data"]["vip"] = first["vsvip_ref_data"]["vip"]
    with pytest.raises(d.CommandError) as info:
        decide_macro_create(view, "VirtualService", [first, second], tenant="admin")
    assert (info.value.code, info.value.field) == (409, "data[1].services[0].port")
    second["services"] = [{"port": 81}]
    assert isinstance(create(view, [first, second]), Accepted), "another port on the same address is fine"
