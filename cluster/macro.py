"""The macro API's decisions: a hierarchy of objects created or deleted in one command.

``POST /api/macro {"model_name": "VirtualService", "data": {...}}`` creates the top object and,
for every ref field ``x_ref`` given as ``x_ref_data`` (an object) or ``x_refs`` given as
``x_refs_data`` (a list of objects), the objects it refers to, depth first, as the real product
does. Everything is one command: one log entry, all or nothing (a refusal anywhere refuses the
whole hierarchy, naming the field by its path in the request). ``data`` may also be a list of
such hierarchies (an avictl extension, for bulk creation).

``DELETE /api/macro`` with the same shape deletes the top object (by ``uuid`` or ``name``) and
the objects named in its ``*_data`` fields, skipping built-in objects and objects still used by
something outside the hierarchy, as the real product does.

Pure: takes a view and returns a :class:`~cluster.decide.Decision`.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from cluster import schema
from cluster.decide import CommandError, Decision, decide_create, new_uuid
from cluster.views import ConfigView, Endpoint, Rejected, StoredObject, ref_uuid, vs_endpoints
from storage.events import ObjectCreated, ObjectDeleted, Precondition

__all__ = ["MAX_MACRO_OBJECTS", "decide_macro_create", "decide_macro_delete", "macro_kind"]

# Bounds the work and the log entry of one request (a bulk import splits into several requests).
MAX_MACRO_OBJECTS = 1000
_MAX_DEPTH = 6
_DATA_SUFFIX = "_data"

_KIND_OF_MODEL = {spec.title.lower(): kind for kind, spec in schema.KINDS.items()}


def macro_kind(model_name: Any) -> str:
    """The object kind a macro's ``model_name`` names (``VirtualService`` or ``virtualservice``)."""
    if not isinstance(model_name, str) or not model_name:
        raise CommandError(422, "model_name is required: the top object's type, e.g. VirtualService", "model_name")
    kind = _KIND_OF_MODEL.get(model_name.lower())
    if kind is None:
        known = ", ".join(sorted(spec.title for spec in schema.KINDS.values()))
        raise CommandError(422, f"unknown model_name {model_name!r}; known: {known}", "model_name")
    return kind


def _items(data: Any) -> tuple[list[Any], Callable[[int], str]]:
    if isinstance(data, list):
        if not data:
            raise CommandError(422, "data must hold at least one object", "data")
        return data, lambda i: f"data[{i}]"
    if data is None:
        raise CommandError(422, "data is required: the top object, with *_ref_data for the objects it creates", "data")
    return [data], lambda _i: "data"


def _join(path: str, name: Optional[str]) -> str:
    if not name:
        return path
    return f"{path}{name}" if name.startswith("[") else f"{path}.{name}"


def _nested_ref(kind: str, key: str, path: str) -> schema.Field:
    """The ref field ``key`` (without ``_data``) of ``kind``, or a 422 naming the field."""
    field_name = key[: -len(_DATA_SUFFIX)]
    f = schema.KINDS[kind].fields.get(field_name)
    if f is not None and (f.type == "ref" or (f.type == "list" and f.item is not None and f.item.type == "ref")):
        return f
    raise CommandError(422, f"unknown field: {field_name} is not a reference field of {kind}", _join(path, key))


class _PendingView:
    """The view as the objects created earlier in the same macro leave it (to resolve refs to them)."""

    def __init__(self, view: ConfigView) -> None:
        self._view = view
        self._by_uuid: dict[str, StoredObject] = {}
        self._by_name: dict[tuple[str, str, str], str] = {}
        self._endpoints: dict[Endpoint, StoredObject] = {}  # VIP address and port -> pending VS

    def add(self, event: ObjectCreated) -> None:
        # created/modified 0 would read as "built in"; a pending object is newer than the view.
        pending = self._view.revision + 1
        obj = StoredObject(event.kind, event.uuid, event.name, event.tenant, event.body, pending, pending)
        self._by_uuid[event.uuid] = obj
        self._by_name[(event.kind, event.tenant, event.name)] = event.uuid
        if event.kind == "virtualservice":
            vsvip = self.get(ref_uuid(event.body.get("vsvip_ref") or ""))
            for endpoint in vs_endpoints(event.body, vsvip.body if vsvip else None):
                self._endpoints[endpoint] = obj

    def endpoint_conflict(self, vs_uuid: str, vs_body: dict[str, Any], vsvip_body: Optional[dict[str, Any]]) -> Optional[Rejected]:
        """:meth:`ConfigView.endpoint_conflict`, counting the VSs created earlier in this macro."""
        for (addr, port), field in vs_endpoints(vs_body, vsvip_body).items():
            other = self._endpoints.get((addr, port))
            if other is not None and other.uuid != vs_uuid:
                return Rejected(409, f"{addr}:{port} is already served by virtualservice {other.name!r}", field)
        return self._view.endpoint_conflict(vs_uuid, vs_body, vsvip_body)

    def get(self, uuid: str) -> Optional[StoredObject]:
        return self._by_uuid.get(uuid) or self._view.get(uuid)

    def by_name(self, kind: str, name: str, tenant: str = "admin") -> Optional[StoredObject]:
        uuid = self._by_name.get((kind, tenant, name))
        return self._by_uuid[uuid] if uuid is not None else self._view.by_name(kind, name, tenant)

    def __getattr__(self, name: str) -> Any:
        # Only lookups are answered with the pending objects; anything else would silently see the
        # view as it was before the macro, so it is refused rather than delegated.
        raise AttributeError(f"a macro decision may only look objects up (get, by_name), not use {name!r}")


def decide_macro_create(
    view: ConfigView, model_name: Any, data: Any, *, tenant: str, make_uuid: Callable[[str], str] = new_uuid
) -> Decision:
    """Create a hierarchy (or a list of them): one decision holding every ``ObjectCreated``, children first."""
    kind = macro_kind(model_name)
    items, path_of = _items(data)
    pending = _PendingView(view)
    events: list[Any] = []
    tops = [_create(pending, kind, item, tenant, path_of(i), events, make_uuid, 0) for i, item in enumerate(items)]
    return Decision(tuple(events), (), tops[0])


def _create(
    pending: _PendingView,
    kind: str,
    body: Any,
    tenant: str,
    path: str,
    events: list[Any],
    make_uuid: Callable[[str], str],
    depth: int,
) -> str:
    if depth > _MAX_DEPTH:
        raise CommandError(422, f"objects nested more than {_MAX_DEPTH} levels deep", path)
    if not isinstance(body, dict):
        raise CommandError(422, f"expected a {kind} object", path)
    body = dict(body)
    for key in [k for k in body if isinstance(k, str) and k.endswith(_DATA_SUFFIX)]:
        nested = body.pop(key)
        if nested is None:
            continue
        f = _nested_ref(kind, key, path)
        field_name = key[: -len(_DATA_SUFFIX)]
        given = [field_name] + [n for n, a in schema.KINDS[kind].fields.items() if a.alias_for == field_name]
        for other in given:
            if body.get(other) not in (None, [], ""):
                raise CommandError(422, f"give either {other} or {key}, not both", _join(path, key))
        if f.type == "ref":
            assert f.ref is not None
            uuid = _create(pending, f.ref, nested, tenant, _join(path, key), events, make_uuid, depth + 1)
            body[field_name] = f"/api/{f.ref}/{uuid}"
        else:
            assert f.item is not None and f.item.ref is not None
            if not isinstance(nested, list):
                raise CommandError(422, f"expected a list of {f.item.ref} objects", _join(path, key))
            target = f.item.ref
            body[field_name] = [
                f"/api/{target}/{_create(pending, target, sub, tenant, f'{_join(path, key)}[{j}]', events, make_uuid, depth + 1)}"
                for j, sub in enumerate(nested)
            ]
    uuid = make_uuid(kind)
    try:
        decision = decide_create(pending, kind, body, tenant=tenant, uuid=uuid)  # type: ignore[arg-type]
    except CommandError as exc:
        raise CommandError(exc.code, exc.message, _join(path, exc.field)) from None
    for event in decision.events:
        pending.add(event)
    events.extend(decision.events)
    if len(events) > MAX_MACRO_OBJECTS:
        raise CommandError(413, f"a macro may create at most {MAX_MACRO_OBJECTS} objects; split the request", "data")
    return uuid


def decide_macro_delete(view: ConfigView, model_name: Any, data: Any, *, tenant: str) -> Decision:
    """Delete a hierarchy: the top objects (404 when absent, 409 when used from outside) and the
    objects named in their ``*_data`` fields that are neither built in nor used from outside."""
    kind = macro_kind(model_name)
    items, path_of = _items(data)
    found: list[tuple[StoredObject, bool, str]] = []  # (object, is top, request path), parents first
    for i, item in enumerate(items):
        _collect(view, kind, item, tenant, path_of(i), True, found, 0)
    named: dict[str, tuple[StoredObject, bool, str]] = {}
    for obj, top, path in found:
        if obj.uuid not in named or top:
            named[obj.uuid] = (obj, top, path)
    # The deletable set is a fixpoint, so the order of the request does not matter: a named object
    # goes when it is not built in and everything that uses it goes too. Start from all of them
    # and drop, until nothing changes, those used by an object that stays.
    deleting = {u for u, (obj, _top, _path) in named.items() if obj.created != 0}
    changed = True
    while changed:
        changed = False
        for uuid in list(deleting):
            if (view.referrers(uuid) | view.placed_on(uuid)) - deleting:
                deleting.discard(uuid)
                changed = True
    for uuid, (obj, top, path) in named.items():
        if top and uuid not in deleting:
            if obj.created == 0:
                raise CommandError(409, f"{obj.kind} {obj.name!r} is built in and cannot be deleted", path)
            outside = (view.referrers(uuid) | view.placed_on(uuid)) - deleting
            names = sorted(f"{u.kind} {u.name!r}" for u in (view.get(x) for x in outside) if u is not None)
            raise CommandError(409, f"{obj.kind} {obj.name!r} is in use by {', '.join(names)}", path)
    # Referrers before what they refer to, so each delete is valid at apply in the order given.
    ordered: list[StoredObject] = []
    placed: set[str] = set()

    def place(uuid: str) -> None:
        if uuid in placed:
            return
        placed.add(uuid)
        for user in sorted(view.referrers(uuid) & deleting):
            place(user)
        ordered.append(named[uuid][0])

    for uuid in named:
        if uuid in deleting:
            place(uuid)
    events = [ObjectDeleted(kind=o.kind, uuid=o.uuid, name=o.name, tenant=o.tenant) for o in ordered]
    preconditions = [Precondition(o.uuid, o.modified) for o in ordered]
    return Decision(tuple(events), tuple(preconditions), found[0][0].uuid if found else "")


def _collect(
    view: ConfigView, kind: str, body: Any, tenant: str, path: str, top: bool,
    found: list[tuple[StoredObject, bool, str]], depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise CommandError(422, f"objects nested more than {_MAX_DEPTH} levels deep", path)
    if not isinstance(body, dict):
        raise CommandError(422, f"expected a {kind} object (its name or uuid)", path)
    obj: Optional[StoredObject] = None
    uuid, name = body.get("uuid"), body.get("name")
    if isinstance(uuid, str) and uuid:
        obj = view.get(uuid)
        obj = obj if obj is not None and obj.kind == kind and obj.tenant == tenant else None
    elif isinstance(name, str) and name:
        obj = view.by_name(kind, name, tenant)
    else:
        raise CommandError(422, f"name or uuid is required to find the {kind}", path)
    if obj is None:
        if top:
            raise CommandError(404, f"{kind} {uuid or name!r} does not exist", path)
        return
    found.append((obj, top, path))
    for key in [k for k in body if isinstance(k, str) and k.endswith(_DATA_SUFFIX)]:
        nested = body[key]
        if nested is None:
            continue
        f = _nested_ref(kind, key, path)
        if f.type == "ref":
            assert f.ref is not None
            _collect(view, f.ref, nested, tenant, _join(path, key), False, found, depth + 1)
        else:
            assert f.item is not None and f.item.ref is not None
            if not isinstance(nested, list):
                raise CommandError(422, f"expected a list of {f.item.ref} objects", _join(path, key))
            for j, sub in enumerate(nested):
                _collect(view, f.item.ref, sub, tenant, f"{_join(path, key)}[{j}]", False, found, depth + 1)
