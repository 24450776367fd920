"""The Raft shell: the only module that imports pysyncobj.

pysyncobj carries opaque bytes through one replicated method (``_committed``). That method runs
on pysyncobj's tick thread; it never raises (an exception there wedges the node for good) and
only hands ``(raft_index, payload)`` to the asyncio loop with ``call_soon_threadsafe``. All
meaning lives in our envelope, decoded and applied on the loop, in log order.

pysyncobj's own snapshot ("full dump") holds no state of ours: full history lives in our event
store. Our dump records only the two raft entries pysyncobj needs and the raft index up to which
the event store was durable when the dump was taken; a dump is written only once the loop has
applied (and the store synced) everything up to the dump's raft index, so the journal entries a
compaction drops are always in the store already.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
import zlib
from typing import Any, Callable, Optional

import attrs
import msgpack
import structlog
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from cluster import _pysyncobj_compat

__all__ = ["MAX_COMMAND_BYTES", "MAX_ENTRY_BYTES", "RaftError", "RaftLog", "RaftTuning", "derive_raft_password"]

log = structlog.get_logger(__name__)

_FAIL_NAMES = {
    FAIL_REASON.QUEUE_FULL: "queue_full",
    FAIL_REASON.MISSING_LEADER: "missing_leader",
    FAIL_REASON.DISCARDED: "discarded",
    FAIL_REASON.NOT_LEADER: "not_leader",
    FAIL_REASON.LEADER_CHANGED: "leader_changed",
    FAIL_REASON.REQUEST_DENIED: "request_denied",
    FAIL_REASON.UNKNOWN_OUTCOME: "unknown_outcome",
}


class RaftError(Exception):
    """pysyncobj did not commit a proposal; ``reason`` is one of the FAIL_REASON names."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def derive_raft_password(cluster_secret: str) -> str:
    """The pysyncobj password for a cluster: never the secret itself, so a leaked raft key is not the API secret."""
    return hashlib.sha256(b"avictl-raft\0" + cluster_secret.encode()).hexdigest()


#: The largest payload one Raft entry may carry. pysyncobj sends an entry in one frame together
#: with the entries before it (up to ``batch_size_bytes`` of them), and every node refuses a frame
#: longer than ``_pysyncobj_compat.MAX_FRAME_BYTES``: RaftTuning checks that the two fit, and
#: ``propose`` refuses a longer payload (``entry_too_large``) rather than wedge replication.
MAX_ENTRY_BYTES = 4 * 2**20
# The longest command pysyncobj makes of a payload: a call pickled with protocol 2 (syncobj.py
# l.1585-1599), which may write each byte of ``bytes`` as two.
MAX_COMMAND_BYTES = 2 * MAX_ENTRY_BYTES + 64


def _fits_in_a_frame(_tuning: Any, _attribute: Any, batch_size_bytes: int) -> None:
    largest = _pysyncobj_compat.largest_frame(batch_size_bytes, MAX_COMMAND_BYTES)
    if largest > _pysyncobj_compat.MAX_FRAME_BYTES:
        raise ValueError(
            f"batch_size_bytes={batch_size_bytes}: an append_entries could reach {largest} bytes, more than the "
            f"{_pysyncobj_compat.MAX_FRAME_BYTES} a node accepts in one frame"
        )


@attrs.frozen
class RaftTuning:
    """pysyncobj settings chosen for avictl (see docs/performance.md for the measurements)."""

    raft_min_timeout: float = 0.25
    raft_max_timeout: float = 0.7
    append_entries_period: float = 0.05
    auto_tick_period: float = 0.05
    use_batch: bool = False
    batch_size_bytes: int = attrs.field(default=2**20, validator=_fits_in_a_frame)
    leader_fallback_timeout: float = 2.0
    connection_retry_time: float = 0.5
    connection_timeout: float = 1.5
    durable_journal: bool = True
    # Our entries applied between two pysyncobj snapshots (journal compactions).
    compaction_min_entries: int = 20_000


    @classmethod
    def from_env(cls, **overrides: Any) -> "RaftTuning":
        """The defaults, with ``AVICTL_RAFT_TUNING`` (a JSON object of field values) applied: for benchmarks."""
        raw = os.environ.get("AVICTL_RAFT_TUNING")
        values = dict(overrides)
        if raw:
            import json

            values.update(json.loads(raw))
        return cls(**values)


_DUMP_MAGIC = b"AVDUMP1\n"


class _Replica(SyncObj):
    def __init__(self, self_addr: str, peers: list[str], conf: SyncObjConf, deliver: Callable[[int, bytes], None]) -> None:
        self._deliver = deliver
        super().__init__(self_addr, peers, conf)

    @replicated
    def _committed(self, payload: bytes) -> int:
        # Runs on pysyncobj's tick thread, in log order, once per committed entry, on every node.
        try:
            index = self.raftLastApplied + 1
            self._deliver(index, payload)
            return index
        except Exception:  # noqa: BLE001 - an exception here would wedge pysyncobj forever
            log.exception("raft_deliver_failed")
            return -1


class RaftLog:
    """A replicated, ordered stream of opaque payloads on top of pysyncobj.

    ``on_committed(raft_index, payload)`` is called on ``loop`` for every committed entry in log
    order; the receiver reports its progress with :meth:`mark_applied` (after its store synced),
    which is what allows pysyncobj to compact its journal.
    """

    def __init__(
        self,
        *,
        self_addr: str,
        peers: list[str],
        data_dir: str,
        cluster_secret: str,
        loop: asyncio.AbstractEventLoop,
        on_committed: Callable[[int, bytes], None],
        on_snapshot_installed: Callable[[int], None],
        applied_index: Callable[[], int],
        store_position: Callable[[], int],
        tuning: RaftTuning = RaftTuning(),
    ) -> None:
        _pysyncobj_compat.install()
        _pysyncobj_compat.set_durable(tuning.durable_journal)
        os.makedirs(data_dir, exist_ok=True)
        self._loop = loop
        self._on_committed = on_committed
        self._on_snapshot_installed = on_snapshot_installed
        self._applied_index = applied_index
        self._store_position = store_position
        self._applied_cond = threading.Condition()
        self._compaction_min_entries = tuning.compaction_min_entries
        self._last_compaction_index = 0
        self.self_addr = self_addr
        self.peers = [p for p in peers if p != self_addr]
        conf = SyncObjConf(
            password=derive_raft_password(cluster_secret),
            journalFile=os.path.join(data_dir, "raft.journal"),
            fullDumpFile=os.path.join(data_dir, "raft.dump"),
            serializer=self._write_dump,
            deserializer=self._read_dump,
            raftMinTimeout=tuning.raft_min_timeout,
            raftMaxTimeout=tuning.raft_max_timeout,
            appendEntriesPeriod=tuning.append_entries_period,
            autoTickPeriod=tuning.auto_tick_period,
            appendEntriesUseBatch=tuning.use_batch,
            appendEntriesBatchSizeBytes=tuning.batch_size_bytes,
            leaderFallbackTimeout=tuning.leader_fallback_timeout,
            connectionRetryTime=tuning.connection_retry_time,
            connectionTimeout=tuning.connection_timeout,
            # Compaction happens only when we ask for it (maybe_compact), never on pysyncobj's timer.
            logCompactionMinEntries=2**62,
            logCompactionMinTime=2**62,
            dynamicMembershipChange=False,
            commandsQueueSize=200_000,
            # pysyncobj binds 0.0.0.0 unless told (transport.py _createServer): Raft listens on the
            # node's own address only, never on every interface of the host.
            bindAddress=self_addr,
        )
        self._replica = _Replica(self_addr, self.peers, conf, self._deliver)

    # -- tick thread -> loop -------------------------------------------------------------------

    def _deliver(self, index: int, payload: bytes) -> None:
        self._loop.call_soon_threadsafe(self._on_committed, index, payload)

    def notify_applied(self) -> None:
        """Called by the loop after it applied entries and synced the store."""
        with self._applied_cond:
            self._applied_cond.notify_all()

    # -- pysyncobj snapshot hooks (tick thread) ------------------------------------------------

    def _write_dump(self, path: str, raft_data: Any) -> None:
        last_entry, prev_entry, cluster = raft_data
        dump_index = last_entry[1]
        deadline = time.monotonic() + 0.2
        with self._applied_cond:
            while self._applied_index() < dump_index:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    # The store is behind the dump point: refuse; maybe_compact asks again later.
                    raise RuntimeError("event store behind the compaction point")
                self._applied_cond.wait(remaining)
        body = msgpack.packb(
            {
                "entries": [list(last_entry), list(prev_entry)],
                "cluster": sorted(getattr(n, "id", str(n)) for n in cluster),
                "store_raft_index": self._store_position(),
            },
            use_bin_type=True,
        )
        with open(path, "wb") as f:
            f.write(_DUMP_MAGIC + zlib.crc32(body).to_bytes(4, "big") + body)
            f.flush()
            os.fsync(f.fileno())

    def _read_dump(self, path: str) -> tuple[Any, Any, Any]:
        with open(path, "rb") as f:
            data = f.read()
        if not data.startswith(_DUMP_MAGIC):
            raise ValueError(f"{path}: not an avictl raft dump")
        crc, body = data[len(_DUMP_MAGIC) : len(_DUMP_MAGIC) + 4], data[len(_DUMP_MAGIC) + 4 :]
        if int.from_bytes(crc, "big") != zlib.crc32(body):
            raise ValueError(f"{path}: checksum mismatch")
        doc = msgpack.unpackb(body, raw=False)
        last_entry, prev_entry = (tuple(e) for e in doc["entries"])
        self._loop.call_soon_threadsafe(self._on_snapshot_installed, int(doc["store_raft_index"]))
        return last_entry, prev_entry, set(doc["cluster"])

    # -- loop side -----------------------------------------------------------------------------

    def propose(self, payload: bytes) -> "asyncio.Future[int]":
        """Submit ``payload``; the future resolves to its raft index once committed here, or fails with RaftError.

        pysyncobj has no timeout of its own on this path: the caller must bound the wait. A payload
        longer than MAX_ENTRY_BYTES fails at once with ``entry_too_large``, nothing proposed.
        """
        future: asyncio.Future[int] = self._loop.create_future()
        if len(payload) > MAX_ENTRY_BYTES:
            future.set_exception(RaftError("entry_too_large"))
            return future
        replica = self._replica
        if not replica._isLeader():
            leader = replica._getLeader()
            if leader is None or not replica.isNodeConnected(leader):
                # Nothing is handed to anyone: a definite "not applied", unlike a send into the void.
                future.set_exception(RaftError("missing_leader"))
                return future

        def done(result: Any, error: int) -> None:
            # Runs on the tick thread.
            self._loop.call_soon_threadsafe(_settle, future, result, error)

        self._replica._committed(payload, callback=done)
        return future

    def maybe_compact(self, applied_index: int) -> None:
        """Ask pysyncobj for a snapshot once enough entries were applied since the last one."""
        if applied_index - self._last_compaction_index >= self._compaction_min_entries:
            self._last_compaction_index = applied_index
            self._replica.forceLogCompaction()

    def force_compaction(self) -> None:
        self._replica.forceLogCompaction()

    @property
    def leader_reachable(self) -> bool:
        """This node leads, or its leader is known and connected: a proposal made now can reach a leader."""
        replica = self._replica
        if replica._isLeader():
            return True
        leader = replica._getLeader()
        return leader is not None and bool(replica.isNodeConnected(leader))

    @property
    def majority_connected(self) -> bool:
        """This node and the peers it has a live connection to make a majority of the cluster."""
        replica = self._replica
        others = replica._SyncObj__otherNodes
        connected = sum(1 for node in others if replica.isNodeConnected(node))
        return connected + 1 > (len(others) + 1) / 2

    @property
    def is_leader(self) -> bool:
        return bool(self._replica._isLeader())

    @property
    def leader(self) -> Optional[str]:
        node = self._replica._getLeader()
        return None if node is None else str(getattr(node, "id", node))

    @property
    def has_quorum(self) -> bool:
        return bool(self._replica.hasQuorum)

    def status(self) -> dict[str, Any]:
        r = self._replica
        state = {0: "follower", 1: "candidate", 2: "leader"}.get(r._SyncObj__raftState, "unknown")
        return {
            "role": state,
            "term": r.raftCurrentTerm,
            "commit_index": r.raftCommitIndex,
            "last_applied": r.raftLastApplied,
            "leader": self.leader,
            "has_quorum": self.has_quorum,
        }

    def close(self) -> None:
        self._replica.destroy()


def _settle(future: "asyncio.Future[int]", result: Any, error: int) -> None:
    if future.done():
        return
    if error == FAIL_REASON.SUCCESS:
        if isinstance(result, int) and result > 0:
            future.set_result(result)
        else:
            future.set_exception(RaftError("apply_failed"))
    else:
        future.set_exception(RaftError(_FAIL_NAMES.get(error, f"error_{error}")))
