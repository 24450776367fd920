"""One controller node: the event store, the config view and the Raft shell, wired on one loop.

Ordering duties, in the order they happen for every committed entry:
1. pysyncobj's tick thread hands ``(raft_index, payload)`` to this loop (``_on_committed``).
2. The entry is checked against the view and, if accepted, appended to the event store and
   folded into the view; outcomes wait in ``_unsynced``.
3. At the end of the burst ``_flush`` fsyncs the store, and only then resolves the waiting API
   requests (ack after fsync), wakes watchers, and tells pysyncobj it may compact up to here.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import secrets
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Callable, Optional

import aiohttp
import attrs
import structlog

from cluster.apply import apply, replay
from cluster.commands import Command, decide
from cluster.config import NodeConfig
from cluster.decide import CommandError, Decision, builtin_events
from cluster.raft import RaftError, RaftLog, RaftTuning
from cluster.slices import SliceCache
from cluster.views import Accepted, ConfigView, Duplicate, Outcome, Rejected
from storage import codec, failpoints
from storage.events import Barrier, CommittedBatch, CommittedCommand, ObjectDeleted, Proposal, ProposalBatch
from storage.file import FileLog
from storage.log import Record
from storage.snapshots import SnapshotStore

__all__ = ["Controller", "NoQuorum", "OutcomeUnknown"]

log = structlog.get_logger(__name__)

# Retriable pysyncobj failures: the proposal did not commit through this attempt, and a retry
# with the same command id is safe (duplicates are dropped at apply).
# How often the loop notes whether a leader is reachable, and the least time without one after
# which a write or read is answered 503 at once instead of at its deadline.
LEADER_WATCH_PERIOD = 0.1
NO_LEADER_GRACE_MIN = 2.0
_RETRY_REASONS = {"missing_leader", "not_leader", "leader_changed", "discarded", "unknown_outcome", "queue_full", "apply_failed", "answer_timeout"}
VIEW_SNAPSHOT_EVERY = 10_000
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


@attrs.define
class _Catchup:
    """A snapshot install left a gap between our store and the raft log: fill it from peers first."""

    until_raft_index: int
    buffered: list[tuple[int, bytes]] = attrs.Factory(list)


class Controller:
    def __init__(self, config: NodeConfig, *, tuning: Optional[RaftTuning] = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.tuning = tuning or RaftTuning.from_env(durable_journal=config.durable_journal)
        self.data_dir = Path(config.data_dir)
        self.log = log.bind(node_id=config.node_id)
        self.store: FileLog
        self.snapshots: SnapshotStore
        self.view: ConfigView
        self.raft: RaftLog
        self.started_at = time.time()
        self._loop: asyncio.AbstractEventLoop
        self._pending: dict[str, list[asyncio.Future[Any]]] = {}
        self._unsynced: list[tuple[str, Any]] = []
        self._flush_scheduled = False
        self._applied_raft_index = 0  # processed and synced; read by the tick thread
        self._changed = asyncio.Condition()
        self._catchup: Optional[_Catchup] = None
        self._barrier_lock = asyncio.Lock()
        self._last_view_snapshot = 0
        self._http: Optional[aiohttp.ClientSession] = None
        self._pending_raft_index = 0
        self.slices = SliceCache()
        # What each SE last reported to this node (SEs report to every controller): runtime only.
        self.se_status: dict[str, dict[str, Any]] = {}
        # The newest client request logs per VS uuid, as SEs send them (bounded; runtime only).
        self.request_logs: dict[str, collections.deque[dict[str, Any]]] = {}
        self._outbox: list[tuple[Any, asyncio.Future[int]]] = []
        self._inflight = 0
        self._send_scheduled = False
        self._syncing = False
        self._flush_again = False
        # When the watcher first saw no reachable leader (None while there is one), and when it last ran.
        self._leader_lost_at: Optional[float] = None
        self._leader_watched_at = 0.0
        self._majority_connected = False
        self._leader_watch: Optional[asyncio.Task[None]] = None
        # One thread, so syncs complete in the order they were started.
        self._sync_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The event store holds secrets in clear until they are encrypted at rest: owner only.
        os.chmod(self.data_dir, 0o700)
        self.store = FileLog(self.data_dir / "events")
        self.snapshots = SnapshotStore(self.data_dir / "snapshots")
        self.view = self._load_view()
        self._applied_raft_index = self.store.last_raft_index
        self._last_view_snapshot = self.view.revision
        self.slices.refresh(self.view)
        self.log = self.log.bind(revision=self.view.revision)
        self.log.info("view_loaded", revision=self.view.revision, raft_index=self.view.raft_index, objects=len(self.view))
        self.raft = await self._loop.run_in_executor(None, self._make_raft)
        self._leader_watched_at = self._loop.time()
        self._leader_watch = self._loop.create_task(self._watch_leader())

    def _make_raft(self) -> RaftLog:
        return RaftLog(
            self_addr=self.config.raft_addr,
            peers=[p.raft_addr for p in self.config.peers],
            data_dir=str(self.data_dir / "raft"),
            cluster_secret=self.config.cluster_secret,
            loop=self._loop,
            on_committed=self._on_committed,
            on_snapshot_installed=self._on_snapshot_installed,
            applied_index=lambda: self._applied_raft_index,
            store_position=lambda: self.store.last_raft_index,
            tuning=self.tuning,
        )

    def _load_view(self) -> ConfigView:
        snap = self.snapshots.latest()
        if snap is not None and snap.revision <= self.store.last_revision:
            view = ConfigView.from_snapshot(snap.payload)
        else:
            view = ConfigView.with_builtins(builtin_events())
        for record in self.store.read_from_revision(view.revision + 1):
            if record.first_revision != view.revision + 1:
                raise RuntimeError(f"event store record at revision {record.first_revision} does not follow {view.revision}")
            replay(view, record.raft_index, codec.decode(record.payload))
        return view

    async def stop(self) -> None:
        if self._leader_watch is not None:
            self._leader_watch.cancel()
        if self._http is not None:
            await self._http.close()
        raft = getattr(self, "raft", None)
        if raft is not None:
            await self._loop.run_in_executor(None, raft.close)
        self._sync_executor.shutdown(wait=True)
        store = getattr(self, "store", None)
        if store is not None:
            store.sync()
            store.close()

    async def _watch_leader(self) -> None:
        while True:
            self._note_leader()
            await asyncio.sleep(LEADER_WATCH_PERIOD)

    def _note_leader(self) -> bool:
        now = self._loop.time()
        self._leader_watched_at = now
        majority = self.raft.majority_connected
        regained, self._majority_connected = majority and not self._majority_connected, majority
        if self.raft.leader_reachable:
            self._leader_lost_at = None
            return True
        if self._leader_lost_at is None or regained:
            # A node that rejoins a majority after a long time alone is owed one election
            # before it says "no quorum" at once (its raised term usually forces one).
            self._leader_lost_at = now
        return False

    def leaderless_for(self) -> float:
        """Seconds this node has been seen without a reachable leader, continuously (0 while it has one).

        Only what the watcher saw counts: after the loop stalled (a long apply, a big snapshot;
        the tick thread starved with it, so an election may be under way) the clock restarts.
        """
        stalled = self._loop.time() - self._leader_watched_at > 3 * LEADER_WATCH_PERIOD
        if self._note_leader():
            return 0.0
        if stalled:
            self._leader_lost_at = self._loop.time()
            return 0.0
        assert self._leader_lost_at is not None
        return self._loop.time() - self._leader_lost_at

    # -- the committed pipeline (loop thread) --------------------------------------------------

    def _on_committed(self, raft_index: int, payload: bytes) -> None:
        if self._catchup is not None:
            self._catchup.buffered.append((raft_index, payload))
            return
        self._apply_entry(raft_index, payload)

    def _apply_entry(self, raft_index: int, payload: bytes) -> None:
        if raft_index <= self.view.raft_index:
            # Already in the store (replayed journal after a restart): the view holds it.
            self._schedule_flush(raft_index)
            return
        try:
            plain = codec.unpack(payload)
            entry = codec.decode_value(plain)
        except codec.DecodeError as exc:
            # Deterministic on every node: a payload we cannot read is skipped everywhere.
            self.log.error("entry_undecodable", raft_index=raft_index, error=str(exc))
            self.view.note_raft_index(raft_index)
            self._schedule_flush(raft_index)
            return
        if not isinstance(entry, ProposalBatch):
            self.log.error("entry_unexpected", raft_index=raft_index, type=type(entry).__name__)
            self.view.note_raft_index(raft_index)
            self._schedule_flush(raft_index)
            return
        applied = apply(self.view, raft_index, entry)
        self._unsynced.extend(applied.outcomes)
        count = applied.last_revision - applied.first_revision + 1
        if applied.committed and count > 0:
            self.store.append([Record(raft_index, applied.first_revision, count, committed_payload(plain, list(applied.committed)))])
        self._schedule_flush(raft_index)

    def _schedule_flush(self, raft_index: int) -> None:
        self._pending_raft_index = raft_index
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Make everything applied so far durable (fsync on a thread), then answer its writers."""
        self._flush_scheduled = False
        if self._syncing:
            self._flush_again = True
            return
        self._syncing = True
        outcomes, self._unsynced = self._unsynced, []
        raft_index = self._pending_raft_index
        make_durable = self.store.prepare_sync()
        done = self._loop.run_in_executor(self._sync_executor, make_durable)
        done.add_done_callback(lambda f: self._flushed(f, outcomes, raft_index))

    def _flushed(self, sync: "asyncio.Future[None]", outcomes: list[tuple[str, Any]], raft_index: int) -> None:
        self._syncing = False
        if sync.exception() is not None:
            # A failed fsync means the page cache can no longer be trusted: stop rather than ack.
            self.log.critical("event_store_sync_failed", error=str(sync.exception()))
            os._exit(70)
        failpoints.hit("store.after_sync")
        self._applied_raft_index = raft_index
        for key, outcome in outcomes:
            for future in self._pending.pop(key, ()):
                if not future.done():
                    future.set_result(outcome)
        self.raft.notify_applied()
        self.raft.maybe_compact(self._applied_raft_index)
        # The interval grows with the view (a snapshot costs O(objects)), so its cost per event stays bounded.
        if self.view.revision - self._last_view_snapshot >= max(VIEW_SNAPSHOT_EVERY, len(self.view)):
            self._last_view_snapshot = self.view.revision
            self.snapshots.save(self.view.revision, self.view.raft_index, self.view.to_snapshot())
        if self.view.list("serviceengine"):
            self.slices.refresh(self.view)
        self._loop.create_task(self._wake_watchers())
        if self._flush_again or self._unsynced:
            self._flush_again = False
            self._schedule_flush(self._pending_raft_index)

    async def _wake_watchers(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_slice(self, se_uuid: str, newer_than: int, timeout: float) -> Optional[dict[str, Any]]:
        """The SE's slice once its version is above ``newer_than`` (None on timeout or if the SE is gone)."""

        def ready() -> bool:
            current = self.slices.get(se_uuid)
            return current is None or current["revision"] > newer_than

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout)
            except asyncio.TimeoutError:
                return None
        return self.slices.get(se_uuid)

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        """Wait until the view reaches ``revision`` (or ``timeout`` passes); True when reached."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.view.revision >= revision), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    # -- catch-up after a snapshot install -----------------------------------------------------

    def _on_snapshot_installed(self, store_raft_index: int) -> None:
        if store_raft_index <= self.store.last_raft_index or self._catchup is not None:
            return
        self.log.warning("catchup_needed", have=self.store.last_raft_index, need=store_raft_index)
        self._catchup = _Catchup(store_raft_index)
        self._loop.create_task(self._fill_gap())

    async def _fill_gap(self) -> None:
        assert self._catchup is not None
        while self.store.last_raft_index < self._catchup.until_raft_index:
            for peer in self.config.peers:
                try:
                    records = await self._fetch_records(peer.api_url, self.store.last_raft_index)
                except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                    self.log.warning("catchup_peer_failed", peer=peer.node_id, error=str(exc))
                    continue
                for record in records:
                    if record.raft_index > self._catchup.until_raft_index:
                        break
                    self.store.append([record])
                    replay(self.view, record.raft_index, codec.decode(record.payload))
                self.store.sync()
                if records:
                    break
            else:
                await asyncio.sleep(0.2)
        buffered, self._catchup = self._catchup.buffered, None
        self.log.info("catchup_done", raft_index=self.store.last_raft_index, revision=self.view.revision)
        for raft_index, payload in buffered:
            self._apply_entry(raft_index, payload)

    async def _fetch_records(self, api_url: str, after_raft_index: int) -> list[Record]:
        import msgpack

        http = await self.http()
        async with http.get(
            f"{api_url}/internal/records",
            params={"after_raft_index": str(after_raft_index), "limit": "5000"},
            headers={"Authorization": f"Bearer {self.internal_token}"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            if resp.status != 200:
                raise ValueError(f"peer answered {resp.status}")
            body = await resp.read()
        return [Record(*item) for item in msgpack.unpackb(body, raw=False)]

    @property
    def internal_token(self) -> str:
        import hashlib

        return hashlib.sha256(b"avictl-internal\0" + self.config.cluster_secret.encode()).hexdigest()

    async def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self._http

    # -- writes and reads ----------------------------------------------------------------------

    async def write(
        self,
        command: Command,
        *,
        command_id: Optional[str] = None,
        timeout: float = 10.0,
    ) -> tuple[Decision, Accepted]:
        """Decide ``command`` against the view and commit; re-decide when a concurrent write made it stale.

        Raises CommandError for refusals, NoQuorum or OutcomeUnknown when it could not finish.
        """
        command_id = command_id or uuidlib.uuid4().hex
        deadline = self._loop.time() + timeout
        caught_up = False
        for _attempt in range(5):
            earlier = self.view.accepted_command(command_id)
            if earlier is not None:
                # A retry of a command that was applied (maybe after its first answer was lost).
                return self._decision_of(command_id, earlier), earlier
            try:
                decision = decide(self.view, command, time.time())
            except CommandError:
                if caught_up:
                    raise
                # This node may not have applied writes another node acknowledged (a ref to an
                # object created a moment ago): catch up once, then decide again.
                await self.barrier(max(0.1, deadline - self._loop.time()))
                caught_up = True
                continue
            if not decision.events:
                return decision, Accepted(self.view.revision, self.view.revision)
            proposal = Proposal(
                command_id=command_id,
                based_on=self.view.revision,
                time=time.time(),
                preconditions=decision.preconditions,
                events=decision.events,
            )
            outcome = await self._commit(command_id, proposal, deadline)
            if isinstance(outcome, Accepted):
                if decision.uuid and self.view.get(decision.uuid) is None and not _deletes(decision):
                    # An earlier attempt of this command id was the one applied (its first answer was lost).
                    return self._decision_of(command_id, outcome), outcome
                return decision, outcome
            if isinstance(outcome, Duplicate):
                return self._decision_of(command_id, outcome.original), outcome.original
            assert isinstance(outcome, Rejected)
            if outcome.code == 412 or (outcome.code in (404, 409) and not caught_up):
                # A concurrent write changed what this decision read, or this node decided on a
                # view behind what was already committed: catch up and decide again.
                await self.barrier(max(0.1, deadline - self._loop.time()))
                caught_up = True
                continue
            raise CommandError(outcome.code, outcome.message, outcome.field)
        raise CommandError(409, "the object kept changing under concurrent writes; try again", None)

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
            futures = [f for _item, f in batch if not f.done()]
            if not futures:
                continue
            entry = self.raft.propose(codec.encode(ProposalBatch([item for item, f in batch if not f.done()])))
            self._inflight += 1
            released = False

            def release(_: Any = None, futures: list[asyncio.Future[int]] = futures, entry: Any = entry) -> None:
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

    def _decision_of(self, command_id: str, accepted: Accepted) -> Decision:
        for record in self.store.read_from_revision(accepted.first_revision, limit=1):
            for command in codec.decode(record.payload).commands:
                if command.command_id == command_id:
                    target = command.events[0]
                    return Decision(command.events, (), getattr(target, "uuid", None) or getattr(target, "vs_uuid", ""))
        return Decision((), (), "")

    async def _commit(self, key: str, item: Any, deadline: float) -> Outcome:
        waiter: asyncio.Future[Any] = self._loop.create_future()
        self._pending.setdefault(key, []).append(waiter)
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
                done, _ = await asyncio.wait({waiter, proposal}, timeout=min(remaining, 2.0), return_when=asyncio.FIRST_COMPLETED)
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
                    if isinstance(exc, RaftError) and exc.reason in _RETRY_REASONS:
                        if exc.reason != "missing_leader":
                            maybe_sent = True
                        elif self.leaderless_for() > self._no_leader_grace():
                            if len(self._pending.get(key, ())) > 1:
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
            waiters = self._pending.get(key)
            if waiters is not None:
                if waiter in waiters:
                    waiters.remove(waiter)
                if not waiters:
                    self._pending.pop(key, None)

    def _no_leader_grace(self) -> float:
        # An election needs at most about one raftMaxTimeout after the leader is lost; three
        # cover a lost first round on a loaded machine.
        return max(NO_LEADER_GRACE_MIN, 3 * self.tuning.raft_max_timeout)

    async def barrier(self, timeout: float = 5.0) -> int:
        """Linearizable read point: after this returns, the view holds every write acknowledged before the call."""
        nonce = "barrier-" + secrets.token_hex(8)
        deadline = self._loop.time() + timeout
        outcome = await self._commit(nonce, Barrier(nonce), deadline)
        assert isinstance(outcome, Accepted)
        return outcome.last_revision

    # -- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        raft = self.raft.status()
        return {
            "id": self.node_id,
            "api": self.config.api_url,
            "raft": self.config.raft_addr,
            "role": raft["role"],
            "term": raft["term"],
            "commit_index": raft["commit_index"],
            "applied_index": self._applied_raft_index,
            "applied_revision": self.view.revision,
            "leader": raft["leader"],
            "has_quorum": raft["has_quorum"],
        }


def committed_payload(plain_batch: Any, committed: list[tuple[int, Proposal]]) -> bytes:
    """The event-store payload for the applied proposals of one entry: a CommittedBatch.

    ``plain_batch`` is the entry as unpacked (a ProposalBatch envelope) and ``committed`` the
    (position, proposal) pairs that applied. Each command's events are kept exactly as they
    arrived (plain msgpack), re-framed, instead of encoding every event again on every node; the
    bytes equal ``codec.encode(CommittedBatch(...))``. Anything not at its current version takes
    the encoding path.
    """
    items = (codec.current_fields(plain_batch, ProposalBatch) or {}).get("items")
    framed: list[Any] = []
    for index, proposal in committed:
        fields = codec.current_fields(items[index], Proposal) if isinstance(items, list) and index < len(items) else None
        events = fields.get("events") if fields is not None else None
        if not isinstance(events, list) or not all(codec.is_current(e) for e in events):
            return codec.encode(
                CommittedBatch([CommittedCommand(command_id=p.command_id, time=p.time, events=p.events) for _i, p in committed])
            )
        framed.append(codec.envelope_of(CommittedCommand, {"command_id": proposal.command_id, "time": proposal.time, "events": events}))
    return codec.pack(codec.envelope_of(CommittedBatch, {"commands": framed}))


def _consume_exception(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


def _deletes(decision: Decision) -> bool:
    return any(isinstance(e, ObjectDeleted) for e in decision.events)
