"""One controller node: the event store, the config view and the Raft shell, wired on one loop.

The parts, each in its module: the apply pipeline (``cluster/pipeline.py``: committed entries
into the view and the store, fsync before any answer), group commit (``cluster/proposer.py``:
proposals batched through pysyncobj, retried, and the leaderless clock), peer catch-up
(``cluster/catchup.py``: filling a gap in the store after a snapshot install). This module
builds them and offers what the API and the reconciler use: ``write`` (decide a command,
commit, re-decide on a stale view), ``barrier`` (a linearizable read point) and ``status``.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import secrets
import time
import uuid as uuidlib
from pathlib import Path
from typing import Any, Optional

import aiohttp
import structlog

from cluster.apply import replay
from cluster.catchup import PeerCatchup
from cluster.commands import Command, decide
from cluster.config import NodeConfig
from cluster.decide import CommandError, Decision, builtin_events
from cluster.pipeline import ApplyPipeline
from cluster.proposer import NO_LEADER_GRACE_MIN, GroupCommit, LeaderWatch, NoQuorum, OutcomeUnknown
from cluster.raft import RaftLog, RaftTuning
from cluster.sealing import Sealer
from cluster.slices import SliceCache
from cluster.views import Accepted, ConfigView, Duplicate, Rejected
from storage import codec
from storage.events import Barrier, ObjectDeleted, Proposal
from storage.file import FileLog
from storage.snapshots import SnapshotStore

__all__ = ["Controller", "NoQuorum", "OutcomeUnknown"]

log = structlog.get_logger(__name__)


class Controller:
    def __init__(self, config: NodeConfig, *, tuning: Optional[RaftTuning] = None) -> None:
        self.config = config
        self.node_id = config.node_id
        self.tuning = tuning or RaftTuning.from_env(durable_journal=config.durable_journal)
        self.data_dir = Path(config.data_dir)
        self.log = log.bind(node_id=config.node_id)
        self.sealer = Sealer(config.cluster_secret)
        self.started_at = time.time()
        self.pipeline: ApplyPipeline
        self.raft: RaftLog
        self.leader: LeaderWatch
        self._loop: asyncio.AbstractEventLoop
        self._proposer: GroupCommit
        self._http: Optional[aiohttp.ClientSession] = None
        self._leader_watch: Optional[asyncio.Task[None]] = None
        #: seconds without a reachable leader after which this node counts as cut off (set at start)
        self.no_leader_grace = NO_LEADER_GRACE_MIN
        # What each SE last reported to this node (SEs report to every controller): runtime only.
        self.se_status: dict[str, dict[str, Any]] = {}
        # The newest client request logs per VS uuid, as SEs send them (bounded; runtime only).
        self.request_logs: dict[str, collections.deque[dict[str, Any]]] = {}

    # -- what the API reads --------------------------------------------------------------------

    @property
    def view(self) -> ConfigView:
        return self.pipeline.view

    @property
    def store(self) -> FileLog:
        return self.pipeline.store

    @property
    def slices(self) -> SliceCache:
        return self.pipeline.slices

    @property
    def applied_raft_index(self) -> int:
        """The last raft index applied and made durable here."""
        return self.pipeline.applied_raft_index

    async def wait_for_slice(self, se_uuid: str, newer_than: int, timeout: float) -> Optional[dict[str, Any]]:
        return await self.pipeline.wait_for_slice(se_uuid, newer_than, timeout)

    async def wait_for_revision(self, revision: int, timeout: float) -> bool:
        return await self.pipeline.wait_for_revision(revision, timeout)

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The event store holds secrets in clear until they are encrypted at rest: owner only.
        os.chmod(self.data_dir, 0o700)
        store = FileLog(self.data_dir / "events")
        snapshots = SnapshotStore(self.data_dir / "snapshots")
        view = _load_view(store, snapshots)
        self.log = self.log.bind(revision=view.revision)
        self.log.info("view_loaded", revision=view.revision, raft_index=view.raft_index, objects=len(view))
        self.pipeline = ApplyPipeline(self._loop, store, snapshots, view, self.log)
        catchup = PeerCatchup(self.pipeline, self.config.peers, self.http, self.internal_token, self.log)
        self.raft = await self._loop.run_in_executor(None, self._make_raft, catchup)
        self.pipeline.raft = self.raft
        self.leader = LeaderWatch(self._loop.time, self.raft)
        # An election needs at most about one raftMaxTimeout after the leader is lost; three
        # cover a lost first round on a loaded machine.
        self.no_leader_grace = max(NO_LEADER_GRACE_MIN, 3 * self.tuning.raft_max_timeout)
        self._proposer = GroupCommit(self._loop, self.raft, self.pipeline.waiters, self.leader, self.no_leader_grace)
        self._leader_watch = self._loop.create_task(self.leader.run())

    def _make_raft(self, catchup: PeerCatchup) -> RaftLog:
        return RaftLog(
            self_addr=self.config.raft_addr,
            peers=[p.raft_addr for p in self.config.peers],
            data_dir=str(self.data_dir / "raft"),
            cluster_secret=self.config.cluster_secret,
            loop=self._loop,
            on_committed=self.pipeline.on_committed,
            on_snapshot_installed=catchup.on_snapshot_installed,
            applied_index=lambda: self.pipeline.applied_raft_index,
            store_position=lambda: self.pipeline.store.last_raft_index,
            tuning=self.tuning,
        )

    async def stop(self) -> None:
        if self._leader_watch is not None:
            self._leader_watch.cancel()
        if self._http is not None:
            await self._http.close()
        raft = getattr(self, "raft", None)
        if raft is not None:
            await self._loop.run_in_executor(None, raft.close)
        pipeline = getattr(self, "pipeline", None)
        if pipeline is not None:
            pipeline.close()
            pipeline.store.sync()
            pipeline.store.close()

    @property
    def internal_token(self) -> str:
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
                decision = decide(self.view, command, time.time(), seal=self.sealer)
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
            outcome = await self._proposer.commit(command_id, proposal, deadline)
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

    def _decision_of(self, command_id: str, accepted: Accepted) -> Decision:
        for record in self.store.read_from_revision(accepted.first_revision, limit=1):
            for command in codec.decode(record.payload).commands:
                if command.command_id == command_id:
                    target = command.events[0]
                    return Decision(command.events, (), getattr(target, "uuid", None) or getattr(target, "vs_uuid", None) or "")
        return Decision((), (), "")

    async def barrier(self, timeout: float = 5.0) -> int:
        """Linearizable read point: after this returns, the view holds every write acknowledged before the call."""
        nonce = "barrier-" + secrets.token_hex(8)
        deadline = self._loop.time() + timeout
        outcome = await self._proposer.commit(nonce, Barrier(nonce), deadline)
        assert isinstance(outcome, Accepted)
        return outcome.last_revision

    def leaderless_for(self) -> float:
        """Seconds without a reachable leader, continuously (see :class:`cluster.proposer.LeaderWatch`)."""
        return self.leader.leaderless_for()

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
            "applied_index": self.applied_raft_index,
            "applied_revision": self.view.revision,
            "leader": raft["leader"],
            "has_quorum": raft["has_quorum"],
        }


def _load_view(store: FileLog, snapshots: SnapshotStore) -> ConfigView:
    """The view as the store holds it: the newest usable snapshot, then the records after it."""
    snap = snapshots.latest()
    if snap is not None and snap.revision <= store.last_revision:
        view = ConfigView.from_snapshot(snap.payload)
    else:
        view = ConfigView.with_builtins(builtin_events())
    for record in store.read_from_revision(view.revision + 1):
        if record.first_revision != view.revision + 1:
            raise RuntimeError(f"event store record at revision {record.first_revision} does not follow {view.revision}")
        replay(view, record.raft_index, codec.decode(record.payload))
    return view


def _deletes(decision: Decision) -> bool:
    return any(isinstance(e, ObjectDeleted) for e in decision.events)
