"""cluster.apply: one committed entry folded into the view, item by item, the same on every node."""

from __future__ import annotations

from cluster import decide as d
from cluster.apply import apply, replay
from cluster.views import Accepted, ConfigView, Duplicate, Rejected
from storage.events import Barrier, CommittedBatch, CommittedCommand, Proposal, ProposalBatch
from tests.cluster.test_views import fresh_view, pool_body


def _proposal(view: ConfigView, command_id: str, name: str) -> Proposal:
    decision = d.decide_create(view, "pool", pool_body(name), tenant="admin", uuid=d.new_uuid("pool"))
    return Proposal(command_id, view.revision, 0.0, decision.preconditions, decision.events)


def test_an_entry_applies_item_by_item_in_order() -> None:
    """A barrier, a new proposal, a duplicate of it and a clashing one: each gets its outcome, in
    order; only the new one takes a revision and is listed as committed."""
    view = fresh_view()
    first = _proposal(view, "c1", "p")
    clash = _proposal(view, "c2", "p")  # decided before c1 applied: its name is taken at apply
    entry = ProposalBatch([Barrier("b1"), first, first, clash])
    applied = apply(view, 7, entry)
    assert (applied.first_revision, applied.last_revision) == (1, 1)
    assert applied.committed == ((1, first),)
    assert applied.events == list(first.events)
    assert [key for key, _ in applied.outcomes] == ["b1", "c1", "c1", "c2"]
    outcomes = [o for _, o in applied.outcomes]
    assert outcomes[:3] == [Accepted(0, 0), Accepted(1, 1), Duplicate(Accepted(1, 1))]
    assert isinstance(outcomes[3], Rejected) and outcomes[3].code == 409
    assert view.raft_index == 7


def test_replaying_the_stored_record_gives_the_same_view() -> None:
    """Folding the committed commands of an entry back in (restart, catch-up) equals applying the entry."""
    live, replayed = fresh_view(), fresh_view()
    entry = ProposalBatch([_proposal(live, "c1", "a"), _proposal(live, "c2", "b")])
    applied = apply(live, 3, entry)
    replay(replayed, 3, CommittedBatch([CommittedCommand(p.command_id, p.time, p.events) for _i, p in applied.committed]))
    assert replayed.to_snapshot() == live.to_snapshot()
