"""What ``decide`` refuses for the macro API (``CreateHierarchy``, ``ApplyHierarchy``,
``DeleteHierarchy``): each refusal with its code, its field as a path in the request, and the
name it must mention; and that a refusal changes nothing."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import pytest

from cluster import macro
from cluster.commands import ApplyHierarchy, Command, CreateHierarchy, DeleteHierarchy, decide
from cluster.views import ConfigView
from tests.cluster._decide_world import apply, create, fresh_view, refusal


class World(NamedTuple):
    view: ConfigView
    web: str  # virtualservice "web" on 127.11.0.1:80, with its "web-pool", "web-vip" and "web-hm"
    theirs: str  # tenant t2's pool "theirs"


def web_hierarchy(name: str = "web", addr: str = "127.11.0.1") -> dict[str, Any]:
    return {
        "name": name,
        "services": [{"port": 80}],
        "vsvip_ref_data": {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": addr}}]},
        "pool_ref_data": {"name": f"{name}-pool", "health_monitor_refs_data": [{"name": f"{name}-hm", "type": "HEALTH_MONITOR_TCP"}]},
    }


@pytest.fixture()
def world() -> World:
    view = fresh_view()
    web = apply(view, CreateHierarchy("VirtualService", web_hierarchy(), "admin"))
    return World(view, web, create(view, "pool", {"name": "theirs"}, tenant="t2"))


def vs(name: str, port: int, vsvip: str = "web-vip") -> dict[str, Any]:
    return {"model_name": "VirtualService", "name": name, "services": [{"port": port}], "vsvip_ref": f"/api/vsvip?name={vsvip}"}


# -- model_name and data -------------------------------------------------------------------------

_MACROS = [CreateHierarchy, ApplyHierarchy, DeleteHierarchy]


@pytest.mark.parametrize("make", _MACROS)
@pytest.mark.parametrize("model_name", [None, "", 5], ids=["none", "empty", "integer"])
def test_a_missing_model_name_is_422(world: World, make: Any, model_name: Any) -> None:
    """A macro names the kind of its top object."""
    error = refusal(world.view, make(model_name, {"name": "x"}, "admin"))
    assert (422, "model_name") == (error.code, error.field)
    assert "model_name is required" in error.message


@pytest.mark.parametrize("make", _MACROS)
def test_an_unknown_model_name_is_422_listing_the_known_ones(world: World, make: Any) -> None:
    """A model_name that names no kind is refused with the names that would do."""
    error = refusal(world.view, make("Gadget", {"name": "x"}, "admin"))
    assert (422, "model_name") == (error.code, error.field)
    assert "unknown model_name 'Gadget'; known: ApplicationProfile, Cloud" in error.message
    assert "VirtualService, VsVip" in error.message


@pytest.mark.parametrize("make", _MACROS)
def test_an_item_naming_an_unknown_model_is_422_on_its_model_name(world: World, make: Any) -> None:
    """In a list, an item's own model_name is checked and named by its index."""
    error = refusal(world.view, make("Pool", [{"name": "web-pool"}, {"model_name": "Gadget", "name": "x"}], "admin"))
    assert (422, "data[1].model_name") == (error.code, error.field)
    assert "'Gadget'" in error.message


@pytest.mark.parametrize("make", _MACROS)
def test_missing_data_is_422(world: World, make: Any) -> None:
    """A macro needs data."""
    error = refusal(world.view, make("Pool", None, "admin"))
    assert (422, "data") == (error.code, error.field)
    assert "data is required" in error.message


@pytest.mark.parametrize("make", _MACROS)
def test_an_empty_list_of_data_is_422(world: World, make: Any) -> None:
    """A list of hierarchies holds at least one."""
    error = refusal(world.view, make("Pool", [], "admin"))
    assert (422, "data", "data must hold at least one object") == (error.code, error.field, error.message)


# -- shapes of a hierarchy -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "data", "path", "kind"),
    [
        pytest.param("Pool", "web-pool", "data", "pool", id="top"),
        pytest.param("Pool", [{"name": "q"}, 7], "data[1]", "pool", id="list-item"),
        pytest.param("VirtualService", dict(web_hierarchy("v2", "127.11.0.2"), pool_ref_data=7), "data.pool_ref_data", "pool", id="nested"),
        pytest.param("Pool", {"name": "q", "health_monitor_refs_data": ["hm"]}, "data.health_monitor_refs_data[0]", "healthmonitor",
                     id="nested-list-item"),
    ],
)
def test_an_object_that_is_not_a_json_object_is_422_on_its_path(world: World, model: str, data: Any, path: str, kind: str) -> None:
    """Each object of a hierarchy to create is a JSON object; the refusal names its kind and path."""
    error = refusal(world.view, CreateHierarchy(model, data, "admin"))
    assert (422, path, f"expected a {kind} object") == (error.code, error.field, error.message)


@pytest.mark.parametrize(
    ("make", "key", "field_name"),
    [
        pytest.param(CreateHierarchy, "nope_ref_data", "nope_ref", id="create-unknown"),
        pytest.param(CreateHierarchy, "name_data", "name", id="create-not-a-ref"),
        pytest.param(ApplyHierarchy, "nope_ref_data", "nope_ref", id="apply"),
        pytest.param(DeleteHierarchy, "nope_ref_data", "nope_ref", id="delete"),
    ],
)
def test_data_for_a_field_that_is_not_a_ref_is_422_on_its_path(world: World, make: Any, key: str, field_name: str) -> None:
    """Only ref fields take *_data; any other is an unknown field, named with its path."""
    error = refusal(world.view, make("Pool", {"name": "web-pool", key: {"name": "x"}}, "admin"))
    assert (422, f"data.{key}", f"unknown field: {field_name} is not a reference field of pool") == (error.code, error.field, error.message)


@pytest.mark.parametrize(
    ("given", "key"),
    [
        pytest.param({"pool_ref": "/api/pool?name=web-pool"}, "pool_ref", id="ref"),
        pytest.param({"application_profile_name": "System-HTTP"}, "application_profile_name", id="alias"),
    ],
)
def test_ref_data_beside_the_ref_itself_is_422(world: World, given: dict[str, Any], key: str) -> None:
    """x_data and x (or a name alias of x) are two answers to one question: give one."""
    data_key = "pool_ref_data" if key == "pool_ref" else "application_profile_ref_data"
    data = dict(web_hierarchy("v2", "127.11.0.2"), **given, **{data_key: {"name": "z"}})
    error = refusal(world.view, CreateHierarchy("VirtualService", data, "admin"))
    assert (422, f"data.{data_key}", f"give either {key} or {data_key}, not both") == (error.code, error.field, error.message)


@pytest.mark.parametrize("make", [CreateHierarchy, DeleteHierarchy])
def test_list_ref_data_that_is_not_a_list_is_422(world: World, make: Any) -> None:
    """x_refs_data is a list of objects."""
    error = refusal(world.view, make("Pool", {"name": "web-pool", "health_monitor_refs_data": {"name": "web-hm"}}, "admin"))
    assert (422, "data.health_monitor_refs_data", "expected a list of healthmonitor objects") == (error.code, error.field, error.message)


@pytest.mark.parametrize("make", [CreateHierarchy, DeleteHierarchy])
def test_objects_nested_deeper_than_the_bound_are_422(world: World, make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hierarchy nested deeper than the bound is refused at the first object too deep. The
    schema's refs nest two deep at most (VS -> pool -> healthmonitor, VS -> SE group -> cloud), far
    inside the bound of 6, so the bound is lowered to 1 to reach the guard."""
    monkeypatch.setattr(macro, "_MAX_DEPTH", 1)
    data = {"name": "web", "pool_ref_data": {"name": "web-pool", "health_monitor_refs_data": [{"name": "web-hm"}]}}
    error = refusal(world.view, make("VirtualService", data, "admin"))
    assert (422, "data.pool_ref_data.health_monitor_refs_data[0]") == (error.code, error.field)
    assert "objects nested more than 1 levels deep" == error.message


# -- what create and apply decide for each object ------------------------------------------------


def test_a_refusal_of_a_nested_object_names_its_path(world: World) -> None:
    """What creating a nested object is refused for is reported on its path in the request."""
    data = web_hierarchy("v2", "127.11.0.2")
    data["pool_ref_data"]["health_monitor_refs_data"][0].pop("type")
    error = refusal(world.view, CreateHierarchy("VirtualService", data, "admin"))
    assert (422, "data.pool_ref_data.health_monitor_refs_data[0].type") == (error.code, error.field)


def test_a_nested_name_the_tenant_has_is_409_on_its_path(world: World) -> None:
    """A nested object named like an existing one of its kind is 409 on its name's path."""
    data = web_hierarchy("v2", "127.11.0.2")
    data["pool_ref_data"]["name"] = "web-pool"
    error = refusal(world.view, CreateHierarchy("VirtualService", data, "admin"))
    assert (409, "data.pool_ref_data.name", "pool named 'web-pool' already exists") == (error.code, error.field, error.message)


@pytest.mark.parametrize("make", [CreateHierarchy, ApplyHierarchy])
def test_a_kind_the_cluster_manages_is_405_on_the_object(world: World, make: Any) -> None:
    """A refusal on no field (here 405) is reported on the object's path."""
    error = refusal(world.view, make("ServiceEngine", {"name": "mine"}, "admin"))
    assert (405, "data") == (error.code, error.field)
    assert "serviceengine objects are managed by the cluster" in error.message


def test_apply_refuses_an_update_the_schema_refuses_on_its_path(world: World) -> None:
    """Applying fields the schema refuses over an existing object is 422 on that field's path."""
    error = refusal(world.view, ApplyHierarchy("Pool", [{"name": "web-pool", "servers": 5}], "admin"))
    assert (422, "data[0].servers") == (error.code, error.field)
    assert "expected array" in error.message


def test_a_ref_to_another_tenants_object_is_422_on_its_path(world: World) -> None:
    """Refs inside a macro obey the tenancy rule, reported on their path."""
    data = dict(web_hierarchy("v2", "127.11.0.2"), pool_ref=f"/api/pool/{world.theirs}")
    del data["pool_ref_data"]
    error = refusal(world.view, CreateHierarchy("VirtualService", data, "t1"))
    assert (422, "data.pool_ref") == (error.code, error.field)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([vs("v2", 80)], id="against-a-committed-vs"),
        pytest.param([vs("v2", 81), vs("v3", 81)], id="within-the-macro"),
    ],
)
def test_a_vip_address_and_port_another_vs_serves_is_409_on_its_path(world: World, data: list[dict[str, Any]]) -> None:
    """A VS of a macro may not listen where another VS does, committed or made earlier in the macro."""
    holder, port = ("web", 80) if len(data) == 1 else ("v2", 81)
    error = refusal(world.view, CreateHierarchy("VirtualService", data, "admin"))
    assert (409, f"data[{len(data) - 1}].services[0].port") == (error.code, error.field)
    assert f"127.11.0.1:{port} is already served by virtualservice {holder!r}" == error.message


def test_apply_may_move_a_vs_off_a_port_and_another_onto_it(world: World) -> None:
    """One apply that moves web to port 81 and creates v2 on port 80 is decided and applies: the result is valid."""
    apply(world.view, ApplyHierarchy("VirtualService", [vs("web", 81), vs("v2", 80)], "admin"))
    v2 = world.view.by_name("virtualservice", "v2")
    assert v2 is not None and {v2.uuid} == world.view.endpoint_holders("127.11.0.1", 80)


@pytest.mark.parametrize("make", [CreateHierarchy, ApplyHierarchy])
def test_more_objects_than_the_bound_is_413(world: World, make: Any) -> None:
    """A macro changes at most MAX_MACRO_OBJECTS objects; one more is 413."""
    pools = [{"name": f"bulk{i}"} for i in range(macro.MAX_MACRO_OBJECTS + 1)]
    error = refusal(world.view, make("Pool", pools, "admin"))
    assert (413, "data", "a macro may change at most 1000 objects; split the request") == (error.code, error.field, error.message)


def test_as_many_objects_as_the_bound_are_decided(world: World) -> None:
    """MAX_MACRO_OBJECTS objects in one macro are within the bound."""
    pools = [{"name": f"bulk{i}"} for i in range(macro.MAX_MACRO_OBJECTS)]
    assert macro.MAX_MACRO_OBJECTS == len(decide(world.view, CreateHierarchy("Pool", pools, "admin"), 0.0).events)


# -- delete --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param("web-pool", "data", id="top"),
        pytest.param({"name": "web", "pool_ref_data": "web-pool"}, "data.pool_ref_data", id="nested"),
    ],
)
def test_delete_of_an_object_that_is_not_a_json_object_is_422(world: World, data: Any, path: str) -> None:
    """Each object to delete is a JSON object giving its name or uuid."""
    model = "Pool" if isinstance(data, str) else "VirtualService"
    error = refusal(world.view, DeleteHierarchy(model, data, "admin"))
    assert (422, path) == (error.code, error.field)
    assert "object (its name or uuid)" in error.message


@pytest.mark.parametrize("data", [{}, {"name": ""}, {"uuid": 5}], ids=["nothing", "empty-name", "uuid-not-a-string"])
def test_delete_of_an_object_named_by_neither_name_nor_uuid_is_422(world: World, data: Any) -> None:
    """An object to delete is found by name or uuid."""
    error = refusal(world.view, DeleteHierarchy("Pool", data, "admin"))
    assert (422, "data", "name or uuid is required to find the pool") == (error.code, error.field, error.message)


@pytest.mark.parametrize(
    ("data_of", "tenant"),
    [
        pytest.param(lambda w: {"name": "nope"}, "admin", id="absent-name"),
        pytest.param(lambda w: {"uuid": w.theirs}, "admin", id="another-tenants-uuid"),
        pytest.param(lambda w: {"name": "web-pool"}, "t2", id="admins-name-from-another-tenant"),
        pytest.param(lambda w: {"uuid": w.web}, "admin", id="uuid-of-another-kind"),
    ],
)
def test_delete_of_a_top_object_that_is_not_there_is_404(world: World, data_of: Callable[[World], Any], tenant: str) -> None:
    """The top object must exist in the tenant; another tenant's is not found either."""
    data = data_of(world)
    error = refusal(world.view, DeleteHierarchy("Pool", data, tenant))
    assert (404, "data") == (error.code, error.field)
    assert f"pool {data.get('uuid') or data['name']!r} does not exist" == error.message


@pytest.mark.parametrize(("data", "path"), [({"name": "Default-Group"}, "data"), ([{"name": "Default-Group"}], "data[0]")], ids=["one", "list"])
def test_delete_of_a_built_in_top_object_is_409(world: World, data: Any, path: str) -> None:
    """A built-in top object cannot be deleted (409 on its path)."""
    error = refusal(world.view, DeleteHierarchy("ServiceEngineGroup", data, "admin"))
    assert (409, path, "serviceenginegroup 'Default-Group' is built in and cannot be deleted") == (error.code, error.field, error.message)


def test_delete_of_a_top_object_used_from_outside_is_409_naming_the_user(world: World) -> None:
    """A top object used by something the macro does not delete is 409 naming that user."""
    error = refusal(world.view, DeleteHierarchy("Pool", {"name": "web-pool"}, "admin"))
    assert (409, "data", "pool 'web-pool' is in use by virtualservice 'web'") == (error.code, error.field, error.message)


# -- a refusal changes nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(CreateHierarchy("VirtualService", [vs("v2", 81), vs("v3", 80)], "admin"), id="create"),
        pytest.param(ApplyHierarchy("VirtualService", [vs("web", 81, "web-vip"), vs("v2", 82, "nope")], "admin"), id="apply"),
        pytest.param(DeleteHierarchy("VirtualService", [{"name": "web"}, {"name": "web", "model_name": "Pool"}], "admin"), id="delete"),
    ],
)
def test_a_refused_macro_leaves_the_view_unchanged(world: World, command: Command) -> None:
    """A macro refused after it decided some of its objects leaves the view byte for byte as it was."""
    before = world.view.to_snapshot()
    refusal(world.view, command)
    assert before == world.view.to_snapshot()

