"""The config view: every object by kind, uuid and name, built only by folding committed events.

Pure: no I/O, no clock. ``check`` decides whether a committed proposal may apply to the view as
it stands at that point of the log; ``evolve`` folds the accepted events in. Both are
deterministic, so every node that replays the same log reaches the same view and the same
accept/reject decisions.

For speed the view is mutated in place (a 1 000 000-event replay must stay cheap); callers that
need an older state use a snapshot (``to_snapshot`` / ``from_snapshot``).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable, Iterator, Optional

import attrs
import msgpack

from cluster import schema
from storage.events import (
    AutoscaleAlerted,
    ObjectCreated,
    ObjectDeleted,
    ObjectUpdated,
    Proposal,
    SeEnrolmentIssued,
    SeEnrolmentUsed,
    ServiceEngineReleased,
    ServiceEngineRequested,
    ServiceEngineStatusChanged,
    SessionEnded,
    VirtualServicePlaced,
)

__all__ = [
    "Accepted",
    "Endpoint",
    "ConfigView",
    "Duplicate",
    "Outcome",
    "Rejected",
    "StoredObject",
    "ref_uuid",
    "vs_endpoints",
]

# How many accepted command ids a view remembers for duplicate detection (evicted oldest first,
# the same way on every node). Retries of one command happen within seconds, far inside this.
COMMAND_MEMORY = 100_000


@attrs.define
class StoredObject:
    kind: str
    uuid: str
    name: str
    tenant: str
    body: dict[str, Any]
    created: int
    modified: int


@attrs.frozen
class Accepted:
    first_revision: int
    last_revision: int


@attrs.frozen
class Duplicate:
    """The command id was already applied; ``original`` is what it did then."""

    original: Accepted


@attrs.frozen
class Rejected:
    """``code`` is an HTTP-like class: 409 conflict (refs, names), 412 stale precondition, 404 gone."""

    code: int
    message: str
    field: Optional[str] = None


Outcome = Accepted | Duplicate | Rejected


def ref_uuid(ref: str) -> str:
    """The uuid in a stored ref (``/api/<kind>/<uuid>``)."""
    return ref.rsplit("/", 1)[-1]


def _refs(kind: str, body: dict[str, Any]) -> set[str]:
    return {ref_uuid(value) for _field, _target, value in schema.ref_fields(kind, body) if value}


Endpoint = tuple[str, int]
# The kinds whose changes move which VS listens on which VIP address and port.
_ENDPOINT_KINDS = frozenset({"virtualservice", "vsvip"})


def vs_endpoints(vs_body: dict[str, Any], vsvip_body: Optional[dict[str, Any]]) -> dict[Endpoint, str]:
    """Every (VIP address, port) a virtual service listens on -> the field that names its port."""
    addrs = [((vip or {}).get("ip_address") or {}).get("addr") for vip in ((vsvip_body or {}).get("vip") or [])]
    out: dict[Endpoint, str] = {}
    for i, service in enumerate(vs_body.get("services") or []):
        port = (service or {}).get("port")
        for addr in addrs:
            if isinstance(addr, str) and isinstance(port, int):
                out.setdefault((addr, port), f"services[{i}].port")
    return out


class ConfigView:
    def __init__(self) -> None:
        self.revision = 0
        self.raft_index = 0
        self._objects: dict[str, dict[str, StoredObject]] = {}
        self._by_uuid: dict[str, StoredObject] = {}
        self._by_name: dict[tuple[str, str, str], str] = {}
        self._referrers: dict[str, set[str]] = {}
        self._commands: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._placements: dict[str, tuple[str, ...]] = {}  # vs uuid -> se uuids
        self._placed_on: dict[str, set[str]] = {}  # se uuid -> vs uuids
        self._placement_revision: dict[str, int] = {}  # vs uuid -> revision of its last placement
        self._pinned: set[str] = set()  # vs uuids placed by hand
        self._se_requested: dict[str, tuple[str, int]] = {}  # SE name -> (group uuid, revision requested)
        self._se_down: dict[str, str] = {}  # se uuid -> why the leader declared it down
        self._se_ready: set[str] = set()  # se uuids the leader has declared up at least once
        self._sessions_ended: dict[str, int] = {}  # session id -> when its cookie expires
        self._se_deleted: dict[str, str] = {}  # se uuid -> its name, for every SE object deleted
        self._enrolments: dict[str, tuple[str, float]] = {}  # token sha256 -> (SE name or "", expires): unused ones
        # Derived (rebuilt from the objects on snapshot load): which VS serves each VIP address and port.
        self._vs_endpoints: dict[str, frozenset[Endpoint]] = {}  # vs uuid -> its (addr, port)s
        self._endpoint_holders: dict[Endpoint, set[str]] = {}  # (addr, port) -> vs uuids

    # -- reads ---------------------------------------------------------------------------------

    def get(self, uuid: str) -> Optional[StoredObject]:
        return self._by_uuid.get(uuid)

    def by_name(self, kind: str, name: str, tenant: str = "admin") -> Optional[StoredObject]:
        uuid = self._by_name.get((kind, tenant, name))
        return None if uuid is None else self._by_uuid[uuid]

    def list(self, kind: str) -> list[StoredObject]:
        return list(self._objects.get(kind, {}).values())

    def kinds(self) -> Iterator[str]:
        return iter(self._objects)

    def referrers(self, uuid: str) -> set[str]:
        return set(self._referrers.get(uuid, ()))

    def revision_of(self, uuid: str) -> int:
        """The revision that last changed ``uuid``; 0 when absent (never existed or deleted).

        ``placement:<vs uuid>`` names a VS's placement: its revision is the placement epoch.
        """
        if uuid.startswith("placement:"):
            return self._placement_revision.get(uuid[len("placement:"):], 0)
        obj = self._by_uuid.get(uuid)
        return 0 if obj is None else obj.modified

    def placement(self, vs_uuid: str) -> tuple[str, ...]:
        return self._placements.get(vs_uuid, ())

    def placed_on(self, se_uuid: str) -> set[str]:
        return set(self._placed_on.get(se_uuid, ()))

    def placement_revision(self, vs_uuid: str) -> int:
        return self._placement_revision.get(vs_uuid, 0)

    def pinned(self, vs_uuid: str) -> bool:
        return vs_uuid in self._pinned

    def se_requested(self) -> dict[str, tuple[str, int]]:
        """SE name -> (group uuid, revision) of every SE a group asked for and still wants."""
        return dict(self._se_requested)

    def se_ready(self, se_uuid: str) -> bool:
        """The SE was declared up (ready) at least once since it registered."""
        return se_uuid in self._se_ready

    def se_down(self, se_uuid: str) -> Optional[str]:
        """Why the SE was declared down, or None while it is up."""
        return self._se_down.get(se_uuid)

    def endpoint_holders(self, addr: str, port: int) -> set[str]:
        """The virtual services that listen on ``addr:port`` (at most one in a log written since
        the invariant existed)."""
        return set(self._endpoint_holders.get((addr, port), ()))

    def endpoint_conflict(self, vs_uuid: str, vs_body: dict[str, Any], vsvip_body: Optional[dict[str, Any]]) -> Rejected | None:
        """409 when another virtual service already listens on one of the VIP addresses and ports
        this VS body (with that vsvip) would take. For decisions; apply checks the same."""
        return self._endpoints_taken(vs_uuid, vs_body, vsvip_body, {}, set())

    def se_deleted(self, se_uuid: str) -> Optional[str]:
        """The name of the SE that had this uuid and was deleted (None: never deleted). A deleted SE's
        process may not register again under that identity."""
        return self._se_deleted.get(se_uuid)

    def enrolment(self, token_hash: str) -> Optional[tuple[str, float]]:
        """An unused operator enrolment token: (the SE name it is for, or "", when it expires)."""
        return self._enrolments.get(token_hash)

    def session_ended(self, session_id: str) -> bool:
        """The login session was ended (logged out) and its cookie must be refused."""
        return session_id in self._sessions_ended

    def accepted_command(self, command_id: str) -> Optional[Accepted]:
        seen = self._commands.get(command_id)
        return None if seen is None else Accepted(*seen)

    def __len__(self) -> int:
        return len(self._by_uuid)

    # -- apply ---------------------------------------------------------------------------------

    def check(self, proposal: Proposal) -> Outcome | None:
        """None when ``proposal`` may apply now; otherwise the outcome that replaces applying it."""
        seen = self._commands.get(proposal.command_id)
        if seen is not None:
            return Duplicate(Accepted(*seen))
        for pre in proposal.preconditions:
            if self.revision_of(pre.key) != pre.revision:
                return Rejected(412, f"{pre.key} changed since revision {proposal.based_on}; read it again", "_last_modified")
        return self._check_invariants(proposal.events)

    def _check_invariants(self, events: Iterable[Any]) -> Rejected | None:
        # Checks each event against the view as the earlier events of the same proposal leave it.
        created: dict[str, str] = {}  # uuid -> kind, made earlier in this proposal
        deleted: set[str] = set()
        names: dict[tuple[str, str, str], Optional[str]] = {}
        bodies: dict[str, dict[str, Any]] = {}  # uuid -> body, as earlier events of this proposal left it
        claimed: dict[Endpoint, str] = {}  # VIP address and port -> the VS that took it earlier in this proposal
        used_tokens: set[str] = set()  # enrolment tokens used earlier in this proposal
        for event in events:
            if isinstance(event, VirtualServicePlaced):
                bad = self._check_placement(event, created, deleted)
                if bad:
                    return bad
                continue
            if isinstance(event, (AutoscaleAlerted, SessionEnded, SeEnrolmentIssued)):
                continue  # always valid: a record for operators, a session that may end, a new token
            if isinstance(event, SeEnrolmentUsed):
                enrolment = self._enrolments.get(event.token_hash)
                if enrolment is None or enrolment[1] < event.at or event.token_hash in used_tokens:
                    return Rejected(409, "the enrolment token was used already or has expired", "token")
                used_tokens.add(event.token_hash)
                continue
            if isinstance(event, (ServiceEngineRequested, ServiceEngineStatusChanged, ServiceEngineReleased)):
                bad = self._check_se_event(event, deleted)
                if bad:
                    return bad
                continue
            key = (event.kind, event.tenant, event.name)
            exists = (event.uuid in self._by_uuid or event.uuid in created) and event.uuid not in deleted
            if isinstance(event, ObjectCreated):
                if exists or event.uuid in deleted:
                    return Rejected(409, f"{event.kind} {event.uuid} already exists", "uuid")
                holder = names.get(key, self._by_name.get(key))
                if holder is not None:
                    return Rejected(409, f"{event.kind} named {event.name!r} already exists", "name")
                bad = self._dangling(event.kind, event.body, created, deleted)
                if bad:
                    return bad
                created[event.uuid] = event.kind
                names[key] = event.uuid
            elif isinstance(event, ObjectUpdated):
                if not exists:
                    return Rejected(404, f"{event.kind} {event.uuid} does not exist", "uuid")
                old = self._by_uuid.get(event.uuid)
                if old is not None and (old.name != event.name or old.tenant != event.tenant):
                    old_key = (old.kind, old.tenant, old.name)
                    holder = names.get(key, self._by_name.get(key))
                    if holder is not None and holder != event.uuid:
                        return Rejected(409, f"{event.kind} named {event.name!r} already exists", "name")
                    names[old_key] = None
                    names[key] = event.uuid
                bad = self._dangling(event.kind, event.body, created, deleted)
                if bad:
                    return bad
            elif isinstance(event, ObjectDeleted):
                if not exists:
                    return Rejected(404, f"{event.kind} {event.uuid} does not exist", "uuid")
                users = (self._referrers.get(event.uuid, set()) | self._placed_on.get(event.uuid, set())) - deleted
                if users:
                    names_of = sorted(self._describe(u) for u in users)
                    return Rejected(409, f"{event.kind} {event.name!r} is in use by {', '.join(names_of)}", None)
                deleted.add(event.uuid)
                names[key] = None
            else:
                return Rejected(400, f"unknown event {type(event).__name__}", None)
            if event.kind in _ENDPOINT_KINDS and not isinstance(event, ObjectDeleted):
                bodies[event.uuid] = event.body
                bad = self._check_endpoints(event, bodies, claimed, deleted)
                if bad:
                    return bad
        return None

    def _check_placement(self, event: VirtualServicePlaced, created: dict[str, str], deleted: set[str]) -> Rejected | None:
        vs = self._by_uuid.get(event.vs_uuid)
        vs_ok = (vs is not None and vs.kind == "virtualservice") or created.get(event.vs_uuid) == "virtualservice"
        if not vs_ok or event.vs_uuid in deleted:
            return Rejected(404, f"virtualservice {event.vs_uuid} does not exist", "uuid")
        for se in event.se_uuids:
            obj = self._by_uuid.get(se)
            if obj is None or obj.kind != "serviceengine" or se in deleted:
                return Rejected(409, f"serviceengine {se} does not exist", "serviceengine_refs")
        return None

    def _check_se_event(self, event: Any, deleted: set[str]) -> Rejected | None:
        if isinstance(event, ServiceEngineRequested):
            if event.name in self._se_requested:
                return Rejected(409, f"serviceengine {event.name!r} was already requested", "name")
            group = self._by_uuid.get(event.group_uuid)
            if group is None or group.kind != "serviceenginegroup" or event.group_uuid in deleted:
                return Rejected(409, f"serviceenginegroup {event.group_uuid} does not exist", "se_group_ref")
        elif isinstance(event, ServiceEngineReleased):
            if event.name not in self._se_requested:
                return Rejected(404, f"serviceengine {event.name!r} was not requested", "name")
        else:
            se = self._by_uuid.get(event.se_uuid)
            if se is None or se.kind != "serviceengine" or event.se_uuid in deleted:
                return Rejected(404, f"serviceengine {event.se_uuid} does not exist", "uuid")
            if event.status not in ("up", "down"):
                return Rejected(422, f"unknown SE status {event.status!r}", "status")
        return None

    def _check_endpoints(
        self, event: Any, bodies: dict[str, dict[str, Any]], claimed: dict[Endpoint, str], deleted: set[str]
    ) -> Rejected | None:
        """One VIP address and port is served by one virtual service."""
        if event.kind == "virtualservice":
            vs_list = [(event.uuid, event.body)]
        else:
            vs_list = [(u, bodies.get(u) or self._by_uuid[u].body) for u in sorted(self._referrers.get(event.uuid, ()))
                       if u not in deleted and u in self._by_uuid and self._by_uuid[u].kind == "virtualservice"]
        for vs_uuid, vs_body in vs_list:
            vsvip_uuid = ref_uuid(vs_body.get("vsvip_ref") or "")
            vsvip_body = bodies.get(vsvip_uuid) or (self._by_uuid[vsvip_uuid].body if vsvip_uuid in self._by_uuid else None)
            bad = self._endpoints_taken(vs_uuid, vs_body, vsvip_body, claimed, deleted | set(bodies))
            if bad:
                return bad
        return None

    def _endpoints_taken(
        self, vs_uuid: str, vs_body: dict[str, Any], vsvip_body: Optional[dict[str, Any]],
        claimed: dict[Endpoint, str], changed: set[str],
    ) -> Rejected | None:
        # ``changed``: VSs deleted or rewritten earlier in the proposal, whose committed endpoints
        # no longer count (what they took anew is in ``claimed``).
        for (addr, port), field in vs_endpoints(vs_body, vsvip_body).items():
            holders = {u for u in self._endpoint_holders.get((addr, port), ()) if u != vs_uuid and u not in changed}
            other = claimed.get((addr, port))
            if other is not None and other != vs_uuid:
                holders.add(other)
            if holders:
                names = ", ".join(sorted(repr(self._by_uuid[u].name) if u in self._by_uuid else u for u in holders))
                return Rejected(409, f"{addr}:{port} is already served by virtualservice {names}", field)
            claimed[(addr, port)] = vs_uuid
        return None

    def _dangling(self, kind: str, body: dict[str, Any], created: dict[str, str], deleted: set[str]) -> Rejected | None:
        for field, target, value in schema.ref_fields(kind, body):
            if not value:
                continue
            uuid = ref_uuid(value)
            obj = self._by_uuid.get(uuid)
            ok = (obj is not None and obj.kind == target) or created.get(uuid) == target
            if not ok or uuid in deleted:
                return Rejected(409, f"{field} refers to {target} {uuid}, which does not exist", field)
        return None

    def _describe(self, uuid: str) -> str:
        obj = self._by_uuid.get(uuid)
        return uuid if obj is None else f"{obj.kind} {obj.name!r}"

    def evolve(self, raft_index: int, command_id: str, events: Iterable[Any]) -> Accepted:
        """Fold accepted events in, one revision each. Total: never raises on events ``check`` passed."""
        first = self.revision + 1
        for event in events:
            self.revision += 1
            self._fold(event, self.revision)
        self.raft_index = max(self.raft_index, raft_index)
        self._commands[command_id] = (first, self.revision)
        while len(self._commands) > COMMAND_MEMORY:
            self._commands.popitem(last=False)
        return Accepted(first, self.revision)

    def seed(self, event: ObjectCreated) -> None:
        """Add a built-in object at revision 0 (before any committed event)."""
        self._fold(event, 0)

    @classmethod
    def with_builtins(cls, events: Iterable[ObjectCreated]) -> "ConfigView":
        view = cls()
        for event in events:
            view.seed(event)
        return view

    def note_raft_index(self, raft_index: int) -> None:
        self.raft_index = max(self.raft_index, raft_index)

    def _fold(self, event: Any, revision: int) -> None:
        if isinstance(event, ObjectCreated):
            obj = StoredObject(event.kind, event.uuid, event.name, event.tenant, event.body, revision, revision)
            self._objects.setdefault(event.kind, {})[event.uuid] = obj
            self._by_uuid[event.uuid] = obj
            self._by_name[(event.kind, event.tenant, event.name)] = event.uuid
            self._link(event.uuid, _refs(event.kind, event.body))
            if event.kind in _ENDPOINT_KINDS:
                self._index_endpoints(obj)
        elif isinstance(event, ObjectUpdated):
            obj = self._by_uuid[event.uuid]
            self._unlink(obj.uuid, _refs(obj.kind, obj.body))
            if (obj.tenant, obj.name) != (event.tenant, event.name):
                self._by_name.pop((obj.kind, obj.tenant, obj.name), None)
                self._by_name[(obj.kind, event.tenant, event.name)] = obj.uuid
            obj.name, obj.tenant, obj.body, obj.modified = event.name, event.tenant, event.body, revision
            self._link(obj.uuid, _refs(obj.kind, obj.body))
            if obj.kind in _ENDPOINT_KINDS:
                self._index_endpoints(obj)
        elif isinstance(event, VirtualServicePlaced):
            self._place(event.vs_uuid, tuple(event.se_uuids), revision)
            if event.pinned:
                self._pinned.add(event.vs_uuid)
            else:
                self._pinned.discard(event.vs_uuid)
        elif isinstance(event, ServiceEngineRequested):
            self._se_requested[event.name] = (event.group_uuid, revision)
        elif isinstance(event, ServiceEngineReleased):
            self._se_requested.pop(event.name, None)
        elif isinstance(event, ServiceEngineStatusChanged):
            if event.status == "down":
                self._se_down[event.se_uuid] = event.reason or "down"
            else:
                self._se_down.pop(event.se_uuid, None)
                self._se_ready.add(event.se_uuid)
        elif isinstance(event, SeEnrolmentIssued):
            self._forget_expired_enrolments(event.at)
            self._enrolments[event.token_hash] = (event.name, event.expires)
        elif isinstance(event, SeEnrolmentUsed):
            self._forget_expired_enrolments(event.at)
            self._enrolments.pop(event.token_hash, None)
        elif isinstance(event, SessionEnded):
            # Forget sessions whose cookies have expired by now: they are refused anyway.
            for session_id in [s for s, expires in self._sessions_ended.items() if expires < event.at]:
                del self._sessions_ended[session_id]
            if event.expires >= event.at:
                self._sessions_ended[event.session_id] = event.expires
        elif isinstance(event, ObjectDeleted):
            if event.kind == "serviceengine":
                self._se_down.pop(event.uuid, None)
                self._se_ready.discard(event.uuid)
                self._se_deleted[event.uuid] = event.name
            if event.kind == "virtualservice":
                self._place(event.uuid, (), revision)
                self._placement_revision.pop(event.uuid, None)
                self._pinned.discard(event.uuid)
            obj = self._by_uuid.pop(event.uuid)
            if obj.kind == "virtualservice":
                self._set_endpoints(obj.uuid, frozenset())
            self._objects[obj.kind].pop(obj.uuid, None)
            self._by_name.pop((obj.kind, obj.tenant, obj.name), None)
            self._unlink(obj.uuid, _refs(obj.kind, obj.body))
            self._referrers.pop(obj.uuid, None)

    def _forget_expired_enrolments(self, now: float) -> None:
        for token_hash in [h for h, (_name, expires) in self._enrolments.items() if expires < now]:
            del self._enrolments[token_hash]

    def _index_endpoints(self, obj: StoredObject) -> None:
        if obj.kind == "virtualservice":
            vsvip = self._by_uuid.get(ref_uuid(obj.body.get("vsvip_ref") or ""))
            self._set_endpoints(obj.uuid, frozenset(vs_endpoints(obj.body, vsvip.body if vsvip else None)))
        elif obj.kind == "vsvip":
            for user in self._referrers.get(obj.uuid, ()):
                vs = self._by_uuid.get(user)
                if vs is not None and vs.kind == "virtualservice":
                    self._set_endpoints(vs.uuid, frozenset(vs_endpoints(vs.body, obj.body)))

    def _set_endpoints(self, vs_uuid: str, endpoints: frozenset[Endpoint]) -> None:
        for endpoint in self._vs_endpoints.pop(vs_uuid, frozenset()):
            holders = self._endpoint_holders.get(endpoint)
            if holders is not None:
                holders.discard(vs_uuid)
                if not holders:
                    del self._endpoint_holders[endpoint]
        if endpoints:
            self._vs_endpoints[vs_uuid] = endpoints
            for endpoint in endpoints:
                self._endpoint_holders.setdefault(endpoint, set()).add(vs_uuid)

    def _place(self, vs_uuid: str, se_uuids: tuple[str, ...], revision: int) -> None:
        for se in self._placements.pop(vs_uuid, ()):
            on = self._placed_on.get(se)
            if on is not None:
                on.discard(vs_uuid)
                if not on:
                    del self._placed_on[se]
        if se_uuids:
            self._placements[vs_uuid] = se_uuids
            for se in se_uuids:
                self._placed_on.setdefault(se, set()).add(vs_uuid)
        self._placement_revision[vs_uuid] = revision

    def _link(self, source: str, targets: set[str]) -> None:
        for target in targets:
            self._referrers.setdefault(target, set()).add(source)

    def _unlink(self, source: str, targets: set[str]) -> None:
        for target in targets:
            users = self._referrers.get(target)
            if users is not None:
                users.discard(source)
                if not users:
                    del self._referrers[target]

    # -- snapshots -----------------------------------------------------------------------------

    def to_snapshot(self) -> bytes:
        objects = [
            [o.kind, o.uuid, o.name, o.tenant, o.body, o.created, o.modified] for o in self._by_uuid.values()
        ]
        commands = [[k, a, b] for k, (a, b) in self._commands.items()]
        placements = [[vs, list(ses), self._placement_revision.get(vs, 0)] for vs, ses in sorted(self._placements.items())]
        return msgpack.packb(
            {"v": 1, "revision": self.revision, "raft_index": self.raft_index, "objects": objects, "commands": commands,
             "placements": placements, "pinned": sorted(self._pinned),
             "se_requested": [[n, g, r] for n, (g, r) in sorted(self._se_requested.items())],
             "se_down": sorted(self._se_down.items()), "se_ready": sorted(self._se_ready),
             "sessions_ended": sorted(self._sessions_ended.items()), "se_deleted": sorted(self._se_deleted.items()),
             "enrolments": sorted([h, n, e] for h, (n, e) in self._enrolments.items())},
            use_bin_type=True,
        )

    @classmethod
    def from_snapshot(cls, data: bytes) -> "ConfigView":
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if doc.get("v") != 1:
            raise ValueError(f"unknown view snapshot version {doc.get('v')!r}")
        view = cls()
        view.revision = doc["revision"]
        view.raft_index = doc["raft_index"]
        for kind, uuid, name, tenant, body, created, modified in doc["objects"]:
            obj = StoredObject(kind, uuid, name, tenant, body, created, modified)
            view._objects.setdefault(kind, {})[uuid] = obj
            view._by_uuid[uuid] = obj
            view._by_name[(kind, tenant, name)] = uuid
        for obj in view._by_uuid.values():
            view._link(obj.uuid, _refs(obj.kind, obj.body))
        for obj in view._objects.get("virtualservice", {}).values():
            view._index_endpoints(obj)
        for command_id, first, last in doc["commands"]:
            view._commands[command_id] = (first, last)
        for vs, ses, revision in doc.get("placements", []):
            view._place(vs, tuple(ses), revision)
        # Snapshots written before these fields existed: every placement then was made by hand.
        view._pinned = set(doc.get("pinned", view._placements))
        view._se_requested = {n: (g, r) for n, g, r in doc.get("se_requested", [])}
        view._se_down = dict(doc.get("se_down", []))
        view._se_ready = set(doc.get("se_ready", []))
        view._sessions_ended = dict(doc.get("sessions_ended", []))
        view._se_deleted = dict(doc.get("se_deleted", []))
        view._enrolments = {h: (n, e) for h, n, e in doc.get("enrolments", [])}
        return view
