"""Commands: what a client or the leader asks of the cluster, as frozen values, and the one
``decide(view, command, now)`` that turns a command into a :class:`~cluster.decide.Decision`.

A command names its target and carries its input; nothing in it is a callable, so a command can
be logged, retried with the same id, replayed against another view and tested as data. The API
handlers build one per request; the leader's reconciler submits what its pure cores decided as
:class:`CommitDecision`. ``decide`` is pure: it reads the view (which may be behind the leader;
what it read is pinned by preconditions and re-checked at apply) and raises
:class:`~cluster.decide.CommandError` to refuse.

Every object command carries the tenant it acts in: an object of another tenant is not found
(404), the same as an object that does not exist.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import attrs

from cluster import decide as d
from cluster import macro
from cluster.sealing import Sealer
from cluster.views import ConfigView, StoredObject

__all__ = [
    "ActOnVirtualService",
    "ApplyHierarchy",
    "Command",
    "CommitDecision",
    "CreateHierarchy",
    "CreateObject",
    "DeleteHierarchy",
    "DeleteObject",
    "EndSession",
    "IssueSeEnrolment",
    "PatchObject",
    "PlaceVirtualService",
    "RegisterServiceEngine",
    "UpdateObject",
    "decide",
]


@attrs.frozen
class CreateObject:
    kind: str
    body: Any
    tenant: str
    #: chosen by the shell (``new_uuid``, or the client's ``Slug``), so a retry creates the same object
    uuid: str


@attrs.frozen
class UpdateObject:
    """PUT: ``body`` replaces the object; ``if_revision`` (its ``_last_modified``) must still hold."""

    kind: str
    uuid: str
    body: Any
    tenant: str
    if_revision: Optional[int] = None


@attrs.frozen
class PatchObject:
    kind: str
    uuid: str
    patch: Any
    tenant: str


@attrs.frozen
class DeleteObject:
    kind: str
    uuid: str
    tenant: str


@attrs.frozen
class CreateHierarchy:
    """``POST /api/macro``: an object and the objects its ``*_data`` fields describe, all or nothing."""

    model_name: Any
    data: Any
    tenant: str


@attrs.frozen
class ApplyHierarchy:
    """``PUT /api/macro``: each object of the hierarchy created when absent, or updated by the
    fields given (merged over the stored ones) when present — all or nothing; ``avictl apply``."""

    model_name: Any
    data: Any
    tenant: str


@attrs.frozen
class DeleteHierarchy:
    """``DELETE /api/macro``: an object and what its ``*_data`` fields name that nothing else uses."""

    model_name: Any
    data: Any
    tenant: str


@attrs.frozen
class RegisterServiceEngine:
    body: Any
    #: the uuid a new SE gets (an SE registering again keeps its own)
    uuid: str
    #: what the request authenticated with (see :func:`cluster.decide.decide_register_se`)
    proof: str = "admin"


@attrs.frozen
class IssueSeEnrolment:
    """An enrolment token for one new SE: the log keeps its hash, the operator gets the token."""

    token_hash: str
    name: str
    ttl: Any


@attrs.frozen
class PlaceVirtualService:
    """Pin a virtual service to exactly these SEs (refs by name, path or URL); ``[]`` unplaces it."""

    vs_uuid: str
    se_refs: Any
    tenant: str


@attrs.frozen
class ActOnVirtualService:
    """``scaleout``, ``scalein``, ``migrate`` or ``switchover``, as the real product names them."""

    vs_uuid: str
    action: str
    body: Any
    tenant: str


@attrs.frozen
class EndSession:
    """``/logout``: the login session ``session_id`` of ``user`` ends (its cookie expires at ``expires``)."""

    session_id: str
    user: str
    expires: int


@attrs.frozen
class CommitDecision:
    """What one of the leader's pure cores (reconcile, autoscale) decided from the view and its
    observations: committed as it is, its preconditions guarding against a view that moved on."""

    decision: d.Decision


Command = Union[
    ActOnVirtualService,
    ApplyHierarchy,
    CommitDecision,
    CreateHierarchy,
    CreateObject,
    DeleteHierarchy,
    DeleteObject,
    EndSession,
    IssueSeEnrolment,
    PatchObject,
    PlaceVirtualService,
    RegisterServiceEngine,
    UpdateObject,
]


def decide(view: ConfigView, command: Command, now: float, *, seal: Optional[Sealer] = None) -> d.Decision:
    """The events and preconditions of one proposal for ``command``, or CommandError.

    ``seal``: seals the secrets a command writes (the node passes the cluster's; tests and
    simulations may store them as sent)."""
    if isinstance(command, CreateObject):
        return d.decide_create(view, command.kind, command.body, tenant=command.tenant, uuid=command.uuid, seal=seal)
    if isinstance(command, UpdateObject):
        return d.decide_update(view, _target(view, command.kind, command.uuid, command.tenant), command.body,
                               if_revision=command.if_revision, seal=seal)
    if isinstance(command, PatchObject):
        return d.decide_patch(view, _target(view, command.kind, command.uuid, command.tenant), command.patch, seal)
    if isinstance(command, DeleteObject):
        return d.decide_delete(view, _target(view, command.kind, command.uuid, command.tenant))
    if isinstance(command, CreateHierarchy):
        return macro.decide_macro_create(view, command.model_name, command.data, tenant=command.tenant, seal=seal)
    if isinstance(command, ApplyHierarchy):
        return macro.decide_macro_apply(view, command.model_name, command.data, tenant=command.tenant, seal=seal)
    if isinstance(command, DeleteHierarchy):
        return macro.decide_macro_delete(view, command.model_name, command.data, tenant=command.tenant)
    if isinstance(command, RegisterServiceEngine):
        return d.decide_register_se(view, command.body, uuid=command.uuid, proof=command.proof, now=now)
    if isinstance(command, IssueSeEnrolment):
        return d.decide_issue_enrolment(view, command.token_hash, command.name, command.ttl, now)
    if isinstance(command, PlaceVirtualService):
        return d.decide_place(view, _target(view, "virtualservice", command.vs_uuid, command.tenant), command.se_refs)
    if isinstance(command, ActOnVirtualService):
        vs = _target(view, "virtualservice", command.vs_uuid, command.tenant)
        return d.decide_vs_action(view, vs, command.action, command.body)
    if isinstance(command, EndSession):
        return d.decide_end_session(view, command.session_id, command.user, command.expires, now)
    if isinstance(command, CommitDecision):
        return command.decision
    raise TypeError(f"not a command: {type(command).__name__}")


def _target(view: ConfigView, kind: str, uuid: str, tenant: str) -> StoredObject:
    obj = view.get(uuid)
    if obj is None or obj.kind != kind or obj.tenant != tenant:
        raise d.CommandError(404, f"{kind} {uuid} does not exist")
    return obj
