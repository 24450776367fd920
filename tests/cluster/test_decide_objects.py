"""What ``decide`` refuses for object commands (create, update, patch, delete), SE registration
and refs, each with its code, field and the name it must mention; and that a refusal changes nothing."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import pytest

from cluster import decide as d
from cluster.commands import (
    ActOnVirtualService,
    Command,
    CommitDecision,
    CreateObject,
    DeleteObject,
    EndSession,
    PatchObject,
    PlaceVirtualService,
    RegisterServiceEngine,
    UpdateObject,
    decide,
)
from cluster.views import ConfigView
from storage.events import SessionEnded
from tests.cluster._decide_world import apply, create, fresh_view, refusal, register_se

_ABSENT_POOL = "pool-00000000-0000-4000-8000-000000000000"
_DEFAULT_CLOUD = d.builtin_uuid("cloud", "Default-Cloud")
_SYSTEM_HTTP_PROFILE = d.builtin_uuid("applicationprofile", "System-HTTP")


class World(NamedTuple):
    view: ConfigView
    pool: str  # admin's pool "p", used by "web"
    hm: str  # admin's healthmonitor "hm"
    vsvip: str  # admin's "web-vip" on 127.10.0.1
    vs: str  # admin's virtualservice "web" on 127.10.0.1:80
    theirs: str  # tenant t2's pool "theirs"
    their_hm: str  # tenant t2's healthmonitor "their-hm"


def vip_body(name: str, addr: str) -> dict[str, Any]:
    return {"name": name, "vip": [{"ip_address": {"addr": addr, "type": "V4"}}]}


def vs_body(name: str, vsvip: str, port: int = 80, **extra: Any) -> dict[str, Any]:
    return {"name": name, "services": [{"port": port}], "vsvip_ref": f"/api/vsvip/{vsvip}", **extra}


@pytest.fixture()
def world() -> World:
    view = fresh_view()
    pool = create(view, "pool", {"name": "p"})
    hm = create(view, "healthmonitor", {"name": "hm", "type": "HEALTH_MONITOR_TCP"})
    vsvip = create(view, "vsvip", vip_body("web-vip", "127.10.0.1"))
    vs = create(view, "virtualservice", vs_body("web", vsvip, pool_ref=f"/api/pool/{pool}"))
    theirs = create(view, "pool", {"name": "theirs"}, tenant="t2")
    their_hm = create(view, "healthmonitor", {"name": "their-hm", "type": "HEALTH_MONITOR_TCP"}, tenant="t2")
    return World(view, pool, hm, vsvip, vs, theirs, their_hm)


def create_vs_with_pool_ref(world: World, pool_ref: Any, tenant: str = "admin") -> Command:
    return CreateObject("virtualservice", vs_body("new", world.vsvip, 81, pool_ref=pool_ref), tenant, d.new_uuid("virtualservice"))


# -- refs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pool_ref", "mentions"),
    [
        pytest.param("/api/pool?x=1", "'/api/pool?x=1' names no object", id="by-name-without-a-name"),
        pytest.param("/api/pool?name=nope", "pool named 'nope' does not exist", id="unknown-name"),
        pytest.param(f"/api/cloud/{_DEFAULT_CLOUD}", "pool_ref must refer to a pool, not a cloud", id="path-of-another-kind"),
        pytest.param("junk", "cannot read 'junk' as a reference to a pool", id="unreadable"),
        pytest.param(f"/api/pool/{_ABSENT_POOL}", f"pool {_ABSENT_POOL} does not exist", id="unknown-uuid"),
    ],
)
def test_a_ref_that_names_no_pool_is_422_naming_the_field(world: World, pool_ref: str, mentions: str) -> None:
    """A ref that cannot be read, or names nothing of its kind, is 422 on the field, saying what it named."""
    error = refusal(world.view, create_vs_with_pool_ref(world, pool_ref))
    assert (422, "pool_ref") == (error.code, error.field)
    assert mentions in error.message


@pytest.mark.parametrize("value", [None, 5, ""], ids=["none", "integer", "empty"])
def test_resolve_ref_refuses_what_is_not_a_non_empty_string(value: Any) -> None:
    """resolve_ref refuses a ref that is not a non-empty string, naming the field (commands never
    get here: the schema, the place command and the VS actions refuse such values first)."""
    with pytest.raises(d.CommandError) as info:
        d.resolve_ref(fresh_view(), "pool", value, "admin", "pool_ref")
    assert (422, "pool_ref", "a reference to a pool must be a non-empty string") == (info.value.code, info.value.field, info.value.message)


def test_a_patch_ref_that_names_nothing_is_422_naming_the_item(world: World) -> None:
    """A ref added by PATCH is resolved like a PUT's: one that names nothing is 422 on its list item."""
    patch = {"add": {"health_monitor_refs": ["/api/healthmonitor?name=zz"]}}
    error = refusal(world.view, PatchObject("pool", world.pool, patch, "admin"))
    assert (422, "health_monitor_refs[0]") == (error.code, error.field)
    assert "'zz'" in error.message


# -- tenancy -------------------------------------------------------------------------------------

_ELSEWHERE: list[Any] = [
    pytest.param(lambda w: UpdateObject("pool", w.theirs, {"name": "theirs"}, "admin"), id="update-from-admin"),
    pytest.param(lambda w: PatchObject("pool", w.theirs, {"replace": {"default_server_port": 81}}, "admin"), id="patch-from-admin"),
    pytest.param(lambda w: DeleteObject("pool", w.theirs, "admin"), id="delete-from-admin"),
    pytest.param(lambda w: UpdateObject("pool", w.pool, {"name": "p"}, "t2"), id="update-of-admins"),
    pytest.param(lambda w: DeleteObject("pool", w.pool, "t2"), id="delete-of-admins"),
    pytest.param(lambda w: PlaceVirtualService(w.vs, [], "t2"), id="place"),
    pytest.param(lambda w: ActOnVirtualService(w.vs, "switchover", {}, "t2"), id="vs-action"),
    pytest.param(lambda w: DeleteObject("virtualservice", w.pool, "admin"), id="uuid-of-another-kind"),
    pytest.param(lambda w: DeleteObject("pool", _ABSENT_POOL, "admin"), id="absent"),
]


@pytest.mark.parametrize("command_of", _ELSEWHERE)
def test_another_tenants_object_is_not_found(world: World, command_of: Callable[[World], Any]) -> None:
    """Writing or acting on another tenant's object is 404, the same as for an object that does not exist."""
    command = command_of(world)
    error = refusal(world.view, command)
    uuid = getattr(command, "uuid", None) or command.vs_uuid
    assert (404, None) == (error.code, error.field)
    assert f"{uuid} does not exist" in error.message


@pytest.mark.parametrize("tenant", ["admin", "t1"])
@pytest.mark.parametrize(
    ("command_of", "field"),
    [
        pytest.param(lambda w, t: create_vs_with_pool_ref(w, f"/api/pool/{w.theirs}", t), "pool_ref", id="ref"),
        pytest.param(lambda w, t: CreateObject("pool", {"name": "q", "health_monitor_refs": [w.their_hm]}, t, "pool-q"),
                     "health_monitor_refs[0]", id="list-item"),
    ],
)
def test_a_ref_to_another_tenants_object_is_422_naming_the_field(world: World, command_of: Any, field: str, tenant: str) -> None:
    """A ref (or list item) naming another tenant's object by uuid is refused on that field."""
    error = refusal(world.view, command_of(world, tenant))
    assert (422, field) == (error.code, error.field)


def test_a_ref_from_the_provider_tenant_names_the_tenant_that_holds_the_object(world: World) -> None:
    """admin, the provider tenant, is told which tenant the object it referred to belongs to."""
    error = refusal(world.view, create_vs_with_pool_ref(world, f"/api/pool/{world.theirs}"))
    assert "pool 'theirs' belongs to tenant 't2', not 'admin'" == error.message


def test_a_ref_to_another_tenants_object_reads_as_a_missing_one(world: World) -> None:
    """A tenant referring to another (non-provider) tenant's object by uuid learns no more than for an absent uuid."""
    error = refusal(world.view, create_vs_with_pool_ref(world, f"/api/pool/{world.theirs}", "t1"))
    assert f"pool {world.theirs} does not exist" == error.message


# -- bodies and names ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command_of",
    [
        pytest.param(lambda w: CreateObject("pool", ["p"], "admin", "pool-q"), id="create"),
        pytest.param(lambda w: UpdateObject("pool", w.pool, "p", "admin"), id="update"),
        pytest.param(lambda w: RegisterServiceEngine(["se"], "serviceengine-x"), id="register-se"),
        pytest.param(lambda w: ActOnVirtualService(w.vs, "switchover", None, "admin"), id="vs-action"),
    ],
)
def test_a_body_that_is_not_an_object_is_400(world: World, command_of: Callable[[World], Command]) -> None:
    """A request body that is not a JSON object is 400."""
    error = refusal(world.view, command_of(world))
    assert (400, None, "the request body must be a JSON object") == (error.code, error.field, error.message)


@pytest.mark.parametrize(
    "command_of",
    [
        pytest.param(lambda w: CreateObject("pool", {"name": "q", "servers": 5}, "admin", "pool-q"), id="create"),
        pytest.param(lambda w: UpdateObject("pool", w.pool, {"name": "p", "servers": 5}, "admin"), id="update"),
    ],
)
def test_a_body_the_schema_refuses_is_422_naming_its_field(world: World, command_of: Callable[[World], Command]) -> None:
    """A field of the wrong type is 422 on that field."""
    error = refusal(world.view, command_of(world))
    assert (422, "servers") == (error.code, error.field)
    assert "expected array" in error.message


def test_two_spellings_of_one_object_in_a_unique_list_are_422(world: World) -> None:
    """A list of refs that names one object twice (by name and by path) is 422 on the second item."""
    refs = ["/api/healthmonitor?name=hm", f"/api/healthmonitor/{world.hm}"]
    error = refusal(world.view, CreateObject("pool", {"name": "q", "health_monitor_refs": refs}, "admin", "pool-q"))
    assert (422, "health_monitor_refs[1]") == (error.code, error.field)
    assert "duplicate of health_monitor_refs[0]" in error.message


def test_a_vip_the_local_cloud_cannot_serve_is_422_naming_its_address(world: World) -> None:
    """On the local cloud, a VIP outside 127.0.0.0/8 is 422 on that VIP's address."""
    body = {"name": "q", "vip": [{"ip_address": {"addr": "127.10.0.9"}}, {"ip_address": {"addr": "10.0.0.1"}}]}
    error = refusal(world.view, CreateObject("vsvip", body, "admin", "vsvip-q"))
    assert (422, "vip[1].ip_address.addr") == (error.code, error.field)
    assert "10.0.0.1 is not usable on the local cloud" in error.message


@pytest.mark.parametrize(
    "command_of",
    [
        pytest.param(lambda w: CreateObject("pool", {}, "admin", "pool-q"), id="create-missing"),
        pytest.param(lambda w: CreateObject("pool", {"name": "  "}, "admin", "pool-q"), id="create-blank"),
        pytest.param(lambda w: CreateObject("pool", {"name": 5}, "admin", "pool-q"), id="create-not-a-string"),
        pytest.param(lambda w: UpdateObject("pool", w.pool, {"name": ""}, "admin"), id="update-empty"),
        pytest.param(lambda w: RegisterServiceEngine({}, "serviceengine-x"), id="register-se-missing"),
    ],
)
def test_a_missing_or_blank_name_is_422(world: World, command_of: Callable[[World], Command]) -> None:
    """An object needs a non-empty name."""
    error = refusal(world.view, command_of(world))
    assert (422, "name", "name is required: a non-empty string") == (error.code, error.field, error.message)


def test_a_name_over_256_characters_is_422(world: World) -> None:
    """A name is at most 256 characters."""
    error = refusal(world.view, CreateObject("pool", {"name": "n" * 257}, "admin", "pool-q"))
    assert (422, "name", "name must be at most 256 characters") == (error.code, error.field, error.message)


# -- kinds, names and revisions ------------------------------------------------------------------


def test_an_unknown_kind_is_404(world: World) -> None:
    """Creating an object of a kind that does not exist is 404 naming the kind."""
    error = refusal(world.view, CreateObject("gadget", {"name": "g"}, "admin", "gadget-1"))
    assert (404, None, "unknown object kind 'gadget'") == (error.code, error.field, error.message)


def test_a_kind_the_cluster_creates_is_405_to_create(world: World) -> None:
    """Creating a kind clients may not create (service engines register) is 405 naming the kind."""
    error = refusal(world.view, CreateObject("serviceengine", {"name": "se"}, "admin", "serviceengine-1"))
    assert (405, None) == (error.code, error.field)
    assert "serviceengine objects are managed by the cluster" in error.message


def test_application_profiles_are_written_by_clients_and_built_ins_kept(world: World) -> None:
    """An HTTP application profile can be created and System-HTTP's http_profile changed; an
    http_profile field avictl does not enforce is 422 by name; a built-in profile cannot be deleted."""
    mine = create(world.view, "applicationprofile", {"name": "big-heads", "type": "APPLICATION_PROFILE_TYPE_HTTP",
                                                     "http_profile": {"client_max_header_size": 32}})
    assert {"client_max_header_size": 32, "client_max_request_size": 48, "max_header_count": 256, "client_header_timeout": 10000} == (
        world.view.get(mine).body["http_profile"])
    apply(world.view, PatchObject("applicationprofile", _SYSTEM_HTTP_PROFILE, {"replace": {"http_profile": {"max_header_count": 100}}}, "admin"))
    assert 100 == world.view.get(_SYSTEM_HTTP_PROFILE).body["http_profile"]["max_header_count"]
    error = refusal(world.view, PatchObject("applicationprofile", _SYSTEM_HTTP_PROFILE,
                                            {"replace": {"http_profile": {"client_body_timeout": 1}}}, "admin"))
    assert (422, "http_profile.client_body_timeout") == (error.code, error.field)
    error = refusal(world.view, DeleteObject("applicationprofile", _SYSTEM_HTTP_PROFILE, "admin"))
    assert (409, "applicationprofile 'System-HTTP' is built in and cannot be deleted") == (error.code, error.message)


def test_creating_a_name_the_tenant_has_is_409(world: World) -> None:
    """A second object of one kind and name in a tenant is 409 on name."""
    error = refusal(world.view, CreateObject("pool", {"name": "p"}, "admin", "pool-q"))
    assert (409, "name", "pool named 'p' already exists") == (error.code, error.field, error.message)


def test_renaming_onto_a_name_the_tenant_has_is_409(world: World) -> None:
    """Renaming an object to the name of another of its kind in the tenant is 409 on name."""
    create(world.view, "pool", {"name": "q"})
    error = refusal(world.view, UpdateObject("pool", world.pool, {"name": "q"}, "admin"))
    assert (409, "name", "pool named 'q' already exists") == (error.code, error.field, error.message)


def test_a_stale_last_modified_is_412(world: World) -> None:
    """A PUT whose _last_modified is not the object's revision is 412, naming both revisions."""
    modified = world.view.revision_of(world.pool)
    error = refusal(world.view, UpdateObject("pool", world.pool, {"name": "p"}, "admin", if_revision=modified + 7))
    assert (412, "_last_modified") == (error.code, error.field)
    assert f"pool 'p' was modified at revision {modified}, not {modified + 7}" == error.message


# -- patch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch", [["replace"], "replace", {}, {"replace": {}, "merge": {}}], ids=["list", "string", "empty", "unknown-op"])
def test_a_patch_of_the_wrong_shape_is_422(world: World, patch: Any) -> None:
    """A PATCH body is an object of add, replace, delete and/or json_patch, and nothing else."""
    error = refusal(world.view, PatchObject("pool", world.pool, patch, "admin"))
    assert (422, None) == (error.code, error.field)
    assert "add, replace, delete and/or json_patch" in error.message


def test_a_patch_whose_operations_are_all_null_is_422_on_no_field(world: World) -> None:
    """A patch with no operation given (all null) is a shape error on no field, like an empty patch."""
    error = refusal(world.view, PatchObject("pool", world.pool, {"add": None}, "admin"))
    assert (422, None) == (error.code, error.field)


@pytest.mark.parametrize(
    ("patch", "field", "mentions"),
    [
        pytest.param({"replace": {"nope": 1}}, "nope", "unknown field", id="unknown-field"),
        pytest.param({"json_patch": [{"op": "bogus", "path": "/name"}]}, "json_patch[0].op", "'bogus'", id="json-patch-op"),
        pytest.param({"replace": {"servers": 5}}, "servers", "expected array", id="result-refused"),
    ],
)
def test_a_patch_the_schema_refuses_is_422_naming_its_field(world: World, patch: Any, field: str, mentions: str) -> None:
    """A patch the schema cannot apply, or whose result it refuses, is 422 on the field at fault."""
    error = refusal(world.view, PatchObject("pool", world.pool, patch, "admin"))
    assert (422, field) == (error.code, error.field)
    assert mentions in error.message


# -- delete --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "name"), [("serviceenginegroup", "Default-Group"), ("cloud", "Default-Cloud"), ("healthmonitor", "System-HTTP")])
def test_deleting_a_built_in_object_is_409(world: World, kind: str, name: str) -> None:
    """A built-in object cannot be deleted (409 naming it)."""
    error = refusal(world.view, DeleteObject(kind, d.builtin_uuid(kind, name), "admin"))
    assert (409, None, f"{kind} {name!r} is built in and cannot be deleted") == (error.code, error.field, error.message)


def test_deleting_an_object_a_vs_refers_to_is_409_naming_the_vs(world: World) -> None:
    """An object still referred to cannot be deleted (409 naming who refers to it)."""
    error = refusal(world.view, DeleteObject("pool", world.pool, "admin"))
    assert (409, None, "pool 'p' is in use by virtualservice 'web'") == (error.code, error.field, error.message)


def test_deleting_an_se_a_vs_is_placed_on_is_409_naming_the_vs(world: World) -> None:
    """An SE a virtual service is placed on cannot be deleted (409 naming the VS)."""
    se = register_se(world.view, "se1")
    apply(world.view, PlaceVirtualService(world.vs, ["se1"], "admin"))
    error = refusal(world.view, DeleteObject("serviceengine", se, "admin"))
    assert (409, None, "serviceengine 'se1' is in use by virtualservice 'web'") == (error.code, error.field, error.message)


# -- one VIP address and port, one virtual service -----------------------------------------------


def _vs_update_onto_web(world: World) -> Command:
    other_vip = create(world.view, "vsvip", vip_body("other-vip", "127.10.0.2"))
    other = create(world.view, "virtualservice", vs_body("other", other_vip))
    return UpdateObject("virtualservice", other, vs_body("other", world.vsvip), "admin")


def _vsvip_update_onto_web(world: World) -> Command:
    other_vip = create(world.view, "vsvip", vip_body("other-vip", "127.10.0.2"))
    create(world.view, "virtualservice", vs_body("other", other_vip))
    return UpdateObject("vsvip", other_vip, vip_body("other-vip", "127.10.0.1"), "admin")


@pytest.mark.parametrize(
    ("command_of", "field"),
    [
        pytest.param(lambda w: CreateObject("virtualservice", vs_body("other", w.vsvip), "admin", "virtualservice-o"), "services[0].port",
                     id="vs-create"),
        pytest.param(_vs_update_onto_web, "services[0].port", id="vs-update"),
        pytest.param(_vsvip_update_onto_web, "vip", id="vsvip-update"),
    ],
)
def test_a_vip_address_and_port_another_vs_serves_is_409(world: World, command_of: Callable[[World], Command], field: str) -> None:
    """Listening where another VS does is 409 naming the address, the port and that VS."""
    error = refusal(world.view, command_of(world))
    assert (409, field, "127.10.0.1:80 is already served by virtualservice 'web'") == (error.code, error.field, error.message)


# -- SE registration -----------------------------------------------------------------------------


@pytest.mark.parametrize("uuid", [5, ["serviceengine-x"], {}], ids=["integer", "list", "object"])
def test_an_se_registering_with_a_uuid_that_is_not_a_string_is_422(world: World, uuid: Any) -> None:
    """The uuid an SE re-registers with must be a string."""
    error = refusal(world.view, RegisterServiceEngine({"name": "se1", "uuid": uuid}, "serviceengine-x"))
    assert (422, "uuid", "uuid must be the uuid this SE was registered with") == (error.code, error.field, error.message)


def test_a_deleted_se_registering_again_is_410(world: World) -> None:
    """An SE process whose record was deleted is fenced: registering under its uuid is 410 naming it."""
    se = register_se(world.view, "se1")
    apply(world.view, DeleteObject("serviceengine", se, "admin"))
    error = refusal(world.view, RegisterServiceEngine({"name": "se1", "uuid": se}, "serviceengine-x"))
    assert (410, "uuid") == (error.code, error.field)
    assert f"serviceengine 'se1' ({se}) was deleted" in error.message


def test_an_se_registering_with_a_body_the_schema_refuses_is_422_naming_its_field(world: World) -> None:
    """An SE's registration body is validated like any object's."""
    error = refusal(world.view, RegisterServiceEngine({"name": "se1", "enable_state": "SE_STATE_ASLEEP"}, "serviceengine-x"))
    assert (422, "enable_state") == (error.code, error.field)
    assert "'SE_STATE_ASLEEP'" in error.message


# -- commands that are never refused -------------------------------------------------------------


def test_ending_a_session_decides_that_it_ended_at_now(world: World) -> None:
    """EndSession is never refused: it decides SessionEnded, stamped with ``now``."""
    decision = decide(world.view, EndSession("s1", "alice", 200), 100.0)
    assert (SessionEnded(session_id="s1", user="alice", expires=200, at=100.0),) == decision.events


def test_ending_an_ended_session_decides_nothing(world: World) -> None:
    """Ending a session twice is not refused either: the second decision is empty."""
    apply(world.view, EndSession("s1", "alice", 200))
    assert () == decide(world.view, EndSession("s1", "alice", 200), 100.0).events


def test_a_value_that_is_not_a_command_is_a_type_error(world: World) -> None:
    """decide takes commands only; anything else is a programming error, not a refusal."""
    with pytest.raises(TypeError, match="not a command: dict"):
        decide(world.view, {"kind": "pool"}, 0.0)  # type: ignore[arg-type]


def test_a_leader_decision_is_committed_as_it_is(world: World) -> None:
    """CommitDecision is never refused by decide: its preconditions guard it at apply."""
    decision = d.Decision((SessionEnded(session_id="s", user="u", expires=1, at=0.0),), (), "x")
    assert decision is decide(world.view, CommitDecision(decision), 0.0)


# -- a refusal changes nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command_of",
    [
        pytest.param(lambda w: create_vs_with_pool_ref(w, "/api/pool?name=nope"), id="create"),
        pytest.param(lambda w: UpdateObject("pool", w.pool, {"name": "p", "servers": 5}, "admin"), id="update"),
        pytest.param(lambda w: PatchObject("pool", w.pool, {"replace": {"servers": [{"ip": {"addr": "x"}}]}}, "admin"), id="patch"),
        pytest.param(lambda w: DeleteObject("pool", w.pool, "admin"), id="delete"),
        pytest.param(lambda w: RegisterServiceEngine({"name": "se1", "enable_state": "nope"}, "serviceengine-x"), id="register-se"),
    ],
)
def test_a_refused_object_command_leaves_the_view_unchanged(world: World, command_of: Callable[[World], Command]) -> None:
    """A refusal is only an answer: the view is byte for byte what it was."""
    before = world.view.to_snapshot()
    refusal(world.view, command_of(world))
    assert before == world.view.to_snapshot()
