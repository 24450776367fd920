"""Tests of ``cluster._pysyncobj_compat``: our corrections to pysyncobj 0.3.17.

The slow tests run real pysyncobj nodes in child processes (``tests/cluster/_raft_proc.py``) on
127.0.0.1, always with a password.
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
import pickle
import select
import signal
import socket
import struct
import threading
import time
import types
import zlib
from collections.abc import Iterator
from typing import Any

import pysyncobj.journal
import pysyncobj.pickle
import pysyncobj.serializer
import pysyncobj.syncobj
import pysyncobj.version
import pytest
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.encryptor import getEncryptor
from pysyncobj.journal import FileJournal, MemoryJournal
from pysyncobj.monotonic import monotonic
from pysyncobj.poller import POLL_EVENT_TYPE, createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.transport import TCPTransport

from cluster import _pysyncobj_compat as compat
from simulations.raft_flood import Flood
from tests.cluster import _raft_proc
from tests.helpers import free_ports, wait_until_or_none

PASSWORD = _raft_proc.PASSWORD
DurableFileJournal = compat.DurableFileJournal


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    """Every test starts and ends with the corrections installed and durability on."""
    compat.install()
    compat.set_durable(True)
    yield
    compat.install()
    compat.set_durable(True)


def _patched_attrs() -> tuple[Any, Any, Any]:
    return (
        pysyncobj.syncobj.SyncObj._SyncObj__sendNextNodeIdx,
        pysyncobj.syncobj.createJournal,
        pysyncobj.serializer.atomicReplace,
    )


# -- install -------------------------------------------------------------------------------------


def test_installed_version_is_the_verified_one() -> None:
    """The pysyncobj in the venv is the release the corrections were verified on."""
    assert compat.VERIFIED_VERSION == pysyncobj.version.VERSION


def test_install_is_idempotent() -> None:
    """A second install() changes nothing."""
    before = _patched_attrs()

    compat.install()

    assert before == _patched_attrs()
    assert compat.is_installed()
    assert pysyncobj.syncobj.createJournal is compat._create_journal


def test_uninstall_restores_pysyncobj() -> None:
    """uninstall() puts pysyncobj's own functions back, and install() patches them again."""
    compat.uninstall()

    assert pysyncobj.syncobj.createJournal is pysyncobj.journal.createJournal
    assert pysyncobj.serializer.atomicReplace is os.rename
    assert not compat.is_installed()

    compat.install()

    assert pysyncobj.syncobj.createJournal is compat._create_journal


def test_install_refuses_an_unverified_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """On another pysyncobj release install() raises and patches nothing."""
    compat.uninstall()
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.3.18")

    with pytest.raises(RuntimeError, match=r"pysyncobj '0\.3\.18' is installed.*verified on pysyncobj '0\.3\.17'"):
        compat.install()

    assert not compat.is_installed()
    assert pysyncobj.syncobj.createJournal is pysyncobj.journal.createJournal


def test_install_refuses_an_unverified_version_even_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The version check is not skipped by an earlier successful install()."""
    monkeypatch.setattr(pysyncobj.version, "VERSION", "0.4.0")

    with pytest.raises(RuntimeError):
        compat.install()


def test_factory_returns_the_durable_journal_only_when_enabled(tmp_path: Any) -> None:
    """createJournal gives DurableFileJournal while durable, pysyncobj's journals otherwise."""
    durable = pysyncobj.syncobj.createJournal(str(tmp_path / "a"))
    compat.set_durable(False)
    plain = pysyncobj.syncobj.createJournal(str(tmp_path / "b"))
    memory = pysyncobj.syncobj.createJournal(None)

    assert (DurableFileJournal, FileJournal, MemoryJournal) == (type(durable), type(plain), type(memory))
    assert not compat.is_durable()
    durable._destroy()
    plain._destroy()


# -- the reset hint ------------------------------------------------------------------------------


class _FakeSyncObj:
    """Just the attributes ``__sendNextNodeIdx`` and our wrapper read."""

    def __init__(self, terms: list[int], commit: int, term: int, journal: Any = None) -> None:
        self._SyncObj__raftLog = journal if journal is not None else [(b"", i + 1, t) for i, t in enumerate(terms)]
        self._SyncObj__raftCommitIndex = commit
        self._SyncObj__raftCurrentTerm = term
        self.sent: list[dict[str, Any]] = []
        self._SyncObj__transport = types.SimpleNamespace(send=lambda node, message: self.sent.append(message))

    def _SyncObj__getCurrentLogIndex(self) -> int:
        return self._SyncObj__raftLog[-1][1]

    def reply(self, **kwargs: Any) -> dict[str, Any]:
        SyncObj._SyncObj__sendNextNodeIdx(self, "leader", **kwargs)
        (message,) = self.sent
        return message


def test_past_my_end_with_a_stale_tail_points_after_the_commit_index() -> None:
    """Entries 5-8 are from an old term and uncommitted: the leader must resend from 5, not 9."""
    node = _FakeSyncObj(terms=[1, 1, 1, 1, 1, 1, 1, 1], commit=4, term=3)

    assert {"type": "next_node_idx", "next_node_idx": 5, "reset": True, "success": False} == node.reply(reset=True)


def test_past_my_end_with_a_current_term_tail_points_after_the_tail() -> None:
    """A last entry from the current term came from this leader, so the whole log matches."""
    node = _FakeSyncObj(terms=[1, 1, 1, 1, 3, 3], commit=4, term=3)

    assert 7 == node.reply(reset=True)["next_node_idx"]


def test_conflict_points_no_further_than_the_commit_index() -> None:
    """A term conflict at 7 with commit 4 resets to 5: everything after 4 may be stale."""
    node = _FakeSyncObj(terms=[1, 1, 1, 1, 1, 1, 1, 1], commit=4, term=3)

    assert 5 == node.reply(reset=True, nextNodeIdx=7)["next_node_idx"]


def test_conflict_right_after_the_commit_index_is_kept() -> None:
    """A hint already inside the known-matching bound passes unchanged."""
    node = _FakeSyncObj(terms=[1, 1, 1, 1, 1, 1], commit=5, term=3)

    assert 3 == node.reply(reset=True, nextNodeIdx=3)["next_node_idx"]


def test_commit_index_beyond_the_log_is_bounded_by_the_log() -> None:
    """A commit index restored past the journal's end never points past the end."""
    node = _FakeSyncObj(terms=[1, 1, 1], commit=9, term=3)

    assert 4 == node.reply(reset=True)["next_node_idx"]


def test_transmission_and_success_replies_are_unchanged() -> None:
    """Replies without reset keep pysyncobj's hint (last index + 1, or the given one)."""
    in_progress = _FakeSyncObj(terms=[1, 1, 1, 1], commit=1, term=3).reply(success=False, reset=False)
    success = _FakeSyncObj(terms=[1, 1, 1, 1], commit=1, term=3).reply(success=True, nextNodeIdx=5)

    assert {"type": "next_node_idx", "next_node_idx": 5, "reset": False, "success": False} == in_progress
    assert {"type": "next_node_idx", "next_node_idx": 5, "reset": False, "success": True} == success


def test_success_is_sent_only_after_the_journal_synced(tmp_path: Any) -> None:
    """A follower's success acknowledgement msyncs the entries it covers first."""
    journal = DurableFileJournal(str(tmp_path / "journal"))
    journal.add(b"a", 1, 1)
    journal.add(b"b", 2, 1)
    node = _FakeSyncObj(terms=[], commit=1, term=1, journal=journal)
    flushes = journal.flush_count

    node.reply(success=True, nextNodeIdx=3)

    assert (False, flushes + 1) == (journal.dirty, journal.flush_count)
    journal._destroy()


# -- the durable journal -------------------------------------------------------------------------


class _SpyJournal(DurableFileJournal):
    """Records flushes and the moments pysyncobj's FileJournal stores a commit index."""

    def __init__(self, path: str) -> None:
        self.events: list[tuple[str, Any]] = []
        super().__init__(path)

    def add(self, command: bytes, idx: int, term: int) -> None:
        super().add(command, idx, term)
        self.events.append(("add", idx))

    def flush(self) -> None:
        super().flush()
        self.events.append(("flush", None))


@pytest.fixture
def spy_commits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make FileJournal.setRaftCommitIndex (the persisting step) record itself and the dirty flag."""
    original = FileJournal.setRaftCommitIndex

    def record(self: Any, index: int) -> None:
        if isinstance(self, _SpyJournal):
            self.events.append(("commit", (index, self.dirty)))
        original(self, index)

    monkeypatch.setattr(FileJournal, "setRaftCommitIndex", record)


def test_flush_comes_before_the_commit_index_is_stored(tmp_path: Any, spy_commits: None) -> None:
    """setRaftCommitIndex msyncs new entries, then stores the index."""
    journal = _SpyJournal(str(tmp_path / "journal"))
    journal.add(b"a", 1, 1)
    journal.add(b"b", 2, 1)

    journal.setRaftCommitIndex(2)

    assert [("add", 1), ("add", 2), ("flush", None), ("commit", (2, False))] == journal.events
    journal._destroy()


def test_commit_without_new_entries_does_not_flush(tmp_path: Any, spy_commits: None) -> None:
    """Syncs are batched: nothing added since the last msync means no msync."""
    journal = _SpyJournal(str(tmp_path / "journal"))
    journal.add(b"a", 1, 1)
    journal.setRaftCommitIndex(1)
    journal.events.clear()

    journal.setRaftCommitIndex(1)
    synced = journal.sync()

    assert ([("commit", (1, False))], False) == (journal.events, synced)
    journal._destroy()


@pytest.mark.parametrize("mutate", ["deleteEntriesFrom", "deleteEntriesTo", "clear"])
def test_truncations_mark_the_journal_dirty(tmp_path: Any, mutate: str) -> None:
    """Every change to the journal file, not only add(), needs the next sync."""
    journal = DurableFileJournal(str(tmp_path / "journal"))
    for idx in (1, 2, 3):
        journal.add(b"x", idx, 1)
    journal.sync()

    getattr(journal, mutate)(*([] if mutate == "clear" else [1]))

    assert journal.dirty
    journal._destroy()


def test_meta_is_written_with_fsync_and_read_back(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Term and vote go through fsync, and a reopened journal reads them."""
    fsynced: list[int] = []
    real_fsync = os.fsync
    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(compat.os, "fsync", fsync)
    path = str(tmp_path / "journal")
    journal = DurableFileJournal(path)
    fsynced.clear()

    journal.setCurrentTerm(7, "127.0.0.1:1")
    journal._destroy()
    reopened = DurableFileJournal(path)

    assert (7, "127.0.0.1:1") == (reopened.getCurrentTerm(), reopened.getVotedForNodeId())
    assert 2 == len(fsynced)  # the temporary file, then the directory after the rename
    assert not os.path.exists(path + ".meta.tmp")
    reopened._destroy()


def test_dump_replace_fsyncs_when_durable(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """pysyncobj's dump rename fsyncs the new dump and the directory; not when durability is off."""
    fsynced: list[int] = []
    real_fsync = os.fsync
    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(compat.os, "fsync", fsync)
    for name in ("a", "b"):
        (tmp_path / f"{name}.tmp").write_bytes(b"dump")

    pysyncobj.serializer.atomicReplace(str(tmp_path / "a.tmp"), str(tmp_path / "a"))
    durable_syncs = len(fsynced)
    compat.set_durable(False)
    pysyncobj.serializer.atomicReplace(str(tmp_path / "b.tmp"), str(tmp_path / "b"))

    assert (2, 2) == (durable_syncs, len(fsynced))
    assert b"dump" == (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("sync", [False, True], ids=["unsynced", "synced"])
def test_entries_survive_sigkill(tmp_path: Any, sync: bool) -> None:
    """Entries added by a process killed with SIGKILL are in the journal when it is reopened."""
    path = str(tmp_path / "journal")
    cfg = {"path": path, "first": 1, "count": 500, "term": 4, "sync": sync}
    child = _raft_proc.spawn_child("journal", cfg, str(tmp_path / "stderr.log"))
    try:
        assert child.stdout is not None
        line = child.stdout.readline()  # the child reports only after the last add
        assert {"added": 500} == json.loads(line)
    finally:
        child.kill()
        child.wait(timeout=5)
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()
    assert -signal.SIGKILL == child.returncode

    journal = DurableFileJournal(path)

    assert [(b"entry-%d" % i, i, 4) for i in range(1, 501)] == [journal[i] for i in range(len(journal))]
    journal._destroy()


class _Counter(SyncObj):  # type: ignore[misc]
    counter = 0

    @replicated
    def add(self, n: int) -> int:
        self.counter += n
        return self.counter


@pytest.mark.slow
def test_real_nodes_sync_before_commit_and_ack(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, spy_commits: None) -> None:
    """In a real 3-node cluster no commit index is stored and no success ack is sent while
    the journal holds unsynced entries."""
    monkeypatch.setattr(compat, "DurableFileJournal", _SpyJournal)
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    violations: list[str] = []
    acks: list[int] = []
    nodes: list[_Counter] = []
    try:
        for i, addr in enumerate(addrs):
            conf = SyncObjConf(
                password=PASSWORD,
                journalFile=str(tmp_path / f"journal{i}"),
                fullDumpFile=str(tmp_path / f"dump{i}"),
                **_raft_proc.FAST_CONF,
            )
            nodes.append(_Counter(addr, [a for a in addrs if a != addr], conf))
        for node in nodes:
            journal = node._SyncObj__raftLog
            assert isinstance(journal, _SpyJournal)
            transport = node._SyncObj__transport
            real_send = transport.send

            def send(peer: Any, message: Any, journal: Any = journal, real_send: Any = real_send) -> Any:
                if isinstance(message, dict) and message.get("type") == "next_node_idx" and message["success"]:
                    acks.append(message["next_node_idx"])
                    if journal.dirty:
                        violations.append(f"ack {message['next_node_idx']} with unsynced entries")
                return real_send(peer, message)

            transport.send = send

        results: list[tuple[Any, Any]] = []
        assert wait_until_or_none(lambda: any(n._isLeader() for n in nodes), 10.0, interval=0.02)
        for _ in range(200):
            nodes[0].add(1, callback=lambda res, err: results.append((res, err)))
        assert wait_until_or_none(lambda: len(results) == 200, 10.0, interval=0.02)
        assert wait_until_or_none(lambda: all(n.counter == 200 for n in nodes), 10.0, interval=0.02)
    finally:
        for node in nodes:
            node.destroy()
        wait_until_or_none(lambda: not any(n.tick_thread_alive() for n in nodes), 5.0, interval=0.02)

    commits = [ev for n in nodes for ev in n._SyncObj__raftLog.events if ev[0] == "commit"]
    dirty_commits = [ev for ev in commits if ev[1][1]]
    assert ([], []) == (violations, dirty_commits)
    assert acks and commits


# -- the livelock --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("run", range(3))
def test_resumed_leader_catches_up_within_2s(tmp_path: Any, run: int) -> None:
    """A leader paused 8 s under load, holding an uncommitted tail, catches up within 2 s of resuming."""
    result = _raft_proc.livelock_trial(str(tmp_path), patch=True, pause=8.0, catchup_timeout=2.0)

    before = result["old_before_pause"]
    assert before["last_idx"] > before["commit"], f"no stale tail to heal, scenario not armed: {result}"
    assert result["catchup_s"] is not None, f"not caught up within 2 s: {result}"


# -- the password --------------------------------------------------------------------------------


class _Touch:
    """Unpickling this creates ``path``: a stand-in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.path, "w"))


def _frame(payload: bytes) -> bytes:
    return struct.pack("i", len(payload)) + payload


def _probe(port: int, data: bytes, timeout: float = 2.0) -> tuple[bytes, bool]:
    """Send ``data`` to the raft port; what it answers until it closes or ``timeout`` passes,
    and whether it closed the connection."""
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                return received, False
            except ConnectionResetError:
                return received, True
            if not chunk:
                return received, True
            received += chunk
    return received, False


@pytest.mark.slow
def test_raft_port_without_the_password_gets_nothing_and_runs_nothing(tmp_path: Any) -> None:
    """Pickles, plaintext status requests, wrong-password tokens and garbage get no answer,
    execute nothing, and the node keeps committing."""
    marker = tmp_path / "pwned"
    evil = zlib.compress(pickle.dumps([_Touch(str(marker)), "status"], protocol=2))
    control = tmp_path / "control"
    pickle.loads(zlib.decompress(zlib.compress(pickle.dumps(_Touch(str(control)), protocol=2))))
    assert control.exists()  # the payload is live: unpickling it does create the file
    wrong_key = getEncryptor("not-the-password").encrypt_at_time(evil, int(time.monotonic()))
    probes = {
        "pickle": _frame(evil),
        "plaintext status": _frame(zlib.compress(pickle.dumps(["status"], protocol=2))),
        "wrong password": _frame(wrong_key),
        "framed garbage": _frame(os.urandom(512)),
        "garbage": os.urandom(4096),
    }

    with _raft_proc.Cluster(str(tmp_path / "cluster")) as cluster:
        assert cluster.leader(timeout=15.0) is not None
        target = cluster.nodes[0]
        answers = {name: _probe(target.port, data) for name, data in probes.items()}
        write = target.request("add", timeout=10.0, wait=5.0)

    assert {name: b"" for name in probes} == {name: received for name, (received, _) in answers.items()}
    # Each was read and rejected, and the node hung up (garbage announcing a frame longer than the
    # handshake budget included).
    assert all(closed for _, closed in answers.values()), answers
    assert not marker.exists()
    assert write is not None and write["ok"], write


# -- leader stickiness ---------------------------------------------------------------------------


class _Voter:
    """Just the attributes the stickiness wrapper reads."""

    def __init__(self, state: int, leader: Any = "n2", term: int = 5) -> None:
        self._SyncObj__raftState = state
        self._SyncObj__raftLeader = leader
        self._SyncObj__raftCurrentTerm = term
        self._SyncObj__conf = types.SimpleNamespace(raftMinTimeout=0.25)


@pytest.fixture
def passed(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The messages the wrapper hands on to pysyncobj's own handler (recorded instead of run)."""
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(compat, "_PYSYNCOBJ_ON_MESSAGE_RECEIVED", lambda _self, _node, m: seen.append(m))
    return seen


def _vote(term: int) -> dict[str, Any]:
    return {"type": "request_vote", "term": term, "last_log_term": 1, "last_log_index": 1}


def test_a_follower_that_just_heard_its_leader_ignores_a_vote_request(passed: list[dict[str, Any]]) -> None:
    """Within raftMinTimeout of the leader's append_entries, a higher-term request_vote is dropped."""
    node = _Voter(state=0)
    SyncObj._SyncObj__onMessageReceived(node, "n2", {"type": "append_entries", "term": 5, "commit_index": 1, "prevLogIdx": 1})
    SyncObj._SyncObj__onMessageReceived(node, "n3", _vote(9))
    assert [m["type"] for m in passed] == ["append_entries"]


def test_a_follower_that_has_not_heard_its_leader_lately_votes(passed: list[dict[str, Any]]) -> None:
    """Past raftMinTimeout (the leader may be dead), or without a leader, the vote request goes through."""
    node = _Voter(state=0)
    SyncObj._SyncObj__onMessageReceived(node, "n2", {"type": "append_entries", "term": 5, "commit_index": 1, "prevLogIdx": 1})
    node._avictl_leader_heard_at -= 0.3  # type: ignore[attr-defined]
    SyncObj._SyncObj__onMessageReceived(node, "n3", _vote(9))
    leaderless = _Voter(state=0, leader=None)
    leaderless._avictl_leader_heard_at = compat._monotonic()  # type: ignore[attr-defined]
    SyncObj._SyncObj__onMessageReceived(leaderless, "n3", _vote(9))
    assert [m["type"] for m in passed] == ["append_entries", "request_vote", "request_vote"]


def test_a_leader_still_steps_down_on_a_higher_term(passed: list[dict[str, Any]]) -> None:
    """A leader and a candidate are not sticky: a node whose term rose while cut off can rejoin."""
    for state in (1, 2):
        node = _Voter(state=state)
        node._avictl_leader_heard_at = compat._monotonic()  # type: ignore[attr-defined]
        SyncObj._SyncObj__onMessageReceived(node, "n3", _vote(9))
    assert [m["type"] for m in passed] == ["request_vote", "request_vote"]


def test_a_stale_leaders_append_entries_does_not_make_a_follower_sticky(passed: list[dict[str, Any]]) -> None:
    """append_entries below the current term (a deposed leader) is not hearing from the leader."""
    node = _Voter(state=0, term=7)
    SyncObj._SyncObj__onMessageReceived(node, "n1", {"type": "append_entries", "term": 6, "commit_index": 1, "prevLogIdx": 1})
    SyncObj._SyncObj__onMessageReceived(node, "n3", _vote(9))
    assert [m["type"] for m in passed] == ["append_entries", "request_vote"]


# -- strangers on the Raft port ------------------------------------------------------------------


@functools.cache
def _encryptor() -> Any:
    return getEncryptor(PASSWORD)


def _sealed(message: Any, encryptor: Any = None) -> bytes:
    """``message`` framed as ``TcpConnection.send`` frames it (tcp_connection.py l.141-147)."""
    data = (encryptor or _encryptor()).encrypt_at_time(zlib.compress(pickle.dumps(message), 3), int(monotonic()))
    return _frame(data)


@pytest.fixture
def accepted() -> Iterator[tuple[TcpConnection, socket.socket, list[Any]]]:
    """A TcpConnection on an accepted 127.0.0.1 socket as the transport sets it up (the cluster
    key, a callback collecting messages), and the client end of it."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        ours, _ = listener.accept()
    ours.setblocking(False)
    conn = TcpConnection(createPoller("auto"), socket=ours, timeout=30.0)
    conn.encryptor = _encryptor()
    received: list[Any] = []
    conn.setOnMessageReceivedCallback(received.append)
    yield conn, client, received
    conn.disconnect()
    client.close()


def _deliver(conn: TcpConnection, client: socket.socket, data: bytes) -> None:
    """Send ``data`` and let the connection handle read events until it has read all of it."""
    client.sendall(data)
    deadline = time.monotonic() + 2.0
    while conn.state != CONNECTION_STATE.DISCONNECTED and time.monotonic() < deadline:
        readable, _, _ = select.select([conn.fileno()], [], [], 0.05)
        if not readable:
            break
        conn._TcpConnection__processConnection(conn.fileno(), POLL_EVENT_TYPE.READ)


def _refused_since(before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in compat.refusals().items() if v != before.get(k, 0)}


def test_install_wraps_the_connection_and_the_transport_tick() -> None:
    """install() puts the guard in place; uninstall() restores pysyncobj's methods."""
    patched = (TcpConnection._TcpConnection__tryReadBuffer, TCPTransport._onTick)

    compat.uninstall()
    restored = (TcpConnection._TcpConnection__tryReadBuffer, TCPTransport._onTick)

    assert (compat._try_read_buffer, compat._transport_on_tick) == patched
    assert patched[0] is not restored[0] and patched[1] is not restored[1]


def test_a_stranger_announcing_a_huge_frame_is_dropped_at_its_header(accepted: Any) -> None:
    """The finding's attack: a 2**31-1 length prefix then bytes; the connection is dropped after
    the first read, having buffered no more than that read."""
    conn, client, received = accepted
    before = compat.refusals()

    _deliver(conn, client, struct.pack("i", 2**31 - 1) + b"\xa5" * 1000)

    assert (CONNECTION_STATE.DISCONNECTED, [], {"handshake_frame_length": 1}) == (conn.state, received, _refused_since(before))


def test_a_stranger_streaming_past_the_byte_budget_is_dropped(accepted: Any) -> None:
    """A short first frame followed by more bytes than the handshake budget: dropped unread,
    before anything is decrypted."""
    conn, client, received = accepted
    before = compat.refusals()

    _deliver(conn, client, _frame(b"x" * 100) + b"\xa5" * (2 * compat.HANDSHAKE_MAX_BYTES))

    assert (CONNECTION_STATE.DISCONNECTED, [], {"handshake_bytes": 1}) == (conn.state, received, _refused_since(before))


@pytest.mark.parametrize("length", [-1, -(2**31)])
def test_a_negative_frame_length_is_refused(accepted: Any, length: int) -> None:
    """pysyncobj reads the length as a signed int; a negative one is refused too."""
    conn, client, _ = accepted
    before = compat.refusals()

    _deliver(conn, client, struct.pack("i", length) + b"x" * 64)

    assert (CONNECTION_STATE.DISCONNECTED, {"handshake_frame_length": 1}) == (conn.state, _refused_since(before))


def test_a_genuine_handshake_proves_the_connection_and_lifts_the_budget(accepted: Any) -> None:
    """After a frame that decrypts with the cluster key, frames up to MAX_FRAME_BYTES are
    accepted (a header announcing exactly that is waited for); a longer one is refused."""
    conn, client, received = accepted
    rand_key = os.urandom(32)
    before = compat.refusals()

    _deliver(conn, client, _sealed(rand_key))
    _deliver(conn, client, _sealed(b"y" * (4 * compat.HANDSHAKE_MAX_BYTES)))
    _deliver(conn, client, struct.pack("i", compat.MAX_FRAME_BYTES) + b"z" * 1000)
    still_open = conn.state

    _deliver(conn, client, b"z" * 1000)  # nothing: the frame above is not complete
    assert (CONNECTION_STATE.CONNECTED, [rand_key, b"y" * (4 * compat.HANDSHAKE_MAX_BYTES)], {}) == (
        still_open, received, _refused_since(before))


def test_every_frame_header_in_a_read_is_checked(accepted: Any) -> None:
    """Two frames in one read, the second announcing more than MAX_FRAME_BYTES: dropped, even
    though the first one is fine."""
    conn, client, received = accepted
    _deliver(conn, client, _sealed(b"key"))
    before = compat.refusals()

    _deliver(conn, client, _sealed(b"fine") + struct.pack("i", compat.MAX_FRAME_BYTES + 1))

    assert (CONNECTION_STATE.DISCONNECTED, {"frame_length": 1}) == (conn.state, _refused_since(before))
    assert [b"key"] == received[:1]


def test_a_frame_with_the_wrong_key_is_not_proof(accepted: Any) -> None:
    """A frame sealed with another password is rejected by pysyncobj (l.295-298) and proves nothing."""
    conn, client, received = accepted

    _deliver(conn, client, _sealed(b"key", getEncryptor("not-the-password")))

    assert (CONNECTION_STATE.DISCONNECTED, [], False) == (conn.state, received, conn._avictl_guard.proven)


def test_connections_slow_to_prove_the_password_are_dropped_by_the_tick(accepted: Any) -> None:
    """From the transport's tick: an unproven connection older than HANDSHAKE_MAX_SECONDS is
    dropped, a younger one and a proven old one are kept."""
    conn, client, _ = accepted
    _deliver(conn, client, _sealed(b"key"))
    conn._avictl_guard.opened_at -= 10.0
    poller = createPoller("auto")
    young, old = TcpConnection(poller), TcpConnection(poller)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts nothing, answers nothing
        for c in (young, old):
            c.encryptor = _encryptor()
            assert c.connect(*silent.getsockname())  # unpolled, it stays CONNECTING and unproven
        old._avictl_guard.opened_at -= compat.HANDSHAKE_MAX_SECONDS + 0.1
        transport = types.SimpleNamespace(
            _unknownConnections={young}, _connections={"a": conn, "b": old},
            _maybeBind=lambda: None, _connectIfNecessary=lambda: None,
        )
        before = compat.refusals()

        TCPTransport._onTick(transport)

        states = (conn.state, young.state, old.state)
        young.disconnect()
    assert (CONNECTION_STATE.CONNECTED, CONNECTION_STATE.CONNECTING, CONNECTION_STATE.DISCONNECTED) == states
    assert {"handshake_time": 1} == _refused_since(before)


def _command(payload: bytes) -> bytes:
    """An entry's command as ``@replicated`` makes it (syncobj.py l.1585-1599, l.497)."""
    return b"\x00" + pysyncobj.pickle.dumps((7, (payload,)))


def test_largest_frame_bounds_the_worst_append_entries() -> None:
    """The biggest append_entries pysyncobj builds - just under a batch of the smallest commands,
    then the longest one, of random bytes that pickling doubles - announces no more than
    largest_frame()."""
    batch = 2**16
    small = _command(b"\x91\x92\xa7Barrier\x01\xb8barrier-" + os.urandom(8).hex().encode())
    big = _command(bytes(b | 0x80 for b in os.urandom(2**19)))
    entries = [(small + b"%04d" % i, 2**40 + i, 2**40) for i in range(batch // (len(small) + 4))]
    entries.append((big, 2**41, 2**40))
    message = {"type": "append_entries", "term": 2**40, "commit_index": 2**40, "entries": entries,
               "prevLogIdx": 2**40, "prevLogTerm": 2**40}

    announced = struct.unpack("i", _sealed(message)[:4])[0]

    assert sum(len(e[0]) for e in entries[:-1]) < batch
    assert announced <= compat.largest_frame(batch, len(big))


@pytest.mark.slow
def test_a_flood_on_every_raft_port_does_not_stop_commits(tmp_path: Any) -> None:
    """Every node's port flooded with 2**31-1 length prefixes and bytes for 6 s: a write every
    50 ms on the leader keeps committing, each within 1 s (without the correction the leader
    lost leadership within a second and nothing committed)."""
    latencies: list[float] = []
    failures: list[Any] = []
    with _raft_proc.Cluster(str(tmp_path / "cluster")) as cluster:
        assert cluster.leader(timeout=15.0) is not None
        with Flood([n.addr for n in cluster.nodes], seconds=6.0) as flood:
            end = time.monotonic() + 6.0
            while time.monotonic() < end:
                leader = cluster.leader(timeout=2.0)
                started = time.monotonic()
                reply = leader.request("add", timeout=3.0, wait=2.0) if leader is not None else None
                if reply is None or not reply["ok"]:
                    failures.append(reply)
                else:
                    latencies.append(time.monotonic() - started)
                threading.Event().wait(0.05)
            flood.join(10.0)
    assert [] == failures
    assert len(latencies) > 20 and max(latencies) < 1.0, (len(latencies), max(latencies, default=None))
    assert all(s.connections > 10 for s in flood.stats), flood.stats


# -- snapshot messages commit nothing of the follower's own log ----------------------------------

APPLIED: dict[str, list[tuple[int, str]]] = {}


class _Recorder(SyncObj):  # type: ignore[misc]
    """Records what it applies outside its own state (a snapshot would overwrite its attributes)."""

    @replicated
    def put(self, value: str) -> None:
        APPLIED.setdefault(self.selfNode.id, []).append((self.raftLastApplied + 1, value))


def _put_command(node: SyncObj, value: str) -> bytes:
    """The command ``node.put(value)`` makes (syncobj.py l.1585-1599)."""
    return b"\x00" + pysyncobj.pickle.dumps((node._methodToID[node._getFuncName("put")], (value,)))


@pytest.fixture
def stale_follower() -> Iterator[SyncObj]:
    """A node that never ticks by itself, in term 1: a, b, c committed and applied, then two
    entries it appended while leading that no one else has."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    node = _Recorder(addrs[0], addrs[1:], SyncObjConf(autoTick=False, dynamicMembershipChange=False))
    APPLIED.pop(node.selfNode.id, None)
    for idx, value in enumerate(["a", "b", "c", "stale-d", "stale-e"], start=2):
        node._SyncObj__raftLog.add(_put_command(node, value), idx, 1)
    node._SyncObj__raftCurrentTerm = 1
    node._SyncObj__raftCommitIndex = 4
    node._onTick(0)
    assert [(2, "a"), (3, "b"), (4, "c")] == APPLIED[node.selfNode.id]
    yield node
    node.destroy()


def _from_new_leader(node: SyncObj, **fields: Any) -> None:
    leader = next(iter(node._SyncObj__otherNodes))
    SyncObj._SyncObj__onMessageReceived(node, leader, {"type": "append_entries", "term": 2, "commit_index": 50, **fields})


@pytest.mark.parametrize("serialized", [(b"first chunk of the new leader's dump", True, False), None], ids=["chunk", "none"])
def test_a_snapshot_message_does_not_commit_the_followers_stale_tail(stale_follower: SyncObj, serialized: Any) -> None:
    """A first snapshot chunk (or "dump not ready") from a new leader with commit index 50 leaves
    the commit index at 4: the entries after it were never committed, and are not applied."""
    _from_new_leader(stale_follower, serialized=serialized)
    stale_follower._onTick(0)

    assert (4, [(2, "a"), (3, "b"), (4, "c")]) == (stale_follower.raftCommitIndex, APPLIED[stale_follower.selfNode.id])
    assert 50 == stale_follower._SyncObj__leaderCommitIndex


def test_a_snapshot_that_loads_is_committed(stale_follower: SyncObj) -> None:
    """Once the last chunk arrives the follower's log is the dump's, committed up to its index."""
    with io.BytesIO() as buffer:
        with gzip.GzipFile(fileobj=buffer, mode="wb") as g:
            pysyncobj.pickle.dump(({}, (b"\x01", 300, 2), (b"\x01", 299, 2), []), g)
        dump = buffer.getvalue()

    _from_new_leader(stale_follower, commit_index=350, serialized=(dump, True, False))
    _from_new_leader(stale_follower, commit_index=350, serialized=(b"", False, True))

    log = stale_follower._SyncObj__raftLog
    assert (300, 300, [299, 300]) == (stale_follower.raftCommitIndex, stale_follower.raftLastApplied, [log[0][1], log[1][1]])


@pytest.mark.slow
def test_a_cut_off_leader_never_applies_its_unreplicated_writes(tmp_path: Any) -> None:
    """A leader cut off with 5 writes no one else has; the others elect a leader, commit 200
    writes and compact; after the heal the old leader gets the snapshot (its chunks 30 ms apart)
    and applies only what the cluster committed (pysyncobj alone applied all 5: 5 runs of 5, and
    8 of 9 without the delay)."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    cut: dict[str, Any] = {"node": None}
    nodes: list[_Recorder] = []

    def partitioned(node: _Recorder) -> None:
        transport = node._SyncObj__transport
        real_send = transport.send

        def send(peer: Any, message: Any) -> Any:
            victim = cut["node"]
            if victim is not None and (node is victim or peer.id == victim.selfNode.id):
                return True  # lost on the way
            sent = real_send(peer, message)
            if isinstance(message, dict) and "serialized" in message:
                time.sleep(0.03)  # the network holds the next snapshot chunk back a little
            return sent

        transport.send = send

    try:
        for addr in addrs:
            conf = SyncObjConf(password=PASSWORD, dynamicMembershipChange=False, appendEntriesUseBatch=False,
                               leaderFallbackTimeout=2.0, **_raft_proc.FAST_CONF)
            nodes.append(_Recorder(addr, [a for a in addrs if a != addr], conf))
            APPLIED.pop(addr, None)
            partitioned(nodes[-1])
        old = wait_until_or_none(lambda: next((n for n in nodes if n._isLeader()), None), 10.0, interval=0.02)
        assert old is not None
        for i in range(20):
            old.put(f"ok-{i}", sync=True, timeout=5)
        cut["node"] = old
        for i in range(5):
            old.put(f"stale-{i}", callback=lambda _res, _err: None)
        new = wait_until_or_none(lambda: next((n for n in nodes if n is not old and n._isLeader()), None), 10.0, interval=0.02)
        assert new is not None
        for i in range(200):
            new.put(f"new-{i}", sync=True, timeout=5)
        new.forceLogCompaction()
        assert wait_until_or_none(lambda: new._SyncObj__raftLog[0][1] > old._SyncObj__raftLog[-1][1], 10.0, interval=0.02)
        stale_tail = old._SyncObj__raftLog[-1][1] - old.raftCommitIndex
        cut["node"] = None
        assert wait_until_or_none(lambda: old.raftLastApplied >= new.raftLastApplied and not old._isLeader(), 10.0, interval=0.02)
    finally:
        for node in nodes:
            node.destroy()
        wait_until_or_none(lambda: not any(n.tick_thread_alive() for n in nodes), 5.0, interval=0.02)

    assert stale_tail >= 5, "the old leader held no unreplicated entries: scenario not armed"
    committed = dict(APPLIED[new.selfNode.id])
    applied_by_old = APPLIED[old.selfNode.id]
    assert [] == [value for _, value in applied_by_old if value.startswith("stale")]
    assert [] == [(i, v, committed[i]) for i, v in applied_by_old if i in committed and committed[i] != v]


# -- a success reply never moves nextIndex back --------------------------------------------------


@pytest.fixture
def idle_leader() -> Iterator[tuple[SyncObj, Any]]:
    """A node that never ticks by itself, made leader of term 1 with entries 1-30, that has sent
    a follower everything up to 20 (nextIndex 21) and heard it acknowledge 9."""
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    node = _Recorder(addrs[0], addrs[1:], SyncObjConf(autoTick=False, dynamicMembershipChange=False))
    for idx in range(2, 31):
        node._SyncObj__raftLog.add(_put_command(node, f"v{idx}"), idx, 1)
    node._SyncObj__raftCurrentTerm = 1
    node._SyncObj__raftState = 2  # leader
    follower = next(iter(node._SyncObj__otherNodes))
    node._SyncObj__raftNextIndex[follower] = 21
    node._SyncObj__raftMatchIndex[follower] = 9
    yield node, follower
    node.destroy()


def _ack(node: SyncObj, follower: Any, next_idx: int, success: bool = True, reset: bool = False) -> tuple[int, int]:
    SyncObj._SyncObj__onMessageReceived(node, follower, {"type": "next_node_idx", "next_node_idx": next_idx, "reset": reset, "success": success})
    return node._SyncObj__raftNextIndex[follower], node._SyncObj__raftMatchIndex[follower]


def test_a_late_success_reply_raises_the_match_index_but_not_lowers_next_index(idle_leader: Any) -> None:
    """The acknowledgement of an earlier batch (up to 10) arriving after later batches were sent
    records the match (10) and keeps nextIndex at 21: entries 11-20 are not sent again."""
    assert (21, 10) == _ack(*idle_leader, next_idx=11)


def test_success_beyond_next_index_and_resets_still_move_it(idle_leader: Any) -> None:
    """A success past nextIndex moves it forward; a reset (a rejected batch) still moves it back."""
    node, follower = idle_leader

    assert (26, 25) == _ack(node, follower, next_idx=26)
    assert (23, 25) == _ack(node, follower, next_idx=23, success=False, reset=True)


@pytest.mark.slow
def test_under_write_bursts_no_follower_truncates_what_it_applied(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 10: bursts of writes from every node for 6 s. pysyncobj
    resent entries a follower already had whenever an earlier batch's acknowledgement moved
    nextIndex back, and the follower cut and re-added them, applied ones included (57-77 times
    in 15 s); with the correction it never does, and every node applies the same sequence."""
    truncated_applied: list[tuple[str, int, int]] = []
    original = SyncObj._SyncObj__deleteEntriesFrom

    def delete_entries_from(self: Any, from_idx: int) -> None:
        if from_idx <= self._SyncObj__raftLastApplied:
            truncated_applied.append((self.selfNode.id, from_idx, self._SyncObj__raftLastApplied))
        original(self, from_idx)

    monkeypatch.setattr(SyncObj, "_SyncObj__deleteEntriesFrom", delete_entries_from)
    addrs = [f"127.0.0.1:{p}" for p in free_ports(3)]
    nodes: list[_Recorder] = []
    stop_at = time.monotonic() + 6.0

    def burst_writer(node: _Recorder, seed: int) -> None:
        sent = 0
        while time.monotonic() < stop_at:
            for _ in range(1 + sent % 7):  # one write in flight at a time, as group commit does
                done = threading.Event()
                node.put(f"{seed}-{sent}-" + "x" * (200 + sent * 37 % 3000), callback=lambda _r, _e, done=done: done.set())
                sent += 1
                done.wait(2.0)
            time.sleep(0.002 * (sent % 11))

    try:
        for i, addr in enumerate(addrs):
            conf = SyncObjConf(password=PASSWORD, dynamicMembershipChange=False, appendEntriesUseBatch=False,
                               appendEntriesBatchSizeBytes=2**20, leaderFallbackTimeout=2.0,
                               journalFile=str(tmp_path / f"journal{i}"), fullDumpFile=str(tmp_path / f"dump{i}"),
                               **dict(_raft_proc.FAST_CONF, autoTickPeriod=0.05))
            nodes.append(_Recorder(addr, [a for a in addrs if a != addr], conf))
            APPLIED.pop(addr, None)
        assert wait_until_or_none(lambda: any(n._isLeader() for n in nodes), 10.0, interval=0.02)
        writers = [threading.Thread(target=burst_writer, args=(n, i)) for i, n in enumerate(nodes)]
        for w in writers:
            w.start()
        for w in writers:
            w.join(15.0)
        assert wait_until_or_none(lambda: len({n.raftLastApplied for n in nodes}) == 1, 10.0, interval=0.02)
        terms = {n.raftCurrentTerm for n in nodes}
    finally:
        for node in nodes:
            node.destroy()
        wait_until_or_none(lambda: not any(n.tick_thread_alive() for n in nodes), 5.0, interval=0.02)

    sequences = [APPLIED[a] for a in addrs]
    assert len(sequences[0]) > 500 and sequences[0] == sequences[1] == sequences[2]
    assert [] == truncated_applied, f"terms {terms}"


def test_importing_pysyncobj_leaves_socket_inet_ntop_working() -> None:
    """pysyncobj replaces socket.inet_ntop with a Windows-only version on every OS; ours puts the
    C function back, so other code in the process (pyroute2) can format addresses."""
    import socket

    import cluster.raft  # noqa: F401  (imports pysyncobj, and our corrections with it)

    assert socket.inet_ntop(socket.AF_INET, b"\x7f\x00\x00\x01") == "127.0.0.1"
    assert socket.inet_ntop(socket.AF_INET6, b"\x00" * 15 + b"\x01") == "::1"
