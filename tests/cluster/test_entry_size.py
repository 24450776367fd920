"""Every Raft entry fits in a frame a node accepts (``cluster.raft.MAX_ENTRY_BYTES``).

Every node refuses a Raft frame longer than ``_pysyncobj_compat.MAX_FRAME_BYTES``; an entry that
could not fit would be resent and refused forever. ``RaftTuning`` refuses a batch size whose
frames could outgrow it, ``RaftLog.propose`` refuses a longer payload, and group commit
(``cluster.proposer.GroupCommit``) splits what it batches. For the group commit tests Raft is a
fake that applies what it is given at once, and the entry bound is lowered so that small items
cross it.
"""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pysyncobj.pickle
import pytest

from cluster import _pysyncobj_compat as compat
from cluster import proposer
from cluster.decide import CommandError
from cluster.proposer import GroupCommit, LeaderWatch
from cluster.raft import MAX_COMMAND_BYTES, MAX_ENTRY_BYTES, RaftError, RaftLog, RaftTuning
from cluster.views import Accepted
from storage import codec
from storage.events import Barrier

LIMIT = 2000


class _Raft:
    """Commits each entry at once and answers the writers waiting for its items, like the pipeline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, waiters: dict[str, list[asyncio.Future[Any]]]) -> None:
        self.loop = loop
        self.waiters = waiters
        self.entries: list[tuple[int, list[str]]] = []
        self.leader_reachable = True
        self.majority_connected = True

    def propose(self, payload: bytes) -> asyncio.Future[int]:
        future: asyncio.Future[int] = self.loop.create_future()
        if len(payload) > proposer.MAX_ENTRY_BYTES:
            future.set_exception(RaftError("entry_too_large"))
            return future
        nonces = [item.nonce for item in codec.decode(payload).items]
        self.entries.append((len(payload), nonces))
        index = len(self.entries)
        future.set_result(index)
        for nonce in nonces:
            for waiter in self.waiters.get(nonce, []):
                if not waiter.done():
                    waiter.set_result(Accepted(index, index))
        return future


def _commit_all(items: list[Barrier]) -> tuple[list[Any], _Raft]:
    async def main() -> tuple[list[Any], _Raft]:
        loop = asyncio.get_running_loop()
        waiters: dict[str, list[asyncio.Future[Any]]] = {}
        raft = _Raft(loop, waiters)
        group = GroupCommit(loop, raft, waiters, LeaderWatch(loop.time, raft), no_leader_grace=2.0)  # type: ignore[arg-type]
        deadline = loop.time() + 5.0
        outcomes = await asyncio.gather(*(group.commit(b.nonce, b, deadline) for b in items), return_exceptions=True)
        return outcomes, raft

    return asyncio.run(main())


@pytest.fixture
def small_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proposer, "MAX_ENTRY_BYTES", LIMIT)


def test_the_longest_entry_pysyncobj_may_send_fits_in_a_frame() -> None:
    """With the default tuning, an append_entries holding the longest entry stays under the frame cap."""
    assert compat.largest_frame(RaftTuning().batch_size_bytes, MAX_COMMAND_BYTES) <= compat.MAX_FRAME_BYTES


def test_a_batch_size_whose_frames_could_outgrow_the_cap_is_refused() -> None:
    """A tuning that could make a frame the peers refuse fails when it is made, not in replication."""
    with pytest.raises(ValueError, match="batch_size_bytes=8388608"):
        RaftTuning(batch_size_bytes=8 * 2**20)


def test_the_longest_payload_makes_a_command_within_max_command_bytes() -> None:
    """A payload of MAX_ENTRY_BYTES bytes that protocol-2 pickling doubles still fits MAX_COMMAND_BYTES."""
    payload = b"\xff" * MAX_ENTRY_BYTES

    command = b"\x00" + pysyncobj.pickle.dumps((2**31, (payload,)))  # as @replicated makes it

    assert 2 * MAX_ENTRY_BYTES < len(command) <= MAX_COMMAND_BYTES


@pytest.mark.usefixtures("small_entries")
def test_a_batch_too_big_for_one_entry_is_split_in_order() -> None:
    """Twelve items of ~600 bytes that arrive together go out as entries of at most LIMIT bytes,
    in the order they arrived, and every writer gets its outcome."""
    items = [Barrier(f"{i:02d}" + "x" * 600) for i in range(12)]

    outcomes, raft = _commit_all(items)

    assert all(isinstance(o, Accepted) for o in outcomes), outcomes
    assert [b.nonce for b in items] == [n for _size, nonces in raft.entries for n in nonces]
    assert len(raft.entries) > 1 and max(size for size, _ in raft.entries) <= LIMIT


@pytest.mark.usefixtures("small_entries")
def test_a_lone_item_too_big_for_one_entry_is_refused_with_413() -> None:
    """An item longer than an entry may be is refused (413) and proposed to no one; the others commit."""
    items = [Barrier("small-1"), Barrier("big" + "x" * (2 * LIMIT)), Barrier("small-2")]

    outcomes, raft = _commit_all(items)

    assert isinstance(outcomes[1], CommandError) and outcomes[1].code == 413, outcomes
    assert isinstance(outcomes[0], Accepted) and isinstance(outcomes[2], Accepted), outcomes
    assert ["small-1", "small-2"] == [n for _size, nonces in raft.entries for n in nonces]


def test_raft_log_refuses_a_payload_longer_than_an_entry_may_be() -> None:
    """RaftLog.propose fails a payload over MAX_ENTRY_BYTES at once, before pysyncobj sees it."""

    async def main() -> BaseException | None:
        shell = types.SimpleNamespace(_loop=asyncio.get_running_loop(), _replica=None)
        future = RaftLog.propose(shell, b"x" * (MAX_ENTRY_BYTES + 1))  # type: ignore[arg-type]
        return future.exception()

    error = asyncio.run(main())

    assert isinstance(error, RaftError) and error.reason == "entry_too_large"
