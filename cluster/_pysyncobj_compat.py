"""Our corrections to pysyncobj, in one place, applied by :func:`install`.

Call :func:`install` once, before any ``SyncObj`` is constructed (``cluster.raft`` does). It is
idempotent, and it refuses (``RuntimeError``) to patch any pysyncobj other than
:data:`VERIFIED_VERSION`: every correction below reaches into private, name-mangled pysyncobj
internals and was verified against that version's source only. Line numbers below refer to
``pysyncobj/syncobj.py`` and ``pysyncobj/journal.py`` of that version.

What :func:`install` changes (see ``/work/shared/design/pysyncobj-notes.md``, items 6-8; item 4
refers to ``pysyncobj/tcp_connection.py`` and ``pysyncobj/transport.py`` too):

1. **Follower catch-up livelock** (notes item 7). ``SyncObj._SyncObj__sendNextNodeIdx``
   (syncobj.py l.1098-1106) is wrapped. When a follower rejects an ``append_entries`` batch
   (l.986 "prevLogIdx not in my log", l.989 "term conflict at prevLogIdx") it sends the leader a
   *reset* hint, which the leader applies unconditionally, in arrival order (l.1077-1078). The
   leader sends several batches per tick and advances ``nextIndex`` before any reply arrives
   (l.1265-1273), so an ex-leader holding a stale tail answered "go back to P" to the first batch
   and "go to my end + 1" to the later ones, and the step back was always overwritten. Corrected
   contract: a reset hint never points past an index the follower *knows* matches the leader, i.e.
   its committed prefix (every later leader holds it): at most ``min(commit, last) + 1``; "past my
   end" may still answer ``last + 1`` when the follower's last entry is from the current term (then
   it came from this very leader, so the whole log matches). All replies of one tick then agree.

2. **Durable journal** (notes items 6 and 8). ``pysyncobj.syncobj.createJournal`` (imported at
   l.41, called at l.166) is replaced by a factory returning :class:`DurableFileJournal` while
   :func:`set_durable` is on (the default). That journal ``msync``\\ s its mmap, only if something
   was written since the last sync, before

   * the leader persists an advanced commit index (``setRaftCommitIndex``, l.676; nothing is
     applied, answered or sent with the new commit index before that call), and
   * a follower acknowledges success (``__sendNextNodeIdx(success=True)``, l.1019 and l.1025 -
     the wrapper of item 1 calls :meth:`DurableFileJournal.sync` first).

   Its ``.meta`` file (term, vote, commit index) is written to a temporary file, ``fsync``\\ ed,
   renamed and the directory ``fsync``\\ ed (journal.py l.160-164 did neither fsync). All meta
   writes must be durable, not only the vote: a rename that reaches the disk before its data can
   leave an empty meta file, which pysyncobj reads as "term 0, voted for nobody".
   The dump file (``pysyncobj.serializer.atomicReplace``, serializer.py l.93 and l.198) gets the
   same fsync-rename-fsync treatment, so a compaction never drops journal entries whose dump is
   only in the page cache.

   Not covered: the journal has no checksums, so a power loss *during* an msync can leave a torn
   last record (never acknowledged, but pysyncobj cannot tell it is torn); compaction rewrites the
   journal in place (journal.py l.252-256) and a power loss mid-rewrite can lose the entries after
   the dump; a disk that ignores cache flushes defeats all of it. Durability against kill -9 never
   needed any of this: the page cache survives a killed process.

   Cost (measured on the 2-core dev VM, 3 local nodes): one msync 0.2-0.7 ms. Followers msync
   once per ``append_entries`` message that carried entries, not once per tick: with batched
   sends (``appendEntriesUseBatch=True``) the cost was lost in the noise, with one message per
   entry (``appendEntriesUseBatch=False``) throughput roughly halved.

3. **Leader stickiness** (Raft thesis §4.2.3; found by the partition-one-way chaos scenario).
   ``SyncObj._SyncObj__onMessageReceived`` (syncobj.py l.909) is wrapped. pysyncobj adopts the
   term of any ``request_vote`` above its own (l.920-923), so a follower that stopped hearing the
   leader (a one-way cut) raised its term every election timeout, the other follower adopted it,
   stopped accepting the leader's lower-term ``append_entries`` (l.945), timed out in turn and
   deposed the leader: a new election every ~1.5 s for as long as the cut lasted, writes stalling
   0.6-0.8 s each time. Now a *follower* that heard ``append_entries`` from its current leader
   less than ``raftMinTimeout`` ago ignores ``request_vote`` (as if it were lost, which Raft
   allows: safety never depends on a vote being delivered). A leader still steps down on a
   higher term: that is how a node whose term rose while it was cut off rejoins after the heal
   (pysyncobj ignores lower-term ``append_entries`` without answering, l.945, so that node could
   not be told otherwise) - one election at the heal instead of one per timeout. Liveness: when
   the leader dies every follower stops hearing it at about the same moment, and no candidate
   times out sooner than ``raftMinTimeout`` after that. pysyncobj's leadership transfer
   (``timeout_now``) is not used by avictl; a transfer would need the others to stop being sticky.

4. **Strangers on the Raft port** (finding 1, "Raft port stall"). ``TcpConnection`` reads every
   byte the socket has before it parses anything (``__tryReadBuffer``, tcp_connection.py
   l.256-259, appending with ``bytes +=``, l.274) and waits for a frame's whole announced length
   (a native signed 32-bit int, l.280-282) before it tries to decrypt it. A stranger announcing
   2**31-1 bytes and streaming kept a node's tick thread in that loop, at 100 % CPU and growing
   memory: it lost leadership within a second, and with one such connection per node every
   write stalled. ``__tryReadBuffer`` is replaced and ``__processParseMessage`` (l.277-300) wrapped
   so that, after every ``recv``, each newly complete frame header is checked:

   * A connection is *proven* once one frame from it decoded - with a password, decrypted with
     the cluster key (l.285-290): on an incoming connection the peer's random key (its first
     message, ``transport.py`` l.342-346, sent on connect at l.453-456), on an outgoing one the
     answer to ours. Until then it may have sent at most :data:`HANDSHAKE_MAX_BYTES` and announce
     no frame longer than fits in them, and it must prove itself within
     :data:`HANDSHAKE_MAX_SECONDS` of being accepted (or of our ``connect``, l.114); otherwise it
     is dropped. A genuine peer sends nothing else before its first frame is answered, so the
     budget holds its whole handshake. Measured (3 nodes, 127.0.0.1, idle and with the CPUs
     saturated): the first frame is 232 bytes on an incoming connection and 316-336 bytes on an
     outgoing one, proven 0.1-35 ms after accept or connect; 4 KiB is 12 times that, and
     2 s is more than ``connectionTimeout`` (1.5 s in avictl), after which pysyncobj itself drops a
     connection it has read nothing from (l.227-229). At most one ``recv`` (``recvBufferSize``,
     64 KiB by default) is read past the budget before the drop. The time budget is enforced from
     the transport's tick (``TCPTransport._onTick``, transport.py l.305-314, wrapped), so a
     connection that sends nothing at all is dropped too. Without a password there is nothing to
     prove and no handshake budget (nor any safety: notes item 1).
   * Every frame, proven or not, announcing more than :data:`MAX_FRAME_BYTES` (or a negative
     length) is refused when its 4-byte header arrives, before its body is buffered. The largest
     frame pysyncobj sends is an ``append_entries`` whose entries add up to less than
     ``appendEntriesBatchSizeBytes`` plus one entry (``__getEntries`` keeps the entry that crosses
     the batch size, syncobj.py l.1156-1162; a lone larger entry is sent in batch-size chunks,
     l.1275-1294; snapshot chunks are ``logCompactionBatchSize``, serializer.py l.143-145):
     :func:`largest_frame` bounds it, and ``cluster.raft`` keeps its entries and batches below
     what fits in :data:`MAX_FRAME_BYTES`.

   Dropped connections are counted by reason and logged (``raft_connection_refused``) at most
   every :data:`_REFUSAL_LOG_PERIOD` seconds. Not covered: the number of connections; a flood of
   connections still costs an ``accept`` and a ``recv`` each.

5. **A snapshot chunk committed the follower's own stale tail** (found answering finding 10).
   After any ``append_entries`` pysyncobj raises a follower's commit index to
   ``min(leader's commit, its own last index)`` (syncobj.py l.1032-1035). That is Raft's rule
   only for a message whose ``prevLogIdx`` check passed, where pysyncobj has just cut the log to
   what the leader sent (l.1004). A snapshot chunk (l.1022-1025) or a ``serialized: None``
   message (the leader's dump is not ready, l.1310-1316) has no such check, yet reaches the same
   lines: a node that was cut off while leading, holding entries no one else has, raised its
   commit index over them at the first chunk of the new leader's snapshot and applied them on its
   next tick, before the last chunk replaced its log. Reproduced with real nodes (a leader cut
   off with 5 unreplicated writes, the new leader commits 200 and compacts, the cut heals): the
   old leader applied all 5, at indexes where the cluster had committed other entries, in 8 runs
   of 9 (5 of 5 with the snapshot's two chunks 30 ms apart). In avictl that node's view and event
   store would hold proposals never committed and miss committed ones. Now such a message is
   handed to pysyncobj with its commit index capped at the follower's own; once a dump has loaded
   (the applied index moved to the dump's, l.1497) the commit index is raised to
   ``min(leader's commit, dump index)`` as pysyncobj would. Regular ``append_entries`` are
   untouched.

6. **Late acknowledgements sent entries twice** (finding 10, the "truncating already-applied
   log entries" critical). A leader sends several ``append_entries`` per tick and advances a
   follower's ``nextIndex`` as it sends (l.1273); a success reply sets ``nextIndex`` to the end of
   the batch it acknowledges (l.1079-1082), so the acknowledgement of an earlier batch, arriving
   after later ones were sent, moved it back, and the leader sent those entries again. A
   follower cuts its log after ``prevLogIdx`` whenever it holds more than that (l.991-1004, not
   only on a conflict) and adds the entries again; when it had already applied some of them
   (a later message carried a commit index covering them) pysyncobj logs the critical. The entries
   come back identical - same leader, same term, and committed entries are in every later
   leader's log - so nothing applied is lost or reordered: measured with 3 nodes under write
   bursts, 57-77 such truncations in 15 s, every truncated applied entry re-added with the same
   index, term and content, every node applying the same gapless sequence; and in avictl under
   leader pauses, 38-92 criticals per node with identical event stores. It cost a resend, a
   journal rewrite and an msync each time, and made the critical meaningless. Now a success reply
   never lowers ``nextIndex`` (it still raises the match index; a reset still lowers it), as
   etcd-raft's ``Progress.MaybeUpdate`` does: a batch lost in flight is still recovered, by the
   follower's reset reply to the next one. Same scenario: no truncation of applied entries.

:func:`set_durable` is read when a journal is created; ``set_durable(False)`` restores pysyncobj's
own, never-synced ``FileJournal`` for nodes created afterwards (benchmarks, tests).
"""

from __future__ import annotations

import _socket
import collections
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import pysyncobj.journal
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.version
import structlog
from pysyncobj.journal import FileJournal, Journal, MetaStorer
from pysyncobj.monotonic import monotonic as _monotonic
from pysyncobj.pickle import dumps as _pysyncobj_dumps
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from storage import failpoints

# pysyncobj 0.3.17, win_inet_pton.py l.84 (imported by tcp_connection.py l.8): replaces
# socket.inet_ntop in every process that imports pysyncobj, not only on Windows, with a
# Windows-only version that raises TypeError elsewhere; anything else in the process that turns
# a packed address into text (pyroute2 decoding an interface's addresses) then breaks. Put the C
# function back as soon as pysyncobj is in (pysyncobj itself never calls inet_ntop on Linux).
socket.inet_ntop = _socket.inet_ntop

__all__ = [
    "HANDSHAKE_MAX_BYTES",
    "HANDSHAKE_MAX_SECONDS",
    "MAX_FRAME_BYTES",
    "VERIFIED_VERSION",
    "DurableFileJournal",
    "largest_frame",
    "refusals",
    "install",
    "is_durable",
    "is_installed",
    "set_durable",
    "uninstall",
]

#: The only pysyncobj release these corrections were verified against.
VERIFIED_VERSION = "0.3.17"

_lock = threading.Lock()
_durable = True


@attrs.frozen
class _Originals:
    send_next_node_idx: Callable[..., None]
    on_message_received: Callable[..., None]
    create_journal: Callable[..., Journal]
    atomic_replace: Callable[[str, str], Any]
    connection_init: Callable[..., None]
    connection_connect: Callable[..., bool]
    try_read_buffer: Callable[[TcpConnection], None]
    process_parse_message: Callable[[TcpConnection], Any]
    transport_on_tick: Callable[[TCPTransport], None]


_originals: _Originals | None = None


# -- durability --------------------------------------------------------------------------------


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_replace(src: str, dst: str) -> None:
    """Rename ``src`` over ``dst`` so that after a power loss ``dst`` is old or new, never empty."""
    _fsync_file(src)
    os.replace(src, dst)
    _fsync_dir(dst)


class _DurableMetaStorer(MetaStorer):
    def storeMeta(self, meta: dict[str, Any]) -> None:
        path = self.getPath()
        with open(path + ".tmp", "wb") as f:
            f.write(_pysyncobj_dumps(meta))
        failpoints.hit("raft.meta.before_rename")
        _durable_replace(path + ".tmp", path)


class DurableFileJournal(FileJournal):
    """pysyncobj's mmap journal, msynced before anything relies on its entries.

    Contract: :meth:`sync` makes every entry added, truncated or cleared so far durable, and is a
    no-op (no system call) when nothing changed since the last sync. It runs before a commit index
    is persisted (:meth:`setRaftCommitIndex`) and, through :func:`install`'s wrapper, before a
    follower acknowledges entries. All methods run on pysyncobj's tick thread only.
    ``flush_count`` and ``flush_seconds`` count the msyncs actually done.
    """

    def __init__(self, journalFile: str) -> None:
        created = not os.path.exists(journalFile)
        self._dirty = False
        self.flush_count = 0
        self.flush_seconds = 0.0
        super().__init__(journalFile)
        self._FileJournal__metaStorer = _DurableMetaStorer(journalFile + ".meta")
        if created:
            # The new journal's header and directory entry must outlive a power loss too.
            _fsync_file(journalFile)
            _fsync_dir(journalFile)

    @property
    def dirty(self) -> bool:
        """True when entries changed since the last msync."""
        return self._dirty

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        failpoints.hit("raft.journal.after_add")
        self._dirty = True

    def clear(self) -> None:
        super().clear()
        failpoints.journal_rewritten(self)
        self._dirty = True

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        super().deleteEntriesFrom(entryFrom)
        failpoints.journal_rewritten(self)
        self._dirty = True

    def deleteEntriesTo(self, entryTo: int) -> None:
        super().deleteEntriesTo(entryTo)
        self._dirty = True

    def flush(self) -> None:
        # fdatasync of the mapped file, not mmap.flush(): on Linux both write back the pages dirtied
        # through the mapping (msync(MS_SYNC) is an fsync of the range), but CPython's mmap.flush
        # holds the GIL for the whole msync, stalling the controller's event loop thread with it,
        # and msyncs the whole mapping; os.fdatasync releases the GIL.
        start = time.perf_counter()
        mapped = self._FileJournal__journalFile
        try:
            failpoints.hit("raft.journal.before_sync")
            os.fdatasync(mapped._ResizableFile__f.fileno())
        except OSError as exc:
            # After a failed sync the page cache no longer says what the disk holds (and
            # pysyncobj would log the error and go on ticking): stop rather than ack, as the
            # event store does. A restart recovers from what did reach the disk.
            structlog.get_logger("avictl.raft").critical("raft_journal_sync_failed", error=str(exc), exit_code=70)
            os._exit(70)
        failpoints.journal_synced(self)
        failpoints.hit("raft.journal.after_sync")
        self.flush_seconds += time.perf_counter() - start
        self.flush_count += 1
        self._dirty = False

    def sync(self) -> bool:
        """msync if anything changed since the last msync; return whether it did."""
        if not self._dirty:
            return False
        self.flush()
        return True

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        # Entries first, then the commit index that covers them.
        self.sync()
        super().setRaftCommitIndex(raftCommitIndex)


def _create_journal(journalFile: str | None = None) -> Journal:
    if journalFile is not None and _durable:
        return DurableFileJournal(journalFile)
    assert _originals is not None
    return _originals.create_journal(journalFile)


def _atomic_replace(src: str, dst: str) -> Any:
    if _durable:
        failpoints.hit("raft.dump.before_rename")
        _durable_replace(src, dst)
        return True
    assert _originals is not None
    return _originals.atomic_replace(src, dst)


# -- the reset hint ----------------------------------------------------------------------------


def _send_next_node_idx(
    self: pysyncobj.syncobj.SyncObj,
    node: Any,
    reset: bool = False,
    nextNodeIdx: int | None = None,
    success: bool = False,
) -> None:
    """Replaces ``SyncObj.__sendNextNodeIdx`` (syncobj.py l.1098-1106); see the module docstring.

    Callers (all in ``__onMessageReceived``): l.969/973 (large-entry transmission in progress,
    no reset), l.986 (prevLogIdx not in my log: reset, no index), l.989 (term conflict: reset to
    prevLogIdx), l.1019/1025 (success).
    """
    assert _originals is not None
    log = self._SyncObj__raftLog
    if success:
        # Ack only what is on disk (a no-op unless the journal is a DurableFileJournal).
        sync = getattr(log, "sync", None)
        if sync is not None:
            sync()
    elif reset:
        last_idx, last_term = log[-1][1], log[-1][2]
        known_match = min(self._SyncObj__raftCommitIndex, last_idx) + 1
        if nextNodeIdx is None:
            # l.986 would answer last_idx + 1; that is only known to match when the last entry
            # came from the current leader, i.e. carries the current term.
            if last_term == self._SyncObj__raftCurrentTerm:
                nextNodeIdx = last_idx + 1
            else:
                nextNodeIdx = known_match
        else:
            nextNodeIdx = min(nextNodeIdx, known_match)
    _originals.send_next_node_idx(self, node, reset=reset, nextNodeIdx=nextNodeIdx, success=success)


# -- leader stickiness -------------------------------------------------------------------------

_FOLLOWER = 0  # pysyncobj's _RAFT_STATE.FOLLOWER
_PYSYNCOBJ_ON_MESSAGE_RECEIVED = pysyncobj.syncobj.SyncObj._SyncObj__onMessageReceived


def _on_message_received(self: pysyncobj.syncobj.SyncObj, node: Any, message: Any) -> None:
    """Replaces ``SyncObj.__onMessageReceived`` (syncobj.py l.909); see the module docstring, items 3, 5 and 6."""
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "append_entries":
        if message.get("term", -1) >= self._SyncObj__raftCurrentTerm:
            self._avictl_leader_heard_at = _monotonic()
            if "prevLogIdx" not in message:
                _on_snapshot_message(self, node, message)
                return
    elif kind == "request_vote" and self._SyncObj__raftState == _FOLLOWER and self._SyncObj__raftLeader is not None:
        heard = getattr(self, "_avictl_leader_heard_at", None)
        if heard is not None and _monotonic() - heard < self._SyncObj__conf.raftMinTimeout:
            return
    elif kind == "next_node_idx" and message.get("success") and not message.get("reset"):
        next_index = self._SyncObj__raftNextIndex
        before = next_index.get(node)
        _PYSYNCOBJ_ON_MESSAGE_RECEIVED(self, node, message)
        if before is not None and next_index.get(node, before) < before:
            next_index[node] = before
        return
    # pysyncobj's own, not read from _originals: a live node keeps this wrapper (its transport
    # callback is bound at construction) even after uninstall().
    _PYSYNCOBJ_ON_MESSAGE_RECEIVED(self, node, message)


def _on_snapshot_message(self: pysyncobj.syncobj.SyncObj, node: Any, message: dict[str, Any]) -> None:
    """An ``append_entries`` without ``prevLogIdx`` (a snapshot chunk, or ``serialized: None``),
    handed to pysyncobj with its commit index capped at ours; see the module docstring, item 5."""
    leader_commit = message.get("commit_index", 0)
    applied_before = self._SyncObj__raftLastApplied
    _PYSYNCOBJ_ON_MESSAGE_RECEIVED(self, node, dict(message, commit_index=min(leader_commit, self._SyncObj__raftCommitIndex)))
    self._SyncObj__leaderCommitIndex = leader_commit
    if self._SyncObj__raftLastApplied != applied_before:
        # The dump loaded (__loadDumpFile sets the applied index to the dump's, l.1497): the log
        # is now the leader's snapshot, committed, and pysyncobj's own rule holds for it.
        commit = min(leader_commit, self._SyncObj__raftLog[-1][1])
        if commit > self._SyncObj__raftCommitIndex:
            self._SyncObj__raftCommitIndex = commit
            self._SyncObj__raftLog.setRaftCommitIndex(commit)


# -- strangers on the Raft port ----------------------------------------------------------------

#: Bytes a connection may send before one of its frames decoded (decrypted with the cluster key).
HANDSHAKE_MAX_BYTES = 4096
#: Seconds from accept (or our connect) within which a connection must prove the password.
HANDSHAKE_MAX_SECONDS = 2.0
#: The longest frame any connection may announce (the length pysyncobj writes before a frame:
#: that of the Fernet token of the zlib-compressed pickle, l.144-147).
MAX_FRAME_BYTES = 32 * 2**20
_REFUSAL_LOG_PERIOD = 10.0
_FRAME_HEADER = struct.Struct("i")  # tcp_connection.py l.147 and l.280: native signed 32-bit

# pysyncobj pickles with protocol 2 (pickle.py l.46), which writes ``bytes`` as a latin-1 string
# in UTF-8: up to 2 bytes per byte. Per entry (a tuple of the command and two ints) it adds 21-47
# bytes besides (measured); the smallest command avictl writes is longer than 32 bytes (a
# pickled call, syncobj.py l.1585-1599), and pysyncobj's own no-op (1 byte) is one per term.
_PICKLE_PER_ENTRY = 64
_SMALLEST_COMMAND = 32
_PICKLE_PER_MESSAGE = 512


def largest_frame(batch_size_bytes: int, max_command_bytes: int) -> int:
    """An upper bound of the frame length pysyncobj announces when ``appendEntriesBatchSizeBytes``
    is ``batch_size_bytes`` and no entry's command is longer than ``max_command_bytes``.

    The commands of one ``append_entries`` add up to less than the batch size plus one command
    (syncobj.py l.1156-1162), there are at most ``batch_size_bytes / _SMALLEST_COMMAND + 2`` of
    them, and pickling may double their bytes; the message is then zlib-compressed (which can
    grow incompressible data by its ``compressBound``) and made a Fernet token (57 bytes of header
    and MAC, padding to 16, then base64: 4 bytes per 3). A lone command longer than the batch is
    sent in chunks of the batch size (l.1275-1294), which this bounds too.
    """
    count = batch_size_bytes // _SMALLEST_COMMAND + 2
    pickled = 2 * (batch_size_bytes + max_command_bytes) + count * _PICKLE_PER_ENTRY + _PICKLE_PER_MESSAGE
    compressed = pickled + (pickled >> 12) + (pickled >> 14) + (pickled >> 25) + 13
    token = 57 + (compressed // 16 + 1) * 16
    return 4 * -(-token // 3)


@attrs.define
class _Guard:
    """What one connection (one socket) has shown: when it opened, whether a frame from it
    decoded, and where in the read buffer the next frame header not yet checked starts."""

    opened_at: float
    proven: bool = False
    next_frame: int = 0

    def refusal(self, buffer: bytes, handshake: bool) -> str | None:
        """Why a connection whose read buffer is ``buffer`` must be dropped, or None."""
        unproven = handshake and not self.proven
        if unproven and len(buffer) > HANDSHAKE_MAX_BYTES:
            return "handshake_bytes"
        limit = HANDSHAKE_MAX_BYTES - _FRAME_HEADER.size if unproven else MAX_FRAME_BYTES
        while self.next_frame + _FRAME_HEADER.size <= len(buffer):
            (length,) = _FRAME_HEADER.unpack_from(buffer, self.next_frame)
            if not 0 <= length <= limit:
                return "handshake_frame_length" if unproven else "frame_length"
            self.next_frame += _FRAME_HEADER.size + length
        return None


_refusals: collections.Counter[str] = collections.Counter()
_refusals_logged_at = float("-inf")


def refusals() -> dict[str, int]:
    """Connections dropped by this process, by reason, since it started."""
    return dict(_refusals)


def _refuse(conn: TcpConnection, reason: str) -> None:
    global _refusals_logged_at
    _refusals[reason] += 1
    now = _monotonic()
    if now - _refusals_logged_at >= _REFUSAL_LOG_PERIOD:
        _refusals_logged_at = now
        try:
            peer = "%s:%s" % conn._TcpConnection__socket.getpeername()[:2]
        except (OSError, AttributeError, TypeError):
            peer = None
        structlog.get_logger("avictl.raft").warning("raft_connection_refused", reason=reason, peer=peer, total=dict(_refusals))
    conn.disconnect()


def _connection_init(self: TcpConnection, *args: Any, **kwargs: Any) -> None:
    """Wraps ``TcpConnection.__init__`` (tcp_connection.py l.59-91): an accepted socket gets a guard."""
    assert _originals is not None
    _originals.connection_init(self, *args, **kwargs)
    if self._TcpConnection__socket is not None:
        self._avictl_guard = _Guard(_monotonic())


def _connection_connect(self: TcpConnection, host: str, port: int) -> bool:
    """Wraps ``TcpConnection.connect`` (l.114-139): each new outgoing socket gets a fresh guard."""
    assert _originals is not None
    self._avictl_guard = _Guard(_monotonic())
    return _originals.connection_connect(self, host, port)


def _try_read_buffer(self: TcpConnection) -> None:
    """Replaces ``TcpConnection.__tryReadBuffer`` (l.256-259); see the module docstring, item 4."""
    guard: _Guard | None = getattr(self, "_avictl_guard", None)
    handshake = self.encryptor is not None
    while self._TcpConnection__processRead():
        if guard is not None:
            reason = guard.refusal(self._TcpConnection__readBuffer, handshake)
            if reason is not None:
                _refuse(self, reason)
                return
    self._TcpConnection__lastReadTime = _monotonic()


def _process_parse_message(self: TcpConnection) -> Any:
    """Wraps ``TcpConnection.__processParseMessage`` (l.277-300): a frame consumed from the buffer
    (it decoded: a frame that does not disconnects, l.295-298) proves the connection."""
    assert _originals is not None
    before = len(self._TcpConnection__readBuffer)
    message = _originals.process_parse_message(self)
    guard: _Guard | None = getattr(self, "_avictl_guard", None)
    consumed = before - len(self._TcpConnection__readBuffer)
    if guard is not None and consumed > 0 and self.state != CONNECTION_STATE.DISCONNECTED:
        guard.proven = True
        guard.next_frame -= consumed
    return message


def _drop_unproven(connections: Iterable[TcpConnection], now: float) -> None:
    """Drop the connections that have not proven the password within HANDSHAKE_MAX_SECONDS."""
    for conn in list(connections):
        guard: _Guard | None = getattr(conn, "_avictl_guard", None)
        if guard is None or guard.proven or conn.encryptor is None or conn.state == CONNECTION_STATE.DISCONNECTED:
            continue
        if now - guard.opened_at > HANDSHAKE_MAX_SECONDS:
            _refuse(conn, "handshake_time")


def _transport_on_tick(self: TCPTransport) -> None:
    """Wraps ``TCPTransport._onTick`` (transport.py l.305-314): also drops connections that are
    too slow to prove the password - incoming ones still unidentified (l.324, l.367) and our own
    outgoing ones (l.533)."""
    assert _originals is not None
    _originals.transport_on_tick(self)
    _drop_unproven([*self._unknownConnections, *self._connections.values()], _monotonic())


# -- install -----------------------------------------------------------------------------------


def _check_version() -> None:
    installed = getattr(pysyncobj.version, "VERSION", None)
    if installed != VERIFIED_VERSION:
        raise RuntimeError(
            f"cluster._pysyncobj_compat: pysyncobj {installed!r} is installed, but its corrections "
            f"were verified on pysyncobj {VERIFIED_VERSION!r} only; they patch private internals "
            f"and could corrupt a different release. Pin pysyncobj=={VERIFIED_VERSION} or "
            "re-verify the corrections (see the module docstring) and update VERIFIED_VERSION."
        )


def install() -> None:
    """Apply the corrections; idempotent. Raises ``RuntimeError`` on an unverified pysyncobj.

    Must run before any ``SyncObj`` is constructed: a journal created earlier stays unsynced.
    """
    global _originals
    _check_version()
    with _lock:
        if _originals is not None:
            return
        originals = _Originals(
            send_next_node_idx=pysyncobj.syncobj.SyncObj._SyncObj__sendNextNodeIdx,
            on_message_received=pysyncobj.syncobj.SyncObj._SyncObj__onMessageReceived,
            create_journal=pysyncobj.syncobj.createJournal,
            atomic_replace=pysyncobj.serializer.atomicReplace,
            connection_init=TcpConnection.__init__,
            connection_connect=TcpConnection.connect,
            try_read_buffer=TcpConnection._TcpConnection__tryReadBuffer,
            process_parse_message=TcpConnection._TcpConnection__processParseMessage,
            transport_on_tick=TCPTransport._onTick,
        )
        _originals = originals
        pysyncobj.syncobj.SyncObj._SyncObj__sendNextNodeIdx = _send_next_node_idx
        pysyncobj.syncobj.SyncObj._SyncObj__onMessageReceived = _on_message_received
        pysyncobj.syncobj.createJournal = _create_journal
        pysyncobj.serializer.atomicReplace = _atomic_replace
        _set_connection_methods(_connection_init, _connection_connect, _try_read_buffer, _process_parse_message, _transport_on_tick)


def uninstall() -> None:
    """Restore pysyncobj's originals (for tests and A/B measurements); idempotent."""
    global _originals
    with _lock:
        if _originals is None:
            return
        pysyncobj.syncobj.SyncObj._SyncObj__sendNextNodeIdx = _originals.send_next_node_idx
        pysyncobj.syncobj.SyncObj._SyncObj__onMessageReceived = _originals.on_message_received
        pysyncobj.syncobj.createJournal = _originals.create_journal
        pysyncobj.serializer.atomicReplace = _originals.atomic_replace
        o = _originals
        _set_connection_methods(o.connection_init, o.connection_connect, o.try_read_buffer, o.process_parse_message, o.transport_on_tick)
        _originals = None


def _set_connection_methods(
    init: Callable[..., None],
    connect: Callable[..., bool],
    try_read_buffer: Callable[[TcpConnection], None],
    process_parse_message: Callable[[TcpConnection], Any],
    transport_on_tick: Callable[[TCPTransport], None],
) -> None:
    # setattr: mypy refuses assignments to a method. A transport binds _onTick when it is built
    # (transport.py l.220), so one built before install() or after uninstall() keeps what it got.
    setattr(TcpConnection, "__init__", init)  # noqa: B010
    setattr(TcpConnection, "connect", connect)  # noqa: B010
    setattr(TcpConnection, "_TcpConnection__tryReadBuffer", try_read_buffer)  # noqa: B010
    setattr(TcpConnection, "_TcpConnection__processParseMessage", process_parse_message)  # noqa: B010
    setattr(TCPTransport, "_onTick", transport_on_tick)  # noqa: B010


def is_installed() -> bool:
    """True while the corrections are applied."""
    return _originals is not None


def set_durable(durable: bool) -> None:
    """Choose the journal for ``SyncObj``\\ s created from now on: msynced (default) or pysyncobj's."""
    global _durable
    _durable = bool(durable)


def is_durable() -> bool:
    """The current :func:`set_durable` setting."""
    return _durable
