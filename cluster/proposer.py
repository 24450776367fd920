"""Getting proposals committed: group commit through pysyncobj, retries, and when to give up.

A writer hands an item (a ``Proposal`` or a ``Barrier``) and a deadline to :meth:`GroupCommit.commit`
and gets the outcome the apply pipeline reached for its key (command id or barrier nonce), or
:class:`NoQuorum` (nothing was handed to a leader) or :class:`OutcomeUnknown` (it may have
committed), or a 413 ``CommandError`` (an item longer than one Raft entry may be). Items that
arrive while our entries are in flight are batched into the next entry (at most
``MAX_ENTRY_BYTES`` of them), so one Raft round trip and one fsync serve many writes. The :class:`LeaderWatch` says how long the
node has been without a reachable leader, so a node cut off from the majority answers at once
instead of at the deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Optional

from cluster.decide import CommandError
from cluster.raft import MAX_ENTRY_BYTES, RaftError, RaftLog
from cluster.views import Outcome
from storage import codec
from storage.events import ProposalBatch

__all__ = [
    "BATCH_MAX",
    "ENTRY_ANSWER_TIMEOUT",
    "LEADER_WATCH_PERIOD",
    "MAX_INFLIGHT_ENTRIES",
    "NO_LEADER_GRACE_MIN",
    "GroupCommit",
    "LeaderWatch",
    "NoQuorum",
    "OutcomeUnknown",
]

# How often the loop notes whether a leader is reachable, and the least time without one after
# which a write or read is answered 503 at once instead of at its deadline.
LEADER_WATCH_PERIOD = 0.1
NO_LEADER_GRACE_MIN = 2.0
# Retriable pysyncobj failures: the proposal did not commit through this attempt, and a retry
# with the same command id is safe (duplicates are dropped at apply).
_RETRY_REASONS = {"missing_leader", "not_leader", "leader_changed", "discarded", "unknown_outcome", "queue_full", "apply_failed", "answer_timeout"}
# Group commit: at most this many Raft entries of ours in flight; what arrives meanwhile is
# batched into the next entry (up to BATCH_MAX items), so one Raft round trip and one fsync serve
# many writes. One in flight gave the largest batches and the best throughput (1 235 writes/s
# against 1 046 with 2 and 851 with 8, 64 writers); a lone write still goes out at once.
MAX_INFLIGHT_ENTRIES = 1
BATCH_MAX = 512
# pysyncobj may never answer a forwarded proposal (no timeout of its own); after this long the
# batch's writers retry with the same command ids and the in-flight slot is released.
ENTRY_ANSWER_TIMEOUT = 2.0


class NoQuorum(Exception):
    """No leader could be reached before the deadline and nothing was handed to one."""


class OutcomeUnknown(Exception):
    """The proposal may or may not have committed (the leader was lost mid-commit)."""

    def __init__(self, command_id: str) -> None:
        super().__init__(command_id)
        self.command_id = command_id


class LeaderWatch:
    """The leaderless clock: how long this node has continuously seen no reachable leader.

    ``now`` is the loop's clock. :meth:`note` runs every ``LEADER_WATCH_PERIOD`` (:meth:`run`).
    """

    def __init__(self, now: Callable[[], float], raft: Any) -> None:
        self._now = now
        self.raft = raft
        # When the watcher first saw no reachable leader (None while there is one), and when it last ran.
        self._lost_at: Optional[float] = None
        self._watched_at = now()
        self._majority_connected = False

    async def run(self) -> None:
        while True:
            self.note()
            await asyncio.sleep(LEADER_WATCH_PERIOD)

    def note(self) -> bool:
        """Look at Raft once; True while a leader is reachable."""
        now = self._now()
        self._watched_at = now
        majority = self.raft.majority_connected
        regained, self._majority_connected = majority and not self._majority_connected, majority
        if self.raft.leader_reachable:
            self._lost_at = None
            return True
        if self._lost_at is None or regained:
            # A node that rejoins a majority after a long time alone is owed one election
            # before it says "no quorum" at once (its raised term usually forces one).
            self._lost_at = now
        return False

    def leaderless_for(self) -> float:
        """Seconds this node has been seen without a reachable leader, continuously (0 while it has one).

        Only what the watcher saw counts: after the loop stalled (a long apply, a big snapshot;
        the tick thread starved with it, so an election may be under way) the clock restarts.
        """
        stalled = self._now() - self._watched_at > 3 * LEADER_WATCH_PERIOD
        if self.note():
            return 0.0
        if stalled:
            self._lost_at = self._now()
            return 0.0
        assert self._lost_at is not None
        return self._now() - self._lost_at


class GroupCommit:
    """Proposes items through Raft, batched, and waits for their outcome in the apply pipeline.

    ``waiters`` is the apply pipeline's table (key -> futures it resolves once the entry holding
    the key is applied and synced); ``no_leader_grace`` is how long without a leader counts as cut off.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, raft: RaftLog, waiters: dict[str, list[asyncio.Future[Any]]],
        leader: LeaderWatch, no_leader_grace: float,
    ) -> None:
        self._loop = loop
        self.raft = raft
        self._waiters = waiters
        self._leader = leader
        self._no_leader_grace = no_leader_grace
        self._outbox: list[tuple[Any, asyncio.Future[int]]] = []
        self._inflight = 0
        self._send_scheduled = False

    async def commit(self, key: str, item: Any, deadline: float) -> Outcome:
        """Propose ``item`` (retrying under ``key`` until ``deadline``) and return its outcome."""
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._waiters.setdefault(key, []).append(waiter)
        maybe_sent = False
        backoff = 0.01
        try:
            while True:
                remaining = deadline - self._loop.time()
                if remaining <= 0:
                    if maybe_sent:
                        raise OutcomeUnknown(key)
                    raise NoQuorum()
                proposal = self._enqueue(item)
                await asyncio.wait({waiter, proposal}, timeout=min(remaining, 2.0), return_when=asyncio.FIRST_COMPLETED)
                if waiter.done():
                    proposal.cancel()
                    return waiter.result()
                if proposal.done() and not proposal.cancelled():
                    exc = proposal.exception()
                    if exc is None:
                        # Committed: the loop applies it right after this callback; wait for that.
                        maybe_sent = True
                        await asyncio.wait({waiter}, timeout=max(0.0, deadline - self._loop.time()))
                        if waiter.done():
                            return waiter.result()
                        continue
                    if isinstance(exc, RaftError) and exc.reason == "entry_too_large":
                        raise CommandError(
                            413, f"the change encodes to more than {MAX_ENTRY_BYTES} bytes, the most one Raft entry carries; "
                            "split it into smaller requests"
                        )
                    if isinstance(exc, RaftError) and exc.reason in _RETRY_REASONS:
                        if exc.reason != "missing_leader":
                            maybe_sent = True
                        elif self._leader.leaderless_for() > self._no_leader_grace:
                            if len(self._waiters.get(key, ())) > 1:
                                # Another attempt of this command id is in flight here: its
                                # outcome is this one's too, and it may have been sent.
                                maybe_sent = True
                            # Longer without a leader than an election takes: cut off from the
                            # majority. Answer now rather than at the deadline.
                            if maybe_sent:
                                raise OutcomeUnknown(key)
                            raise NoQuorum()
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 0.1)
                        continue
                    raise exc
                # Attempt timed out with no answer: pysyncobj may have handed it to a leader.
                proposal.cancel()
                maybe_sent = True
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._waiters.pop(key, None)

    def _enqueue(self, item: Any) -> "asyncio.Future[int]":
        future: asyncio.Future[int] = self._loop.create_future()
        # The writer may stop listening (its command applied through another attempt).
        future.add_done_callback(_consume_exception)
        self._outbox.append((item, future))
        if not self._send_scheduled:
            self._send_scheduled = True
            self._loop.call_soon(self._send_batches)
        return future

    def _send_batches(self) -> None:
        self._send_scheduled = False
        while self._outbox and self._inflight < MAX_INFLIGHT_ENTRIES:
            batch, self._outbox = self._outbox[:BATCH_MAX], self._outbox[BATCH_MAX:]
            batch = [(item, f) for item, f in batch if not f.done()]
            try:
                payload = codec.encode(ProposalBatch([item for item, _f in batch]))
            except (TypeError, ValueError, OverflowError):
                # An item the log cannot hold (the API refuses such values first): it fails
                # alone, the rest of its batch goes on.
                kept = []
                for item, f in batch:
                    if _encodes(item):
                        kept.append((item, f))
                    else:
                        f.set_exception(RaftError("unencodable"))
                batch = kept
                payload = codec.encode(ProposalBatch([item for item, _f in batch]))
            if not batch:
                continue
            while len(payload) > MAX_ENTRY_BYTES and len(batch) > 1:
                # Too big for one Raft entry: send the first half now, the rest next, in order.
                batch, rest = batch[: len(batch) // 2], batch[len(batch) // 2 :]
                self._outbox[:0] = rest
                payload = codec.encode(ProposalBatch([item for item, _f in batch]))
            # A lone item still too big fails at once (entry_too_large).
            entry = self.raft.propose(payload)
            self._inflight += 1
            self._release_when_answered(entry, [f for _item, f in batch])

    def _release_when_answered(self, entry: Any, futures: list[asyncio.Future[int]]) -> None:
        """Frees the in-flight slot and answers the batch's writers once pysyncobj answers, or
        after ENTRY_ANSWER_TIMEOUT (as a retriable ``answer_timeout``), whichever comes first."""
        released = False

        def release(_: Any = None) -> None:
            nonlocal released
            if released:
                return
            released = True
            self._inflight -= 1
            for f in futures:
                if f.done():
                    continue
                if not entry.done():
                    f.set_exception(RaftError("answer_timeout"))
                elif entry.exception() is not None:
                    f.set_exception(entry.exception())
                else:
                    f.set_result(entry.result())
            if self._outbox and not self._send_scheduled:
                self._send_scheduled = True
                self._loop.call_soon(self._send_batches)

        entry.add_done_callback(release)
        self._loop.call_later(ENTRY_ANSWER_TIMEOUT, release)


def _encodes(item: Any) -> bool:
    try:
        codec.encode(item)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _consume_exception(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()
