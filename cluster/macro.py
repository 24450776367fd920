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
from cluster.decide import SERVER_FIELDS, CommandError, Decision, decide_create, decide_update, new_uuid
from cluster.sealing import Sealer
from cluster.views import ConfigView, Endpoint, Rejected, StoredObject, ref_uuid, vs_endpoints
from storage.events import ObjectCreated, ObjectDeleted, ObjectUpdated, Precondition

__all__ = ["MAX_MACRO_OBJECTS", "decide_macro_apply", "decide_macro_create", "decide_macro_delete", "macro_kind"]

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


def _items(model_name: Any, data: Any) -> list[tuple[str, Any, str]]:
    """``(kind, object, request path)`` of each top object. In a list, an item may name its own
    ``model_name`` (an avictl extension: ``avictl apply`` sends objects of several kinds at once);
    the request's ``model_name`` is the default."""
    if data is None:
        raise CommandError(422, "data is required: the top object, with *_ref_data for the objects it creates", "data")
    if not isinstance(data, list):
        return [(macro_kind(model_name), data, "data")]
    if not data:
        raise CommandError(422, "data must hold at least one object", "data")
    out = []
    default: Optional[str] = None
    for i, item in enumerate(data):
        own = item.get("model_name") if type(item) is dict else None
        if own is not None:
            try:
                kind = macro_kind(own)
            except CommandError as exc:
                raise CommandError(exc.code, exc.message, f"data[{i}].model_name") from None
            item = {k: v for k, v in item.items() if k != "model_name"}
        else:
            kind = default = default or macro_kind(model_name)
        out.append((kind, item, f"data[{i}]"))
    return out


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

    def add(self, event: ObjectCreated | ObjectUpdated) -> None:
        # created/modified 0 would read as "built in"; a pending object is newer than the view.
        pending = self._view.revision + 1
        before = self.get(event.uuid) if isinstance(event, ObjectUpdated) else None
        if before is not None:
            self._by_name.pop((before.kind, before.tenant, before.name), None)
        created = before.created if before is not None else pending
        obj = StoredObject(event.kind, event.uuid, event.name, event.tenant, event.body, created, pending)
        self._by_uuid[event.uuid] = obj
        self._by_name[(event.kind, event.tenant, event.name)] = event.uuid
        if event.kind == "virtualservice":
            for endpoint in [e for e, holder in self._endpoints.items() if holder.uuid == event.uuid]:
                del self._endpoints[endpoint]
            vsvip = self.get(ref_uuid(event.body.get("vsvip_ref") or ""))
            for endpoint in vs_endpoints(event.body, vsvip.body if vsvip else None):
                self._endpoints[endpoint] = obj

    def endpoint_conflict(self, vs_uuid: str, vs_body: dict[str, Any], vsvip_body: Optional[dict[str, Any]]) -> Optional[Rejected]:
        """:meth:`ConfigView.endpoint_conflict`, counting the VSs created earlier in this macro."""
        for (addr, port), field in vs_endpoints(vs_body, vsvip_body).items():
            other = self._endpoints.get((addr, port))
            if other is not None and other.uuid != vs_uuid:
                return Rejected(409, f"{addr}:{port} is already served by virtualservice {other.name!r}", field)
            # A committed VS this macro changed holds what its pending version says, not this.
            committed = {u for u in self._view.endpoint_holders(addr, port) if u != vs_uuid and u not in self._by_uuid}
            if committed:
                names = ", ".join(sorted(repr(o.name) if (o := self._view.get(u)) else u for u in committed))
                return Rejected(409, f"{addr}:{port} is already served by virtualservice {names}", field)
        return None

    def get(self, uuid: str) -> Optional[StoredObject]:
        return self._by_uuid.get(uuid) or self._view.get(uuid)

    def by_name(self, kind: str, name: str, tenant: str = "admin") -> Optional[StoredObject]:
        uuid = self._by_name.get((kind, tenant, name))
        if uuid is not None:
            return self._by_uuid[uuid]
        found = self._view.by_name(kind, name, tenant)
        # An object renamed earlier in this macro no longer answers to its old name.
        return None if found is not None and found.uuid in self._by_uuid else found

    def list(self, kind: str) -> list[StoredObject]:
        """The objects of ``kind``: the committed ones as this macro left them, and its new ones."""
        committed = [self._by_uuid.get(o.uuid, o) for o in self._view.list(kind)]
        known = {o.uuid for o in committed}
        return committed + [o for o in self._by_uuid.values() if o.kind == kind and o.uuid not in known]

    def referrers(self, uuid: str) -> set[str]:
        """The committed view's referrers (what this macro adds refers through its own events,
        checked as each is decided)."""
        return self._view.referrers(uuid)

    def __getattr__(self, name: str) -> Any:
        # Only lookups are answered with the pending objects; anything else would silently see the
        # view as it was before the macro, so it is refused rather than delegated.
        raise AttributeError(f"a macro decision may only look objects up (get, by_name), not use {name!r}")


def decide_macro_create(
    view: ConfigView, model_name: Any, data: Any, *, tenant: str, make_uuid: Callable[[str], str] = new_uuid,
    seal: Optional[Sealer] = None,
) -> Decision:
    """Create a hierarchy (or a list of them): one decision holding every ``ObjectCreated``, children first."""
    return _decide_hierarchy(view, model_name, data, tenant, make_uuid, update=False, seal=seal)


def decide_macro_apply(
    view: ConfigView, model_name: Any, data: Any, *, tenant: str, make_uuid: Callable[[str], str] = new_uuid,
    seal: Optional[Sealer] = None,
) -> Decision:
    """``PUT /api/macro``: make a hierarchy (or a list of them) so, in one decision. Each object,
    found by name in the tenant, is created when absent; when present, the fields given are laid
    over the stored ones (objects merge key by key, lists and scalars replace; fields not given
    are kept), and it is updated only if that changes it. The decision's ``report`` lists every
    object named, in request order (children first), as created, updated (with the fields that
    change, as stored) or unchanged."""
    return _decide_hierarchy(view, model_name, data, tenant, make_uuid, update=True, seal=seal)


def _decide_hierarchy(
    view: ConfigView, model_name: Any, data: Any, tenant: str, make_uuid: Callable[[str], str], *, update: bool,
    seal: Optional[Sealer] = None,
) -> Decision:
    work = _Work(_PendingView(view), tenant, make_uuid, update, seal)
    tops = [work.place(kind, item, path, 0) for kind, item, path in _items(model_name, data)]
    return Decision(tuple(work.events), tuple(work.preconditions), tops[0], report=tuple(work.report))


class _Work:
    """One hierarchy decision in progress: the events so far, and what each named object became."""

    def __init__(self, pending: _PendingView, tenant: str, make_uuid: Callable[[str], str], update: bool,
                 seal: Optional[Sealer] = None) -> None:
        self.seal = seal
        self.pending = pending
        self.tenant = tenant
        self.make_uuid = make_uuid
        self.update = update
        self.events: list[Any] = []
        self.preconditions: list[Precondition] = []
        self.report: list[dict[str, Any]] = []

    def place(self, kind: str, body: Any, path: str, depth: int) -> str:
        """Decide one object, its ``*_data`` children first; returns its uuid."""
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
                body[field_name] = f"/api/{f.ref}/{self.place(f.ref, nested, _join(path, key), depth + 1)}"
            else:
                assert f.item is not None and f.item.ref is not None
                if not isinstance(nested, list):
                    raise CommandError(422, f"expected a list of {f.item.ref} objects", _join(path, key))
                target = f.item.ref
                body[field_name] = [
                    f"/api/{target}/{self.place(target, sub, f'{_join(path, key)}[{j}]', depth + 1)}" for j, sub in enumerate(nested)
                ]
        name = body.get("name")
        existing = self.pending.by_name(kind, name, self.tenant) if self.update and isinstance(name, str) else None
        if existing is not None and (existing.tenant != self.tenant or existing.created == 0):
            existing = None  # admin's object or a built-in of that name is not the tenant's to change: create says why
        try:
            if existing is None:
                decision = decide_create(self.pending, kind, body, tenant=self.tenant, uuid=self.make_uuid(kind), seal=self.seal)  # type: ignore[arg-type]
            else:
                laid_over = {k: v for k, v in body.items() if k not in SERVER_FIELDS}
                decision = decide_update(self.pending, existing, _merge(existing.body, laid_over), if_revision=None, seal=self.seal)  # type: ignore[arg-type]
        except CommandError as exc:
            raise CommandError(exc.code, exc.message, _join(path, exc.field)) from None
        for event in decision.events:
            self.pending.add(event)
        self.events.extend(decision.events)
        self.preconditions.extend(decision.preconditions)
        if len(self.events) > MAX_MACRO_OBJECTS:
            raise CommandError(413, f"a macro may change at most {MAX_MACRO_OBJECTS} objects; split the request", "data")
        if not self.update:
            return decision.uuid  # a creation's answer is its events
        entry: dict[str, Any] = {"kind": kind, "name": name, "uuid": decision.uuid}
        if existing is None:
            entry["action"] = "created"
        elif decision.events:
            new = decision.events[0].body
            entry["action"] = "updated"
            entry["changes"] = {
                field: {"from": existing.body.get(field), "to": new.get(field)}
                for field in sorted(set(existing.body) | set(new)) if existing.body.get(field) != new.get(field)
            }
        else:
            entry["action"] = "unchanged"
        self.report.append(entry)
        return decision.uuid


def _merge(stored: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``stored`` with ``given`` laid over it: objects merge key by key, lists and scalars replace."""
    out = dict(stored)
    for key, value in given.items():
        current = out.get(key)
        out[key] = _merge(current, value) if isinstance(current, dict) and isinstance(value, dict) else value
    return out


def decide_macro_delete(view: ConfigView, model_name: Any, data: Any, *, tenant: str) -> Decision:
    """Delete a hierarchy: the top objects (404 when absent, 409 when used from outside) and the
    objects named in their ``*_data`` fields that are neither built in nor used from outside."""
    found: list[tuple[StoredObject, bool, str]] = []  # (object, is top, request path), parents first
    for kind, item, path in _items(model_name, data):
        _collect(view, kind, item, tenant, path, True, found, 0)
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
