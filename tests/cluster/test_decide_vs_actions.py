"""What ``decide`` refuses when a virtual service is pinned to SEs or acted on (``scaleout``,
``scalein``, ``migrate``, ``switchover``): each refusal with its code, field and the names it
must mention; and that a refusal changes nothing."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest

from cluster import decide as d
from cluster.commands import ActOnVirtualService, PatchObject, PlaceVirtualService
from cluster.views import ConfigView
from storage.events import ServiceEngineStatusChanged
from tests.cluster._decide_world import apply, commit, create, fresh_view, refusal, register_se


class World(NamedTuple):
    """Groups: ``pair`` (active/active, 1 to 3 SEs a VS) with SEs a, b, c; ``legacy``
    (active/standby) with l1, l2; Default-Group (N+M) with d1, d2, d3. Virtual services: ``aa``
    on a, ``ls`` on l1 and l2, ``nm`` on d1, and ``idle`` (Default-Group) on nothing."""

    view: ConfigView
    se: dict[str, str]  # SE name -> uuid
    aa: str
    ls: str
    nm: str
    idle: str


def _vs(view: ConfigView, name: str, addr: str, group: str) -> str:
    vip = create(view, "vsvip", {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": addr}}]})
    body = {"name": name, "services": [{"port": 80}], "vsvip_ref": f"/api/vsvip/{vip}", "se_group_ref": f"/api/serviceenginegroup?name={group}"}
    return create(view, "virtualservice", body)


@pytest.fixture()
def world() -> World:
    view = fresh_view()
    create(view, "serviceenginegroup", {"name": "pair", "ha_mode": "HA_MODE_SHARED_PAIR", "min_scaleout_per_vs": 1, "max_scaleout_per_vs": 3})
    create(view, "serviceenginegroup", {"name": "legacy", "ha_mode": "HA_MODE_LEGACY_ACTIVE_STANDBY"})
    groups = {"a": "pair", "b": "pair", "c": "pair", "l1": "legacy", "l2": "legacy", "d1": "Default-Group", "d2": "Default-Group", "d3": "Default-Group"}
    se = {name: register_se(view, name, group) for name, group in groups.items()}
    world = World(view, se, _vs(view, "aa", "127.10.0.1", "pair"), _vs(view, "ls", "127.10.0.2", "legacy"),
                  _vs(view, "nm", "127.10.0.3", "Default-Group"), _vs(view, "idle", "127.10.0.4", "Default-Group"))
    place(world, world.aa, "a")
    place(world, world.ls, "l1", "l2")
    place(world, world.nm, "d1")
    return world


def place(world: World, vs: str, *ses: str) -> None:
    apply(world.view, PlaceVirtualService(vs, list(ses), "admin"))


def mark_down(world: World, se: str, reason: str) -> None:
    commit(world.view, (ServiceEngineStatusChanged(se_uuid=world.se[se], name=se, status="down", reason=reason),))


def set_enable_state(world: World, se: str, state: str) -> None:
    apply(world.view, PatchObject("serviceengine", world.se[se], {"replace": {"enable_state": state}}, "admin"))


def act(world: World, vs: str, action: str, **body: Any) -> d.CommandError:
    return refusal(world.view, ActOnVirtualService(vs, action, body, "admin"))


# -- pinning a VS to SEs -------------------------------------------------------------------------


@pytest.mark.parametrize("se_refs", ["d1", ["d1", 5], None], ids=["string", "item-not-a-string", "none"])
def test_se_refs_that_are_not_a_list_of_strings_are_422(world: World, se_refs: Any) -> None:
    """A placement is a list of SE references."""
    error = refusal(world.view, PlaceVirtualService(world.idle, se_refs, "admin"))
    assert (422, "serviceengine_refs", "serviceengine_refs must be a list of references") == (error.code, error.field, error.message)


def test_se_refs_naming_one_se_twice_are_422(world: World) -> None:
    """Two spellings of one SE (by name, by path) in a placement are 422."""
    error = refusal(world.view, PlaceVirtualService(world.idle, ["d1", f"/api/serviceengine/{world.se['d1']}"], "admin"))
    assert (422, "serviceengine_refs", "serviceengine_refs names an SE twice") == (error.code, error.field, error.message)


def test_an_se_ref_naming_no_se_is_422_naming_the_item(world: World) -> None:
    """An SE name that is not registered is 422 on its item, naming it."""
    error = refusal(world.view, PlaceVirtualService(world.idle, ["d1", "ghost"], "admin"))
    assert (422, "serviceengine_refs[1]") == (error.code, error.field)
    assert "serviceengine named 'ghost' does not exist" == error.message


def test_an_empty_se_ref_is_422_saying_it_must_not_be_empty(world: World) -> None:
    """An empty SE ref is refused as empty, not as a reference the client never wrote."""
    error = refusal(world.view, PlaceVirtualService(world.idle, [""], "admin"))
    assert (422, "serviceengine_refs[0]", "a reference to a serviceengine must be a non-empty string") == (error.code, error.field, error.message)


# -- any action ----------------------------------------------------------------------------------


def test_an_unknown_action_is_404_naming_it(world: World) -> None:
    """Only scaleout, scalein, migrate and switchover exist."""
    error = act(world, world.nm, "teleport")
    assert (404, None, "unknown virtualservice action 'teleport'") == (error.code, error.field, error.message)


@pytest.mark.parametrize("action", d.VS_ACTIONS)
def test_acting_on_a_vs_that_is_not_placed_is_409(world: World, action: str) -> None:
    """Every action moves a placed VS; one placed nowhere is 409 naming it."""
    error = act(world, world.idle, action, to_se_ref="d2")
    assert (409, None, "virtualservice 'idle' is not placed on any service engine yet") == (error.code, error.field, error.message)


@pytest.mark.parametrize(
    ("action", "field", "body"),
    [
        pytest.param("scaleout", "to_se_ref", {"to_se_ref": 7}, id="scaleout-to"),
        pytest.param("scalein", "se_ref", {"se_ref": ""}, id="scalein-se"),
        pytest.param("migrate", "to_se_ref", {"to_se_ref": ["d2"]}, id="migrate-to"),
        pytest.param("migrate", "from_se_ref", {"to_se_ref": "d2", "from_se_ref": 7}, id="migrate-from"),
    ],
)
def test_an_se_ref_of_an_action_that_is_not_a_string_is_422(world: World, action: str, field: str, body: dict[str, Any]) -> None:
    """An action's SE ref must be a non-empty string."""
    place(world, world.aa, "a", "b")
    error = act(world, world.aa if action.startswith("scale") else world.nm, action, **body)
    assert (422, field, f"{field} must be a reference to a serviceengine") == (error.code, error.field, error.message)


# -- the target SE must be usable ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("vs", "action", "se", "group"),
    [("aa", "scaleout", "d2", "pair"), ("nm", "migrate", "a", "Default-Group")],
    ids=["scaleout", "migrate"],
)
def test_a_target_se_of_another_group_is_409(world: World, vs: str, action: str, se: str, group: str) -> None:
    """A VS only moves to an SE of its own group."""
    error = act(world, getattr(world, vs), action, to_se_ref=se)
    assert (409, "to_se_ref", f"serviceengine {se!r} is not in SE group {group!r}") == (error.code, error.field, error.message)


@pytest.mark.parametrize(("vs", "action", "se"), [("aa", "scaleout", "b"), ("nm", "migrate", "d2")], ids=["scaleout", "migrate"])
def test_a_target_se_that_is_down_is_409_saying_why(world: World, vs: str, action: str, se: str) -> None:
    """A VS does not move to an SE the leader declared down; the refusal gives the leader's reason."""
    mark_down(world, se, "missed 3 reports")
    error = act(world, getattr(world, vs), action, to_se_ref=se)
    assert (409, "to_se_ref", f"serviceengine {se!r} is down: missed 3 reports") == (error.code, error.field, error.message)


@pytest.mark.parametrize("state", ["SE_STATE_DISABLED", "SE_STATE_DISABLED_FOR_PLACEMENT"])
def test_a_target_se_that_is_disabled_is_409_naming_its_state(world: World, state: str) -> None:
    """A VS does not move to an SE that is disabled (for placement or altogether)."""
    set_enable_state(world, "d2", state)
    error = act(world, world.nm, "migrate", to_se_ref="d2")
    assert (409, "to_se_ref", f"serviceengine 'd2' is {state}") == (error.code, error.field, error.message)


@pytest.mark.parametrize(("vs", "action", "se"), [("aa", "scaleout", "a"), ("nm", "migrate", "d1")], ids=["scaleout", "migrate"])
def test_a_target_se_the_vs_runs_on_is_409(world: World, vs: str, action: str, se: str) -> None:
    """A VS does not move to an SE it already runs on."""
    error = act(world, getattr(world, vs), action, to_se_ref=se)
    assert (409, "to_se_ref") == (error.code, error.field)
    assert f"already runs on {se!r}" in error.message


# -- switchover ----------------------------------------------------------------------------------


def test_switchover_of_a_vs_on_one_se_is_409(world: World) -> None:
    """A VS on one SE has no standby to switch to (409 naming the SE)."""
    error = act(world, world.nm, "switchover")
    assert (409, None, "virtualservice 'nm' runs on one SE (d1); there is no standby to switch to") == (error.code, error.field, error.message)


# -- scaleout and scalein ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vs", "action", "group", "mode"),
    [
        ("nm", "scaleout", "Default-Group", "HA_MODE_SHARED"),
        ("nm", "scalein", "Default-Group", "HA_MODE_SHARED"),
        ("ls", "scaleout", "legacy", "HA_MODE_LEGACY_ACTIVE_STANDBY"),
        ("ls", "scalein", "legacy", "HA_MODE_LEGACY_ACTIVE_STANDBY"),
    ],
)
def test_scaling_outside_an_active_active_group_is_409_naming_group_and_mode(world: World, vs: str, action: str, group: str, mode: str) -> None:
    """scaleout and scalein need HA_MODE_SHARED_PAIR; the refusal names the VS's group and its mode."""
    error = act(world, getattr(world, vs), action)
    assert (409, None) == (error.code, error.field)
    assert f"{action} needs an active/active SE group (ha_mode HA_MODE_SHARED_PAIR); {group!r} is {mode}" == error.message


def test_scaleout_at_max_scaleout_per_vs_is_409(world: World) -> None:
    """A VS on max_scaleout_per_vs SEs does not scale out."""
    place(world, world.aa, "a", "b", "c")
    error = act(world, world.aa, "scaleout")
    assert (409, None, "virtualservice 'aa' already runs on max_scaleout_per_vs=3 SEs") == (error.code, error.field, error.message)


def test_scaleout_with_no_free_se_in_the_group_is_409(world: World) -> None:
    """Scaling out needs an SE of the group that is up, enabled and not running the VS."""
    mark_down(world, "b", "missed 3 reports")
    set_enable_state(world, "c", "SE_STATE_DISABLED_FOR_PLACEMENT")
    error = act(world, world.aa, "scaleout")
    assert (409, None, "no free service engine in SE group 'pair' to scale 'aa' out to") == (error.code, error.field, error.message)


def test_scalein_at_min_scaleout_per_vs_is_409(world: World) -> None:
    """A VS on min_scaleout_per_vs SEs does not scale in."""
    error = act(world, world.aa, "scalein")
    assert (409, None, "virtualservice 'aa' runs on min_scaleout_per_vs=1 SEs; it cannot scale in") == (error.code, error.field, error.message)


def test_scalein_from_an_se_the_vs_does_not_run_on_is_409(world: World) -> None:
    """scalein's se_ref must be one of the VS's SEs."""
    place(world, world.aa, "a", "b")
    error = act(world, world.aa, "scalein", se_ref="c")
    assert (409, "se_ref", "virtualservice 'aa' does not run on 'c'") == (error.code, error.field, error.message)


# -- migrate -------------------------------------------------------------------------------------


def test_migrating_an_active_standby_vs_is_409(world: World) -> None:
    """An active/standby VS moves with its pair: migrate is refused, pointing to switchover."""
    error = act(world, world.ls, "migrate", to_se_ref="d2")
    assert (409, None, "an active/standby VS moves with its pair; use switchover") == (error.code, error.field, error.message)


def test_migrate_without_a_target_is_422(world: World) -> None:
    """migrate needs to_se_ref."""
    error = act(world, world.nm, "migrate")
    assert (422, "to_se_ref", "migrate needs to_se_ref") == (error.code, error.field, error.message)


def test_migrating_from_an_se_the_vs_does_not_run_on_is_409(world: World) -> None:
    """migrate's from_se_ref must be one of the VS's SEs."""
    error = act(world, world.nm, "migrate", to_se_ref="d2", from_se_ref="d3")
    assert (409, "from_se_ref", "virtualservice 'nm' does not run on 'd3'") == (error.code, error.field, error.message)


def test_an_action_target_naming_no_se_is_422_naming_the_field(world: World) -> None:
    """An action's SE ref that names no SE is 422 on that field."""
    error = act(world, world.nm, "migrate", to_se_ref="ghost")
    assert (422, "to_se_ref", "serviceengine named 'ghost' does not exist") == (error.code, error.field, error.message)


# -- a refusal changes nothing -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(lambda w: PlaceVirtualService(w.idle, ["d1", "d1"], "admin"), id="place"),
        pytest.param(lambda w: ActOnVirtualService(w.nm, "migrate", {"to_se_ref": "d1"}, "admin"), id="vs-action"),
    ],
)
def test_a_refused_vs_command_leaves_the_view_unchanged(world: World, command: Any) -> None:
    """A refusal is only an answer: the view is byte for byte what it was."""
    before = world.view.to_snapshot()
    refusal(world.view, command(world))
    assert before == world.view.to_snapshot()


def test_the_world_is_as_described(world: World) -> None:
    """The fixture places aa, ls and nm as its docstring says (so each refusal above is the one named)."""
    names = {uuid: name for name, uuid in world.se.items()}
    placed = {vs: tuple(names[u] for u in world.view.placement(getattr(world, vs))) for vs in ("aa", "ls", "nm", "idle")}
    assert {"aa": ("a",), "ls": ("l1", "l2"), "nm": ("d1",), "idle": ()} == placed
