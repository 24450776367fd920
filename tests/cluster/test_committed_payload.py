"""The event-store payload re-framed from the arriving entry equals encoding the applied commands."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cluster import decide as d
from cluster.pipeline import committed_payload
from storage import codec
from storage.events import Barrier, CommittedBatch, CommittedCommand, Precondition, Proposal, ProposalBatch
from tests.cluster.test_views import fresh_view, pool_body

_view = fresh_view()


def _proposal(i: int, name: str, with_pre: bool) -> Proposal:
    decision = d.decide_create(_view, "pool", pool_body(name), tenant="admin", uuid=d.new_uuid("pool"))
    pre = (Precondition(f"pool-{i}", i),) if with_pre else ()
    return Proposal(command_id=f"c{i}", based_on=i, time=1_700_000_000.0 + i / 7, preconditions=pre, events=decision.events)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.text(alphabet="abcxyz-_é", min_size=1, max_size=12), st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=8))
def test_reframed_payload_is_byte_identical_to_encoding(spec: list[tuple[str, bool, bool, bool]]) -> None:
    """Whatever mix of proposals and barriers arrives, and whichever of them applied, the stored
    bytes equal codec.encode(CommittedBatch(applied commands)) and decode to the same commands."""
    items: list[Any] = []
    for i, (name, with_pre, is_barrier, _applies) in enumerate(spec):
        items.append(Barrier(f"b{i}") if is_barrier else _proposal(i, name, with_pre))
    payload = codec.encode(ProposalBatch(items))
    applied = [(i, item) for i, item in enumerate(items) if isinstance(item, Proposal) and spec[i][3]]
    if not applied:
        return
    expected = codec.encode(CommittedBatch([CommittedCommand(p.command_id, p.time, p.events) for _i, p in applied]))
    assert committed_payload(codec.unpack(payload), applied) == expected
    assert codec.decode(expected).commands[0].events == applied[0][1].events


def test_an_entry_not_at_the_current_version_takes_the_encoding_path() -> None:
    """A batch envelope the re-framing does not recognise (older version) is encoded from the objects."""
    proposal = _proposal(1, "old", False)
    plain = codec.unpack(codec.encode(ProposalBatch([proposal])))
    plain[1] = 0  # as if written by an older version, which decoding would upcast
    expected = codec.encode(CommittedBatch([CommittedCommand(proposal.command_id, proposal.time, proposal.events)]))
    assert committed_payload(plain, [(0, proposal)]) == expected


def test_an_event_from_an_older_version_is_stored_upcast() -> None:
    """A v1 VirtualServicePlaced (proposed by an older node) is stored as the v2 it decodes to."""
    from storage.events import VirtualServicePlaced

    proposal = Proposal(command_id="old-event", based_on=1, time=1.5, preconditions=(),
                        events=(VirtualServicePlaced(vs_uuid="virtualservice-1", se_uuids=("serviceengine-1",)),))
    plain = codec.unpack(codec.encode(ProposalBatch([proposal])))
    event = plain[2]["items"][0][2]["events"][0]
    event[1] = 1
    del event[2]["pinned"]
    decoded = codec.decode_value(plain)
    assert decoded.items[0].events[0].pinned is True  # the v1 upcaster
    expected = codec.encode(CommittedBatch([CommittedCommand("old-event", 1.5, decoded.items[0].events)]))
    assert committed_payload(plain, [(0, decoded.items[0])]) == expected
