"""Decide: turn one API request into the events and preconditions of one proposal.

Pure: takes the view (as this node sees it), the request and ``now``-free inputs (the caller
supplies new uuids), and returns data or raises :class:`CommandError`. The view may be behind the
leader: whatever the decision read is pinned by preconditions, and apply re-checks every
invariant, so a decision taken on stale data is refused at apply time, never applied.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import uuid as uuidlib
from typing import Any, Callable, Optional
from urllib.parse import parse_qs, unquote, urlsplit

import attrs

from cluster import schema
from cluster.sealing import Sealer, is_sealed
from cluster.views import ConfigView, StoredObject, ref_uuid
from storage.events import (
    ObjectCreated,
    ObjectDeleted,
    ObjectUpdated,
    Precondition,
    SeEnrolmentIssued,
    SeEnrolmentUsed,
    SessionEnded,
    VirtualServicePlaced,
)

__all__ = [
    "BUILTIN_NAMESPACE",
    "CommandError",
    "Decision",
    "VS_ACTIONS",
    "builtin_events",
    "decide_create",
    "decide_delete",
    "decide_end_session",
    "decide_issue_enrolment",
    "decide_patch",
    "decide_update",
    "decide_vs_action",
    "new_uuid",
    "resolve_ref",
    "visible_in",
]

BUILTIN_NAMESPACE = uuidlib.UUID("5b1c0e0e-7a1c-4f7e-9d1e-a71c7a11c0de")
SERVER_FIELDS = ("uuid", "url", "_last_modified", "tenant_ref", "runtime")
_SE_NAME = re.compile(r"(?!.*\.\.)[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_PATH_REF = re.compile(r"^/api/(?P<kind>[a-z]+)/(?P<uuid>[a-z]+-[0-9a-fA-F-]{36})$")


class CommandError(Exception):
    """A request this cluster refuses; ``code`` is the HTTP status."""

    def __init__(self, code: int, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


@attrs.frozen
class Decision:
    """What a command decided: the events of one proposal, applied together or not at all, and the
    preconditions (object or placement revisions it read) that must still hold at apply. ``uuid``
    names the object the command was about, for the answer."""

    events: tuple[Any, ...]
    preconditions: tuple[Precondition, ...] = ()
    uuid: str = ""
    #: what the answer to the command shows beyond the events (a macro's per-object outcome);
    #: never proposed, never in the log
    report: tuple[Any, ...] = attrs.field(default=(), eq=False)


def visible_in(obj: StoredObject, tenant: str) -> bool:
    """Whether a request in ``tenant`` may read ``obj`` or refer to it: its own tenant's objects,
    and those of ``admin``, the provider tenant (built-ins, clouds, SE groups it shares)."""
    return obj.tenant == tenant or obj.tenant == "admin"


_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (4 << 76) | (0x8000 << 48)


def new_uuid(kind: str) -> str:
    """``<kind>-<uuid4>``: the text of ``uuid.uuid4()`` (random, version 4, RFC 4122 variant)."""
    n = int.from_bytes(os.urandom(16), "big") & _UUID4_CLEAR | _UUID4_SET
    h = f"{n:032x}"
    return f"{kind}-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def builtin_uuid(kind: str, name: str) -> str:
    return f"{kind}-{uuidlib.uuid5(BUILTIN_NAMESPACE, f'{kind}/{name}')}"


def resolve_ref(view: ConfigView, target: str, value: Any, tenant: str, field: str) -> str:
    """A ref as a client may send it (URL, ``/api/kind/uuid``, ``/api/kind?name=x``, bare uuid) -> ``/api/kind/uuid``."""
    # Only short refs are memoized, so the cache stays small whatever clients send.
    form = _ref_form(target, value) if type(value) is str and len(value) <= _MEMO_REF_LENGTH else None
    if form is not None:
        name, uuid = form
        if name is not None:
            obj = view.by_name(target, name, tenant) or view.by_name(target, name, "admin")
        else:
            assert uuid is not None
            obj = view.get(uuid)
        if obj is not None and obj.kind == target and visible_in(obj, tenant):
            return f"/api/{target}/{obj.uuid}"
    return _resolve_ref(view, target, value, tenant, field)


_MEMO_REF_LENGTH = 512


@functools.lru_cache(maxsize=4096)
def _ref_form(target: str, value: str) -> Optional[tuple[Optional[str], Optional[str]]]:
    """How :func:`_resolve_ref` reads ``value`` (pure, so memoized: most refs are the same few
    by-name defaults): ``(name, None)`` by name, ``(None, uuid)`` by uuid, None when it refuses it."""
    if not value:
        return None
    parts = urlsplit(value.split("#", 1)[0])
    path = unquote(parts.path)
    if path.startswith(f"/api/{target}") and path.rstrip("/") == f"/api/{target}":
        names = parse_qs(parts.query).get("name")
        return (names[0], None) if names else None
    match = _PATH_REF.match(path) if path.startswith("/api/") else None
    if match:
        return (None, match.group("uuid")) if match.group("kind") == target else None
    return (None, path) if path.startswith(f"{target}-") else None


def _resolve_ref(view: ConfigView, target: str, value: Any, tenant: str, field: str) -> str:
    # The definition of resolve_ref, and the wording of every refusal.
    if not isinstance(value, str) or not value:
        raise CommandError(422, f"a reference to a {target} must be a non-empty string", field)
    parts = urlsplit(value.split("#", 1)[0])
    path = unquote(parts.path)
    if path.startswith(f"/api/{target}") and path.rstrip("/") == f"/api/{target}":
        names = parse_qs(parts.query).get("name")
        if not names:
            raise CommandError(422, f"reference {value!r} names no object (expected ?name=...)", field)
        obj = view.by_name(target, names[0], tenant) or view.by_name(target, names[0], "admin")
        if obj is None:
            raise CommandError(422, f"{target} named {names[0]!r} does not exist", field)
        return f"/api/{target}/{obj.uuid}"
    match = _PATH_REF.match(path) if path.startswith("/api/") else None
    uuid = match.group("uuid") if match else (path if path.startswith(f"{target}-") else None)
    if match and match.group("kind") != target:
        raise CommandError(422, f"{field} must refer to a {target}, not a {match.group('kind')}", field)
    if uuid is None:
        raise CommandError(422, f"cannot read {value!r} as a reference to a {target}", field)
    obj = view.get(uuid)
    if obj is None or obj.kind != target:
        raise CommandError(422, f"{target} {uuid} does not exist", field)
    if not visible_in(obj, tenant):
        if tenant != "admin":
            # A tenant learns nothing of another tenant's objects: it reads as absent.
            raise CommandError(422, f"{target} {uuid} does not exist", field)
        raise CommandError(422, f"{target} {obj.name!r} belongs to tenant {obj.tenant!r}, not {tenant!r}", field)
    return f"/api/{target}/{uuid}"


def _client_body(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise CommandError(400, "the request body must be a JSON object", None)
    return {k: v for k, v in body.items() if k not in SERVER_FIELDS}


def _normalize(
    view: ConfigView, kind: str, body: dict[str, Any], tenant: str, existing: Optional[dict[str, Any]], seal: Optional[Sealer] = None
) -> dict[str, Any]:
    try:
        stored = schema.normalize(kind, body, existing=existing)
        if seal is not None:
            # Secrets enter the log sealed (cluster/sealing.py): never in clear on disk or on the wire.
            schema.seal_write_only(kind, stored, existing, seal.seal, is_sealed)
    except schema.ValidationError as exc:
        raise CommandError(422, exc.message, exc.field) from None

    def canonical(target: str, value: Any, field: str) -> Any:
        return resolve_ref(view, target, value, tenant, field or target) if value else value

    stored = schema.rewrite_refs(kind, stored, canonical)
    try:
        schema.check_unique_refs(kind, stored)
    except schema.ValidationError as exc:
        raise CommandError(422, exc.message, exc.field) from None
    if kind == "vsvip":
        cloud = _cloud_of(view, stored)
        vtype = cloud.body.get("vtype", "CLOUD_NONE") if cloud is not None else "CLOUD_NONE"
        for i, vip in enumerate(stored.get("vip") or []):
            addr = ((vip or {}).get("ip_address") or {}).get("addr")
            if addr is None:
                continue
            if vtype == "CLOUD_NONE":
                try:
                    schema.check_local_vip(addr)
                except schema.ValidationError as exc:
                    raise CommandError(422, exc.message, f"vip[{i}].ip_address.addr") from None
            elif vtype == "CLOUD_LINUXSERVER":
                assert cloud is not None
                _check_reachable_vip(view, cloud, addr, f"vip[{i}].ip_address.addr")
    if kind == "virtualservice":
        _check_same_cloud(view, stored)
    return stored


def _check_reachable_vip(view: ConfigView, cloud: StoredObject, addr: str, field: str) -> None:
    """A VIP of a cloud of hosts must lie in a data network of one of its SEs (an address it can
    take and announce), and must not be an SE's own address."""
    vip = ipaddress.IPv4Address(addr)
    reachable = False
    for se in view.list("serviceengine"):
        if ref_uuid(se.body.get("cloud_ref") or "") != cloud.uuid:
            continue
        for vnic in se.body.get("data_vnics") or []:
            for network in vnic.get("vnic_networks") or []:
                own = ipaddress.IPv4Address(network["ip"]["ip_addr"]["addr"])
                if own == vip:
                    raise CommandError(422, f"{addr} is serviceengine {se.name!r}'s own address; a VIP needs an address of its own", field)
                if vip in ipaddress.IPv4Network(f"{own}/{network['ip']['mask']}", strict=False):
                    reachable = True
    if not reachable:
        raise CommandError(422, f"{addr} is in no data network of an SE host of cloud {cloud.name!r} (register an SE on that network first)", field)


def _check_same_cloud(view: ConfigView, stored: dict[str, Any]) -> None:
    """A virtual service, its SE group and its vsvip are in one cloud."""
    cloud = _cloud_of(view, stored)
    for field in ("se_group_ref", "vsvip_ref"):
        ref = stored.get(field)
        other = view.get(ref_uuid(ref)) if ref else None
        if other is None or cloud is None:
            continue
        theirs = _cloud_of(view, other.body)
        if theirs is not None and theirs.uuid != cloud.uuid:
            raise CommandError(422, f"{other.kind} {other.name!r} is in cloud {theirs.name!r}, not {cloud.name!r} (the virtual service's cloud_ref)", field)


def _map_refs_with_fields(kind: str, body: dict[str, Any], fn: Callable[..., Any]) -> dict[str, Any]:
    fields = {value: field for field, _target, value in schema.ref_fields(kind, body)}
    return schema.map_refs(kind, body, lambda target, value: fn(target, value, fields.get(value, target)))


def _cloud_of(view: ConfigView, body: dict[str, Any]) -> Optional[StoredObject]:
    ref = body.get("cloud_ref")
    if ref:
        return view.get(ref_uuid(ref))
    return view.by_name("cloud", "Default-Cloud")


def _name_of(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CommandError(422, "name is required: a non-empty string", "name")
    if len(name) > 256:
        raise CommandError(422, "name must be at most 256 characters", "name")
    if not name.isprintable():
        # Control characters, escape sequences, bidi overrides: a name is shown in terminals and logs.
        raise CommandError(422, "name must not hold control or formatting characters (e.g. newline, ESC, NUL, bidi overrides)", "name")
    return name


def _check_kind(kind: str, *, creating: bool = False) -> None:
    spec = schema.KINDS.get(kind)
    if spec is None:
        raise CommandError(404, f"unknown object kind {kind!r}", None)
    if spec.read_only or (creating and not spec.creatable):
        raise CommandError(405, f"{kind} objects are managed by the cluster and cannot be written here", None)


def decide_create(view: ConfigView, kind: str, body: Any, *, tenant: str, uuid: str, seal: Optional[Sealer] = None) -> Decision:
    _check_kind(kind, creating=True)
    client = _client_body(body)
    name = _name_of(client)
    if view.by_name(kind, name, tenant) is not None:
        raise CommandError(409, f"{kind} named {name!r} already exists", "name")
    stored = _normalize(view, kind, client, tenant, None, seal)
    if kind == "virtualservice":
        _check_endpoints(view, kind, uuid, stored)
    event = ObjectCreated(kind=kind, uuid=uuid, name=name, tenant=tenant, body=stored)
    return Decision((event,), _ref_preconditions(view, kind, stored), uuid)


def decide_update(view: ConfigView, obj: StoredObject, body: Any, *, if_revision: Optional[int], seal: Optional[Sealer] = None) -> Decision:
    """PUT: ``body`` replaces the object. ``if_revision`` (from ``_last_modified``) must match, else 412."""
    _check_kind(obj.kind)
    if if_revision is not None and if_revision != obj.modified:
        raise CommandError(412, f"{obj.kind} {obj.name!r} was modified at revision {obj.modified}, not {if_revision}", "_last_modified")
    client = _client_body(body)
    if "name" not in client or client["name"] is None:
        client["name"] = obj.name
    name = _name_of(client)
    other = view.by_name(obj.kind, name, obj.tenant)
    if other is not None and other.uuid != obj.uuid:
        raise CommandError(409, f"{obj.kind} named {name!r} already exists", "name")
    stored = _normalize(view, obj.kind, client, obj.tenant, obj.body, seal)
    if stored == obj.body and name == obj.name:
        return Decision((), (), obj.uuid)
    _check_endpoints(view, obj.kind, obj.uuid, stored)
    event = ObjectUpdated(kind=obj.kind, uuid=obj.uuid, name=name, tenant=obj.tenant, body=stored)
    pre = (Precondition(obj.uuid, obj.modified),) + _ref_preconditions(view, obj.kind, stored)
    return Decision((event,), pre, obj.uuid)


def decide_patch(view: ConfigView, obj: StoredObject, patch: Any, seal: Optional[Sealer] = None) -> Decision:
    _check_kind(obj.kind)
    if (not isinstance(patch, dict) or not patch or set(patch) - {"add", "replace", "delete", "json_patch"}
            or all(value is None for value in patch.values())):
        raise CommandError(422, "a PATCH body is an object with add, replace, delete and/or json_patch", None)

    def resolve(target: str, value: Any) -> Any:
        try:
            return resolve_ref(view, target, value, obj.tenant, target)
        except CommandError:
            return value

    try:
        body = schema.apply_patch(obj.kind, obj.body, patch, resolve=resolve)
    except schema.ValidationError as exc:
        raise CommandError(422, exc.message, exc.field) from None
    return decide_update(view, obj, body, if_revision=None, seal=seal)


def decide_delete(view: ConfigView, obj: StoredObject) -> Decision:
    _check_kind(obj.kind)
    if obj.created == 0:
        raise CommandError(409, f"{obj.kind} {obj.name!r} is built in and cannot be deleted", None)
    users = view.referrers(obj.uuid) | view.placed_on(obj.uuid)
    if users:
        names = sorted(f"{u.kind} {u.name!r}" for u in (view.get(x) for x in users) if u is not None)
        raise CommandError(409, f"{obj.kind} {obj.name!r} is in use by {', '.join(names)}", None)
    event = ObjectDeleted(kind=obj.kind, uuid=obj.uuid, name=obj.name, tenant=obj.tenant)
    return Decision((event,), (Precondition(obj.uuid, obj.modified),), obj.uuid)


def decide_end_session(view: ConfigView, session_id: str, user: str, expires: int, at: float) -> Decision:
    """``/logout``: the session ends on every node (ending it twice changes nothing)."""
    if view.session_ended(session_id):
        return Decision((), (), "")
    return Decision((SessionEnded(session_id=session_id, user=user, expires=expires, at=at),), (), "")


def _check_endpoints(view: ConfigView, kind: str, uuid: str, stored: dict[str, Any]) -> None:
    """409 naming the VIP, the port and the VS that holds it, when a VS (or a vsvip's VSs) would
    listen where another VS does. Apply checks the same (a decision may read a stale view)."""
    if kind not in ("virtualservice", "vsvip"):
        return
    if kind == "virtualservice":
        vsvip = view.get(ref_uuid(stored.get("vsvip_ref") or ""))
        pairs = [(uuid, stored, vsvip.body if vsvip else None)]
    else:
        pairs = [(u, vs.body, stored) for u in sorted(view.referrers(uuid)) if (vs := view.get(u)) is not None and vs.kind == "virtualservice"]
    for vs_uuid, vs_body, vsvip_body in pairs:
        conflict = view.endpoint_conflict(vs_uuid, vs_body, vsvip_body)
        if conflict is not None:
            field = conflict.field if kind == "virtualservice" else "vip"
            raise CommandError(conflict.code, conflict.message, field)


def _ref_preconditions(view: ConfigView, kind: str, body: dict[str, Any]) -> tuple[Precondition, ...]:
    # A referenced object must not have been deleted between this decision and apply; apply's
    # invariant check catches deletion, so no precondition on the referenced revision is needed.
    return ()


def builtin_events() -> list[Any]:
    """The built-in objects as creation events, in an order where every ref resolves."""
    view = ConfigView()
    events: list[Any] = []
    for kind, name, body in schema.BUILTINS:
        uuid = builtin_uuid(kind, name)
        stored = dict(body)
        stored["name"] = name

        def canonical(target: str, value: Any, field: str = "", _view: ConfigView = view) -> Any:
            return resolve_ref(_view, target, value, "admin", field) if value else value

        stored = _map_refs_with_fields(kind, stored, canonical)
        event = ObjectCreated(kind=kind, uuid=uuid, name=name, tenant="admin", body=stored)
        view.seed(event)
        events.append(event)
    return events


def decide_register_se(view: ConfigView, body: Any, *, uuid: str, proof: str = "admin", now: float = 0.0) -> Decision:
    """An SE announces itself: create its serviceengine object once; registering again changes nothing.

    ``proof`` is what the request authenticated with: ``admin`` (an operator's token: any name,
    idempotent), ``se:<uuid>`` (an SE's own credential: only that SE, again), ``cloud:<name>``
    (what the cloud gave the SE it started: that requested name, before it is registered) or
    ``issued:<sha256>`` (an operator's enrolment token: one new SE, once, before it expires).
    An SE's identity cannot be taken: a name that is registered is refused to any proof but
    the operator's and that SE's own.
    """
    if not isinstance(body, dict):
        raise CommandError(400, "the request body must be a JSON object", None)
    name = _name_of(body)
    if not _SE_NAME.match(name):
        # An SE's name becomes a file name and a process identity on its host.
        raise CommandError(422, "an SE name is a letter or digit, then up to 127 letters, digits, '_', '.' or '-' (no '..')", "name")
    previous = body.get("uuid")
    if previous is not None and not isinstance(previous, str):
        raise CommandError(422, "uuid must be the uuid this SE was registered with", "uuid")
    if previous is not None and view.se_deleted(previous) is not None:
        # The record was deleted (by an operator, or the cloud released the SE): a process still
        # running under that identity is fenced, never let back in as a new SE.
        raise CommandError(410, f"serviceengine {view.se_deleted(previous)!r} ({previous}) was deleted; this SE process must stop", "uuid")
    existing = view.by_name("serviceengine", name)
    proof_kind, _, proof_value = proof.partition(":")
    if proof_kind == "se" and (previous != proof_value or existing is None or existing.uuid != proof_value):
        raise CommandError(403, "an SE's credential registers only that SE (send its uuid and name)", "uuid")
    if proof_kind == "cloud" and proof_value != name:
        raise CommandError(403, f"this enrolment is for the SE named {proof_value!r}, not {name!r}", "name")
    if proof_kind == "cloud" and existing is None and name not in view.se_requested():
        raise CommandError(403, f"no SE group asked for an SE named {name!r}", "name")
    enrolment = view.enrolment(proof_value) if proof_kind == "issued" else None
    if proof_kind == "issued" and (enrolment is None or enrolment[1] < now):
        raise CommandError(403, "the enrolment token is unknown, used already or expired", "token")
    if enrolment is not None and enrolment[0] and enrolment[0] != name:
        raise CommandError(403, f"this enrolment token is for the SE named {enrolment[0]!r}, not {name!r}", "name")
    if existing is not None:
        if proof_kind in ("cloud", "issued"):
            raise CommandError(409, f"serviceengine {name!r} is registered already; its process uses its own credential", "name")
        return Decision((), (), existing.uuid)
    try:
        stored = schema.normalize("serviceengine", _client_body(body), internal=True)
    except schema.ValidationError as exc:
        raise CommandError(422, exc.message, exc.field) from None
    requested = view.se_requested().get(name)
    if requested is not None:
        # An SE a group asked the cloud for joins that group, whatever it was started with.
        stored["se_group_ref"] = f"/api/serviceenginegroup/{requested[0]}"
    host = _cloud_host_of(view, stored)
    if host is not None:
        # An SE on a host an operator listed in a cloud of hosts belongs to that cloud, in the
        # host's SE group, or the cloud's first group by name.
        cloud, group_ref = host
        groups = sorted((g for g in view.list("serviceenginegroup") if ref_uuid(g.body.get("cloud_ref") or "") == cloud.uuid), key=lambda g: g.name)
        group_uuid = ref_uuid(group_ref) if group_ref else (groups[0].uuid if groups else None)
        if group_uuid is None:
            raise CommandError(409, f"cloud {cloud.name!r} has no SE group for this SE: create one with cloud_ref {cloud.name!r}", "se_group_ref")
        stored["cloud_ref"] = f"/api/cloud/{cloud.uuid}"
        stored["se_group_ref"] = f"/api/serviceenginegroup/{group_uuid}"

    def canonical(target: str, value: Any, field: str = "") -> Any:
        return resolve_ref(view, target, value, "admin", field or target) if value else value

    stored = _map_refs_with_fields("serviceengine", stored, canonical)
    events: tuple[Any, ...] = (ObjectCreated(kind="serviceengine", uuid=uuid, name=name, tenant="admin", body=stored),)
    if proof_kind == "issued":
        events += (SeEnrolmentUsed(token_hash=proof_value, se_uuid=uuid, at=now),)
    return Decision(events, (), uuid)


def _cloud_host_of(view: ConfigView, se_body: dict[str, Any]) -> Optional[tuple[StoredObject, Optional[str]]]:
    """The cloud of hosts that lists one of the SE's data addresses, and that host's se_group_ref."""
    addrs = {n["ip"]["ip_addr"]["addr"] for v in se_body.get("data_vnics") or [] for n in v.get("vnic_networks") or []}
    if not addrs:
        return None
    for cloud in sorted(view.list("cloud"), key=lambda c: c.name):
        if cloud.body.get("vtype") != "CLOUD_LINUXSERVER":
            continue
        for host in (cloud.body.get("linuxserver_configuration") or {}).get("hosts") or []:
            if host["host_ip"]["addr"] in addrs:
                return cloud, host.get("se_group_ref")
    return None


def decide_issue_enrolment(view: ConfigView, token_hash: str, name: str, ttl: Any, now: float) -> Decision:
    """An operator's enrolment token for one new SE (named ``name`` when not empty), good for ``ttl`` seconds."""
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 60 <= ttl <= 7 * 24 * 3600:
        raise CommandError(422, "ttl is the token's lifetime in seconds, 60 to 604800", "ttl")
    if name and not _SE_NAME.match(name):
        raise CommandError(422, "an SE name is a letter or digit, then up to 127 letters, digits, '_', '.' or '-' (no '..')", "name")
    if name and view.by_name("serviceengine", name) is not None:
        raise CommandError(409, f"serviceengine {name!r} is registered already", "name")
    return Decision((SeEnrolmentIssued(token_hash=token_hash, name=name, expires=now + ttl, at=now),), (), "")


def decide_place(view: ConfigView, vs: StoredObject, se_refs: Any, reason: str = "pinned by request") -> Decision:
    """Place a virtual service on exactly the given SEs (refs by name, path or URL); [] unplaces it."""
    if not isinstance(se_refs, list) or not all(isinstance(r, str) for r in se_refs):
        raise CommandError(422, "serviceengine_refs must be a list of references", "serviceengine_refs")
    uuids: list[str] = []
    for i, ref in enumerate(se_refs):
        if not ref:
            raise CommandError(422, "a reference to a serviceengine must be a non-empty string", f"serviceengine_refs[{i}]")
        if "/" not in ref and not ref.startswith("serviceengine-"):
            ref = f"/api/serviceengine?name={ref}"
        uuids.append(ref_uuid(resolve_ref(view, "serviceengine", ref, vs.tenant, f"serviceengine_refs[{i}]")))
    if len(set(uuids)) != len(uuids):
        raise CommandError(422, "serviceengine_refs names an SE twice", "serviceengine_refs")
    if tuple(uuids) == view.placement(vs.uuid) and view.pinned(vs.uuid):
        return Decision((), (), vs.uuid)
    event = VirtualServicePlaced(vs_uuid=vs.uuid, se_uuids=tuple(uuids), reason=f"{vs.name}: {reason}", pinned=True)
    return Decision((event,), (), vs.uuid)


VS_ACTIONS = ("scaleout", "scalein", "migrate", "switchover")


def decide_vs_action(view: ConfigView, vs: StoredObject, action: str, body: Any) -> Decision:
    """The real product's VS actions: ``scaleout``, ``scalein``, ``migrate``, ``switchover``.

    Each is a new placement of the VS (primary first), guarded by the placement epoch it was
    decided on; the reconciler then keeps it as long as it stays valid. ``scaleout`` and
    ``scalein`` need an active/active group (``HA_MODE_SHARED_PAIR``); ``switchover`` needs a VS on
    two SEs or more; ``migrate`` replaces one SE (``from_se_ref``, default the primary) by
    ``to_se_ref``.
    """
    if action not in VS_ACTIONS:
        raise CommandError(404, f"unknown virtualservice action {action!r}", None)
    if not isinstance(body, dict):
        raise CommandError(400, "the request body must be a JSON object", None)
    group = view.get(ref_uuid(vs.body.get("se_group_ref") or ""))
    ha_mode = (group.body.get("ha_mode") if group else None) or "HA_MODE_SHARED"
    placed = view.placement(vs.uuid)
    names = {u: (view.get(u).name if view.get(u) else u) for u in placed}  # type: ignore[union-attr]

    def se_of(field: str) -> Optional[StoredObject]:
        value = body.get(field)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise CommandError(422, f"{field} must be a reference to a serviceengine", field)
        ref = value if "/" in value or value.startswith("serviceengine-") else f"/api/serviceengine?name={value}"
        se = view.get(ref_uuid(resolve_ref(view, "serviceengine", ref, vs.tenant, field)))
        assert se is not None
        return se

    def usable(se: StoredObject, field: str) -> None:
        if group is not None and ref_uuid(se.body.get("se_group_ref") or "") != group.uuid:
            raise CommandError(409, f"serviceengine {se.name!r} is not in SE group {group.name!r}", field)
        if view.se_down(se.uuid) is not None:
            raise CommandError(409, f"serviceengine {se.name!r} is down: {view.se_down(se.uuid)}", field)
        if (se.body.get("enable_state") or "SE_STATE_ENABLED") != "SE_STATE_ENABLED":
            raise CommandError(409, f"serviceengine {se.name!r} is {se.body.get('enable_state')}", field)
        if se.uuid in placed:
            raise CommandError(409, f"virtualservice {vs.name!r} already runs on {se.name!r}", field)

    if not placed:
        raise CommandError(409, f"virtualservice {vs.name!r} is not placed on any service engine yet", None)
    if action == "switchover":
        if len(placed) < 2:
            raise CommandError(409, f"virtualservice {vs.name!r} runs on one SE ({names[placed[0]]}); there is no standby to switch to", None)
        target = placed[1:2] + placed[:1] + placed[2:]
        reason = f"{vs.name}: switchover by request: {names[target[0]]} is now primary, {names[placed[0]]} standby"
    elif action in ("scaleout", "scalein"):
        if ha_mode != "HA_MODE_SHARED_PAIR":
            raise CommandError(409, f"{action} needs an active/active SE group (ha_mode HA_MODE_SHARED_PAIR); {group.name if group else 'its group'!r} is {ha_mode}", None)
        assert group is not None
        if action == "scaleout":
            if len(placed) >= int(group.body.get("max_scaleout_per_vs", 4)):
                raise CommandError(409, f"virtualservice {vs.name!r} already runs on max_scaleout_per_vs={group.body.get('max_scaleout_per_vs', 4)} SEs", None)
            chosen = se_of("to_se_ref")
            if chosen is None:
                candidates = [
                    se for se in view.list("serviceengine")
                    if ref_uuid(se.body.get("se_group_ref") or "") == group.uuid and se.uuid not in placed
                    and view.se_down(se.uuid) is None and (se.body.get("enable_state") or "SE_STATE_ENABLED") == "SE_STATE_ENABLED"
                ]
                if not candidates:
                    raise CommandError(409, f"no free service engine in SE group {group.name!r} to scale {vs.name!r} out to", None)
                chosen = min(candidates, key=lambda se: (len(view.placed_on(se.uuid)), se.name, se.uuid))
            usable(chosen, "to_se_ref")
            target = placed + (chosen.uuid,)
            reason = f"{vs.name}: scale-out by request to {chosen.name}"
        else:
            if len(placed) <= int(group.body.get("min_scaleout_per_vs", 1)):
                raise CommandError(409, f"virtualservice {vs.name!r} runs on min_scaleout_per_vs={group.body.get('min_scaleout_per_vs', 1)} SEs; it cannot scale in", None)
            chosen = se_of("se_ref")
            if chosen is None:
                chosen = view.get(placed[-1])
                assert chosen is not None
            if chosen.uuid not in placed:
                raise CommandError(409, f"virtualservice {vs.name!r} does not run on {chosen.name!r}", "se_ref")
            target = tuple(u for u in placed if u != chosen.uuid)
            reason = f"{vs.name}: scale-in by request from {chosen.name}"
    else:
        if ha_mode == "HA_MODE_LEGACY_ACTIVE_STANDBY":
            raise CommandError(409, "an active/standby VS moves with its pair; use switchover", None)
        to = se_of("to_se_ref")
        if to is None:
            raise CommandError(422, "migrate needs to_se_ref", "to_se_ref")
        usable(to, "to_se_ref")
        source = se_of("from_se_ref") or view.get(placed[0])
        assert source is not None
        if source.uuid not in placed:
            raise CommandError(409, f"virtualservice {vs.name!r} does not run on {source.name!r}", "from_se_ref")
        target = tuple(to.uuid if u == source.uuid else u for u in placed)
        reason = f"{vs.name}: migrate by request from {source.name} to {to.name}"
    event = VirtualServicePlaced(vs_uuid=vs.uuid, se_uuids=target, reason=reason)
    return Decision((event,), (Precondition(f"placement:{vs.uuid}", view.placement_revision(vs.uuid)),), vs.uuid)
