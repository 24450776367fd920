"""Apply: fold one committed Raft entry into the view. The one place check-then-evolve is written.

Pure and deterministic: every node applies the same entries in the same order and reaches the
same view, the same revisions and the same outcomes. For each item of the entry, in order:

- a ``Barrier`` changes nothing; its outcome is the revision the view is at;
- a ``Proposal`` is checked against the view as the earlier items left it (duplicate command id,
  stale precondition, broken invariant) and, when accepted, its events are folded in, one
  revision each.

The view is folded in place (a million-event replay must stay cheap); what changed comes back as
an :class:`Applied` value for the shell to persist and answer.
"""

from __future__ import annotations

from typing import Any, Union

import attrs

from cluster.views import Accepted, ConfigView, Outcome
from storage.events import Barrier, CommittedBatch, Proposal, ProposalBatch

__all__ = ["Applied", "apply", "replay"]


@attrs.frozen
class Applied:
    #: the revisions the entry's accepted events took (``first > last`` when none)
    first_revision: int
    last_revision: int
    #: ``(position in the entry, proposal)`` of every proposal that applied, in order
    committed: tuple[tuple[int, Proposal], ...]
    #: ``(command id or barrier nonce, outcome)`` for every item, in order
    outcomes: tuple[tuple[str, Outcome], ...]

    @property
    def events(self) -> list[Any]:
        """The events the entry added to the log, in revision order."""
        return [event for _position, proposal in self.committed for event in proposal.events]


def apply(view: ConfigView, raft_index: int, entry: Union[ProposalBatch, Proposal, Barrier]) -> Applied:
    """Fold ``entry`` (committed at ``raft_index``) into ``view``; what it did."""
    items = entry.items if isinstance(entry, ProposalBatch) else [entry]
    first = view.revision + 1
    committed: list[tuple[int, Proposal]] = []
    outcomes: list[tuple[str, Outcome]] = []
    for position, item in enumerate(items):
        if isinstance(item, Barrier):
            outcomes.append((item.nonce, Accepted(view.revision, view.revision)))
        elif isinstance(item, Proposal):
            outcome = view.check(item)
            if outcome is None:
                committed.append((position, item))
                outcome = view.evolve(raft_index, item.command_id, item.events)
            outcomes.append((item.command_id, outcome))
    view.note_raft_index(raft_index)
    return Applied(first, view.revision, tuple(committed), tuple(outcomes))


def replay(view: ConfigView, raft_index: int, batch: CommittedBatch) -> None:
    """Fold an event-store record (commands ``apply`` accepted once) back into ``view``: on
    restart, and when a node fills a gap from a peer. No check: the log already holds the verdict."""
    for command in batch.commands:
        view.evolve(raft_index, command.command_id, command.events)
