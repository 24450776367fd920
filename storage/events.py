"""The events of the log and the envelopes that carry them through Raft and onto disk.

Events are facts, named in the past tense, frozen, and registered with the codec under a stable
tag. ``body`` fields hold the object exactly as the API stores it (plain JSON-like data).
"""

from __future__ import annotations

from typing import Any, Iterable, Union

import attrs

from storage import codec

__all__ = [
    "Barrier",
    "CommittedCommand",
    "Event",
    "ObjectCreated",
    "ObjectDeleted",
    "ObjectUpdated",
    "Precondition",
    "Proposal",
    "ProposalBatch",
    "CommittedBatch",
    "AutoscaleAlerted",
    "ServiceEngineReleased",
    "ServiceEngineRequested",
    "ServiceEngineStatusChanged",
    "SeEnrolmentIssued",
    "SeEnrolmentUsed",
    "SessionEnded",
    "VirtualServicePlaced",
]


def _frozen_body(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError("body must be a map")
    return value


def _frozen_uuids(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@codec.registered("ObjectCreated", 1)
@attrs.frozen
class ObjectCreated:
    kind: str
    uuid: str
    name: str
    tenant: str
    body: dict[str, Any] = attrs.field(converter=_frozen_body, eq=True, hash=False)


@codec.registered("ObjectUpdated", 1)
@attrs.frozen
class ObjectUpdated:
    kind: str
    uuid: str
    name: str
    tenant: str
    body: dict[str, Any] = attrs.field(converter=_frozen_body, eq=True, hash=False)


@codec.registered("ObjectDeleted", 1)
@attrs.frozen
class ObjectDeleted:
    kind: str
    uuid: str
    name: str
    tenant: str


@codec.registered("VirtualServicePlaced", 2)
@attrs.frozen
class VirtualServicePlaced:
    """The virtual service now runs on exactly these service engines (none: unplaced), primary first.

    ``pinned``: an operator chose these SEs by hand (``avictl vs place``); the placement
    reconciler leaves a pinned VS where it is.
    """

    vs_uuid: str
    se_uuids: tuple[str, ...] = attrs.field(converter=_frozen_uuids)
    reason: str = ""
    pinned: bool = False


@codec.upcaster("VirtualServicePlaced", 1)
def _placed_v1(fields: dict[str, Any]) -> dict[str, Any]:
    # Version 1 placements were all made by hand.
    return {**fields, "pinned": True}


@codec.registered("ServiceEngineRequested", 1)
@attrs.frozen
class ServiceEngineRequested:
    """The SE group needs a new service engine of this name; the cloud driver starts it."""

    name: str
    group_uuid: str
    reason: str = ""


@codec.registered("ServiceEngineStatusChanged", 1)
@attrs.frozen
class ServiceEngineStatusChanged:
    """The leader's verdict on a registered SE: ``up`` (reporting) or ``down`` (silent or exited)."""

    se_uuid: str
    name: str
    status: str
    reason: str = ""


@codec.registered("ServiceEngineReleased", 1)
@attrs.frozen
class ServiceEngineReleased:
    """A requested SE is no longer wanted (idle past ``se_deprovision_delay``); the cloud stops it."""

    name: str
    reason: str = ""


@codec.registered("AutoscaleAlerted", 1)
@attrs.frozen
class AutoscaleAlerted:
    """An SE crossed an autoscale threshold while its group's ``auto_rebalance`` is off: what it would do, and why."""

    vs_uuid: str
    se_uuid: str
    action: str
    reason: str = ""


@codec.registered("SessionEnded", 1)
@attrs.frozen
class SessionEnded:
    """A login session was ended (``/logout``): every node refuses its cookie from then on.

    ``session_id`` is the random id inside the signed cookie (not the cookie: without the
    cluster's key it cannot be turned back into one); ``expires`` is when the cookie would have
    expired anyway and ``at`` when it was ended (both Unix seconds), so views forget ended sessions
    once they could no longer be used, the same way on every node.
    """

    session_id: str
    user: str
    expires: int
    at: float


@codec.registered("SeEnrolmentIssued", 1)
@attrs.frozen
class SeEnrolmentIssued:
    """An operator made an enrolment token: it registers one new SE (named ``name``, when not
    empty) before ``expires`` (Unix seconds), once. The log keeps the token's sha256, never the token."""

    token_hash: str
    name: str
    expires: float
    at: float


@codec.registered("SeEnrolmentUsed", 1)
@attrs.frozen
class SeEnrolmentUsed:
    """The enrolment token registered the SE ``se_uuid`` (at ``at``): it cannot register another."""

    token_hash: str
    se_uuid: str
    at: float


Event = Union[
    AutoscaleAlerted,
    ObjectCreated,
    ObjectUpdated,
    ObjectDeleted,
    VirtualServicePlaced,
    ServiceEngineRequested,
    ServiceEngineStatusChanged,
    ServiceEngineReleased,
    SessionEnded,
    SeEnrolmentIssued,
    SeEnrolmentUsed,
]


def _events(value: Any) -> tuple[Any, ...]:
    return tuple(v if not isinstance(v, (list, tuple)) else codec.decode_value(v) for v in value)


def _preconditions(value: Any) -> tuple["Precondition", ...]:
    out = []
    for item in value:
        if isinstance(item, Precondition):
            out.append(item)
        else:
            decoded = codec.decode_value(item)
            if not isinstance(decoded, Precondition):
                raise TypeError("preconditions hold Precondition values")
            out.append(decoded)
    return tuple(out)


@codec.registered("Precondition", 1)
@attrs.frozen
class Precondition:
    """At apply time the object (or name binding) ``key`` must still be at ``revision`` (0: absent)."""

    key: str
    revision: int


@codec.registered("Proposal", 1)
@attrs.frozen
class Proposal:
    """What one API write proposes through Raft: decided against ``based_on``, applied all or nothing.

    ``command_id`` is chosen by the client (or the API) and stays the same across retries, so a
    retried proposal that was in fact committed is dropped as a duplicate on every node.
    """

    command_id: str
    based_on: int
    time: float
    preconditions: tuple[Precondition, ...] = attrs.field(converter=_preconditions)
    events: tuple[Any, ...] = attrs.field(converter=_events)

    def __attrs_post_init__(self) -> None:
        for event in self.events:
            codec.tag_of(event)


@codec.registered("Barrier", 1)
@attrs.frozen
class Barrier:
    """A no-op entry: once applied, a node has seen everything committed before it was proposed."""

    nonce: str


@codec.registered("CommittedCommand", 1)
@attrs.frozen
class CommittedCommand:
    """What the event store keeps for one accepted proposal (its revisions live in the record)."""

    command_id: str
    time: float
    events: tuple[Any, ...] = attrs.field(converter=_events)


@codec.registered("ProposalBatch", 1)
@attrs.frozen
class ProposalBatch:
    """One Raft entry: proposals and barriers grouped while earlier entries were in flight (group commit).

    Each item is applied on its own, in order; the batch only shares the Raft round trip and the fsync.
    """

    items: tuple[Any, ...] = attrs.field(converter=_events)


@codec.registered("CommittedBatch", 1)
@attrs.frozen
class CommittedBatch:
    """What the event store keeps for one Raft entry: its accepted commands, in revision order."""

    commands: tuple[CommittedCommand, ...] = attrs.field(converter=_events)
