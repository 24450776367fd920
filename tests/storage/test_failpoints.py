"""Failpoints (storage.failpoints): parsing, unarmed / armed, the Nth hit, and a real child process
dying at a named point in the event store's write path, the store recovering on reopen."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from storage import failpoints
from storage.file import FileLog

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys
    from storage.file import FileLog
    from storage.log import Record
    log = FileLog(sys.argv[1])
    mode = sys.argv[2]
    for i in range(1, 6):
        log.append([Record(i, i, 1, b"payload-%d" % i)])
        if mode == "sync":
            log.sync()
        elif mode == "prepared":
            log.prepare_sync()()
        print("done", i, flush=True)
    log.close()
    """
)


def _child(tmp_path: Path, spec: str, mode: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, failpoints.ENV: spec, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "log"), mode], env=env, capture_output=True,
                          text=True, timeout=30, cwd=ROOT)


def _records(path: Path) -> list[int]:
    with FileLog(path) as log:
        return [r.raft_index for r in log.read_from_revision(1)]


def test_parse() -> None:
    assert failpoints.parse("") == {}
    assert failpoints.parse("store.after_append=3, raft.journal.before_sync") == {
        "store.after_append": 3, "raft.journal.before_sync": 1}
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.parse("store.after_apend=1")
    with pytest.raises(ValueError, match=">= 1"):
        failpoints.parse("store.after_append=0")


def test_unarmed_hit_is_a_no_op() -> None:
    assert failpoints.armed() == {}
    for name in failpoints.POINTS:
        failpoints.hit(name)
    assert not failpoints.tracing()


def test_nth_hit_dies_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []

    def fake_exit(code: int) -> None:
        exits.append(code)

    monkeypatch.setattr(failpoints, "_armed", {"store.after_sync": 3})
    monkeypatch.setattr(failpoints.os, "_exit", fake_exit)
    failpoints.hit("store.after_append")
    failpoints.hit("store.after_sync")
    failpoints.hit("store.after_sync")
    assert exits == []
    failpoints.hit("store.after_sync")
    assert exits == [137]


def test_child_dies_at_the_nth_append_and_the_store_recovers(tmp_path: Path) -> None:
    """Each append is synced before the next; the 3rd append dies before its sync: 2 records survive."""
    proc = _child(tmp_path, "store.after_append=3", "sync")
    assert proc.returncode == 137, proc.stderr
    assert "failpoint store.after_append fired" in proc.stderr
    assert proc.stdout.split("\n")[:2] == ["done 1", "done 2"] and "done 3" not in proc.stdout
    # The third record was still in the file object's buffer: the death lost it, nothing is torn.
    assert _records(tmp_path / "log") == [1, 2]
    assert not list((tmp_path / "log").glob("torn-*"))


def test_child_dies_before_the_fsync_the_page_cache_keeps_the_record(tmp_path: Path) -> None:
    """store.before_sync: the record was handed to the OS, so a process death (not a power loss) keeps it."""
    proc = _child(tmp_path, "store.before_sync=2", "prepared")
    assert proc.returncode == 137, proc.stderr
    assert "done 2" not in proc.stdout
    assert _records(tmp_path / "log") == [1, 2]
    # Reopened and appended to: the log goes on where it was.
    with FileLog(tmp_path / "log") as log:
        assert log.last_raft_index == 2


def test_unarmed_child_runs_to_the_end(tmp_path: Path) -> None:
    proc = _child(tmp_path, "", "sync")
    assert proc.returncode == 0, proc.stderr
    assert _records(tmp_path / "log") == [1, 2, 3, 4, 5]


def test_torn_tail_left_by_a_death_mid_write_is_truncated(tmp_path: Path) -> None:
    """A death in the middle of a frame write (half a record on disk) is cut on reopen, not refused."""
    proc = _child(tmp_path, "", "sync")
    assert proc.returncode == 0
    segment = next((tmp_path / "log").glob("seg-*.log"))
    whole = segment.read_bytes()
    with open(segment, "ab") as f:
        f.write(whole[-7:-2])  # part of a frame, as a write cut short would leave
    assert _records(tmp_path / "log") == [1, 2, 3, 4, 5]
    assert len(list((tmp_path / "log").glob("torn-*"))) == 1
    assert segment.read_bytes() == whole
