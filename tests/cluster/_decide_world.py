"""Helpers for the tests of ``cluster.commands.decide``: a view grown only through ``decide`` and
apply (``check`` then ``evolve``), and a way to catch what ``decide`` refuses."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from cluster import decide as d
from cluster.commands import Command, CreateObject, RegisterServiceEngine, decide
from cluster.views import ConfigView
from storage.events import Proposal

__all__ = ["apply", "commit", "create", "fresh_view", "refusal", "register_se"]

_ids = itertools.count(1)


def fresh_view() -> ConfigView:
    return ConfigView.with_builtins(d.builtin_events())


def commit(view: ConfigView, events: tuple[Any, ...]) -> None:
    """Commit ``events`` as the leader's own decision would be (no preconditions)."""
    proposal = Proposal(f"w{next(_ids)}", view.revision, 0.0, (), events)
    assert view.check(proposal) is None
    view.evolve(view.raft_index + 1, proposal.command_id, proposal.events)


def apply(view: ConfigView, command: Command) -> str:
    """Decide ``command`` and commit it; returns the uuid the decision was about."""
    decision = decide(view, command, 0.0)
    proposal = Proposal(f"w{next(_ids)}", view.revision, 0.0, decision.preconditions, decision.events)
    outcome = view.check(proposal)
    assert outcome is None, outcome
    view.evolve(view.raft_index + 1, proposal.command_id, proposal.events)
    return decision.uuid


def create(view: ConfigView, kind: str, body: dict[str, Any], tenant: str = "admin") -> str:
    return apply(view, CreateObject(kind, body, tenant, d.new_uuid(kind)))


def register_se(view: ConfigView, name: str, group: str = "Default-Group", **body: Any) -> str:
    group_ref = f"/api/serviceenginegroup?name={group}"
    return apply(view, RegisterServiceEngine({"name": name, "se_group_ref": group_ref, **body}, d.new_uuid("serviceengine")))


def refusal(view: ConfigView, command: Command) -> d.CommandError:
    """What ``decide`` raised for ``command`` (the test fails if it decided instead)."""
    with pytest.raises(d.CommandError) as info:
        decide(view, command, 0.0)
    return info.value
