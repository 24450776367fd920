"""The apply pipeline of a controller node: committed Raft entries into the view and the event
store, made durable, then answered.

Ordering duties, in the order they happen for every committed entry:
1. pysyncobj's tick thread hands ``(raft_index, payload)`` to the loop (``on_committed``).
2. The entry is applied to the view (:func:`cluster.apply.apply`) and, if anything was accepted,
   appended to the event store; its outcomes wait in ``_unsynced``.
3. At the end of the burst ``_flush`` fsyncs the store, and only then resolves the waiting
   writers (ack after fsync), wakes watchers, and tells pysyncobj it may compact up to here.
While a catch-up from peers fills a gap in the store (``hold``), committed entries are kept in
order and applied once it is filled (``release``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
from typing import TYPE_CHECKING, Any, Optional

from cluster.apply import apply
from cluster.slices import SliceCache
from cluster.views import ConfigView
from storage import codec, failpoints
from storage.events import CommittedBatch, CommittedCommand, Proposal, ProposalBatch
from storage.file import FileLog
from storage.log import Record
from storage.snapshots import SnapshotStore

if TYPE_CHECKING:
    from cluster.raft import RaftLog

__all__ = ["ApplyPipeline", "VIEW_SNAPSHOT_EVERY", "committed_payload"]

VIEW_SNAPSHOT_EVERY = 10_000


class ApplyPipeline:
    def __init__(self, loop: asyncio.AbstractEventLoop, store: FileLog, snapshots: SnapshotStore, view: ConfigView, log: Any) -> None:
        self._loop = loop
        self.store = store
        self.snapshots = snapshots
        self.view = view
        self.log = log
        self.slices = SliceCache()
        self.slices.refresh(view)
        #: processed and synced; read by pysyncobj's tick thread (what it may compact)
        self.applied_raft_index = store.last_raft_index
        #: command id or barrier nonce -> the writers waiting for its outcome (the proposer registers them)
        self.waiters: dict[str, list[asyncio.Future[Any]]] = {}
        #: set once Raft runs (no entry is committed before)
        self.raft: Optional["RaftLog"] = None
        self._unsynced: list[tuple[str, Any]] = []
        self._flush_scheduled = False
        self._syncing = False
        self._flush_again = False
        self._pending_raft_index = 0
        self._last_view_snapshot = view.revision
        self._held: Optional[list[tuple[int, bytes]]] = None
        self._changed = asyncio.Condition()
        # One thread, so syncs complete in the order they were started.
        self._sync_executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fsync")

    def close(self) -> None:
        self._sync_executor.shutdown(wait=True)

    # -- committed entries (loop thread) -------------------------------------------------------

    def on_committed(self, raft_index: int, payload: bytes) -> None:
        if self._held is not None:
            self._held.append((raft_index, payload))
            return
        self._apply_entry(raft_index, payload)

    def hold(self) -> bool:
        """Keep committed entries aside until :meth:`release` (a gap in the store is being filled);
        False when they are already held."""
        if self._held is not None:
            return False
        self._held = []
        return True

    def release(self) -> None:
        """Apply the entries kept since :meth:`hold`, in order, then apply as they come again."""
        held, self._held = self._held or [], None
        for raft_index, payload in held:
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
        self.applied_raft_index = raft_index
        for key, outcome in outcomes:
            for future in self.waiters.pop(key, ()):
                if not future.done():
                    future.set_result(outcome)
        assert self.raft is not None
        self.raft.notify_applied()
        self.raft.maybe_compact(self.applied_raft_index)
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

    # -- waiting for what the log brings -------------------------------------------------------

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
