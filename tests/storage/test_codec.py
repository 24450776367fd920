"""The envelope codec: round trips, upcasting, and refusal of bad input."""

from __future__ import annotations

import attrs
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import codec
from storage.events import Barrier, CommittedCommand, ObjectCreated, ObjectDeleted, ObjectUpdated, Precondition, Proposal

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False), st.text(max_size=20))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=20,
)
bodies = st.dictionaries(st.text(max_size=12), json_value, max_size=6)
names = st.text(min_size=1, max_size=30)
events = st.one_of(
    st.builds(ObjectCreated, kind=st.sampled_from(["pool", "vsvip"]), uuid=names, name=names, tenant=names, body=bodies),
    st.builds(ObjectUpdated, kind=st.sampled_from(["pool", "vsvip"]), uuid=names, name=names, tenant=names, body=bodies),
    st.builds(ObjectDeleted, kind=st.sampled_from(["pool", "vsvip"]), uuid=names, name=names, tenant=names),
)


@given(
    command_id=names,
    based_on=st.integers(0, 2**40),
    time=st.floats(0, 2e9),
    preconditions=st.lists(st.builds(Precondition, key=names, revision=st.integers(0, 2**40)), max_size=3),
    evs=st.lists(events, max_size=4),
)
def test_proposal_round_trips(command_id: str, based_on: int, time: float, preconditions: list, evs: list) -> None:
    """Any proposal decodes to an equal proposal."""
    proposal = Proposal(command_id, based_on, time, preconditions, evs)
    assert codec.decode(codec.encode(proposal)) == proposal


@given(evs=st.lists(events, min_size=1, max_size=4))
def test_committed_command_round_trips(evs: list) -> None:
    """What the store keeps decodes to the same events."""
    command = CommittedCommand("c", 1.0, evs)
    assert codec.decode(codec.encode(command)) == command


def test_unknown_tag_is_refused() -> None:
    """A tag this code never registered is a DecodeError, not a crash."""
    data = msgpack.packb(["NoSuchEvent", 1, {}])
    with pytest.raises(codec.DecodeError, match="unknown tag"):
        codec.decode(data)


def test_newer_version_is_refused() -> None:
    """An envelope from a newer version of the code is refused rather than misread."""
    data = msgpack.packb(["Barrier", 99, {"nonce": "x"}])
    with pytest.raises(codec.DecodeError, match="newer"):
        codec.decode(data)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02", msgpack.packb({"a": 1}), msgpack.packb(["Barrier", 1, {"bogus": 1}])])
def test_garbage_is_a_decode_error(data: bytes) -> None:
    """Bytes that are not an envelope raise DecodeError only."""
    with pytest.raises(codec.DecodeError):
        codec.decode(data)


@given(st.binary(max_size=64))
def test_random_bytes_never_raise_anything_but_decode_error(data: bytes) -> None:
    """Decoding arbitrary bytes either works or raises DecodeError."""
    try:
        codec.decode(data)
    except codec.DecodeError:
        pass


def test_old_versions_are_upcast() -> None:
    """A version-1 envelope of a class now at version 2 is upcast on decode."""

    @codec.registered("TestRenamedField", 2)
    @attrs.frozen
    class Renamed:
        new_name: str

    @codec.upcaster("TestRenamedField", 1)
    def _v1_to_v2(fields: dict) -> dict:
        return {"new_name": fields.pop("old_name")}

    old = msgpack.packb(["TestRenamedField", 1, {"old_name": "x"}])
    assert codec.decode(old) == Renamed("x")
    assert codec.decode(codec.encode(Barrier("n"))) == Barrier("n")
