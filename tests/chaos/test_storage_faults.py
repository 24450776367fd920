"""Power-loss simulation (storage.failpoints trace + simulations.chaos.power) on a real FileLog and
a real DurableFileJournal in child processes, the storage-fault schedules, and a CI smoke of
``crash-points`` (slow, about 30 s)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simulations.chaos import runner, storage_faults
from simulations.chaos.power import lose_power, unsynced
from storage import failpoints
from storage.file import FileLog

ROOT = Path(__file__).resolve().parents[2]

STORE_CHILD = textwrap.dedent(
    """
    import os, sys
    from storage.file import FileLog
    from storage.log import Record
    log = FileLog(sys.argv[1], segment_bytes=200)
    synced, unsynced = int(sys.argv[2]), int(sys.argv[3])
    for i in range(1, synced + 1):
        log.append([Record(i, i, 1, b"x" * 40)])
        if i % 2:
            log.sync()
        else:
            log.prepare_sync()()
    for i in range(synced + 1, synced + unsynced + 1):
        log.append([Record(i, i, 1, b"y" * 40)])
    log._active.flush()  # in the page cache, never fsync'ed
    os._exit(137)
    """
)

JOURNAL_CHILD = textwrap.dedent(
    """
    import os, sys
    from cluster._pysyncobj_compat import DurableFileJournal
    j = DurableFileJournal(sys.argv[1])
    for i in range(1, 11):
        j.add(b"a%d" % i, i, 1)
    j.sync()                      # entries 1-10 durable
    j.deleteEntriesFrom(7)        # a new leader cuts 8-10 ...
    for i in range(8, 13):
        j.add(b"b%d" % i, i, 2)   # ... and sends 8-12 of term 2
    j.sync()                      # durable: 1-7 of term 1, 8-12 of term 2
    j.deleteEntriesFrom(9)        # cut again, not synced
    for i in range(10, 14):
        j.add(b"c%d" % i, i, 3)   # never synced
    os._exit(137)
    """
)


def _run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, failpoints.TRACE_ENV: "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=30,
                          cwd=ROOT)


@pytest.mark.parametrize("unsynced_records, survivors, deleted", [
    # 54-byte frames, segments roll at 200 bytes: records 1-4, 5-8, 9-12, 13-.
    (1, 7, 0),   # record 8 is the unsynced tail of segment 2: cut
    (6, 12, 1),  # 8-12 were fsync'ed by the rolls to segments 3 and 4; 13 sits alone in segment 4, never synced: deleted
])
def test_power_loss_keeps_fsynced_records_and_drops_the_rest(tmp_path: Path, unsynced_records: int, survivors: int,
                                                             deleted: int) -> None:
    directory = tmp_path / "events"
    proc = _run(STORE_CHILD, str(directory), "7", str(unsynced_records))
    assert proc.returncode == 137, proc.stderr
    assert unsynced(tmp_path)
    dropped = lose_power(tmp_path)
    assert sum(1 for d in dropped["segments"].values() if d.get("deleted")) == deleted, dropped
    assert not unsynced(tmp_path)
    with FileLog(directory) as log:
        records = log.read_from_revision(1)
    assert [r.raft_index for r in records] == list(range(1, survivors + 1))
    assert not list(directory.glob("torn-*")), "a cut at a synced length must not leave a torn tail"
    assert not [p for p in directory.glob("*.synced") if not Path(str(p)[: -len(".synced")]).exists()]


def test_torn_power_loss_leaves_half_a_record_that_the_reopen_truncates(tmp_path: Path) -> None:
    directory = tmp_path / "events"
    proc = _run(STORE_CHILD, str(directory), "5", "3")  # 1-4 | 5 synced, 6-8 unsynced in segment 2
    assert proc.returncode == 137, proc.stderr
    assert unsynced(tmp_path, store_only=True)
    dropped = lose_power(tmp_path, torn=0.5)
    (name, cut), = dropped["segments"].items()
    assert cut["unsynced"] == 3 * 54 and cut["bytes"] == 81  # kept 81 of 162: record 6, half of 7
    with FileLog(directory) as log:
        assert [r.raft_index for r in log.read_from_revision(1)] == [1, 2, 3, 4, 5, 6]
    assert len(list(directory.glob("torn-*"))) == 1


def test_power_loss_restores_the_journal_to_its_last_synced_content(tmp_path: Path) -> None:
    from pysyncobj.journal import FileJournal

    raft = tmp_path / "raft"
    raft.mkdir()
    path = raft / "raft.journal"
    proc = _run(JOURNAL_CHILD, str(path))
    assert proc.returncode == 137, proc.stderr
    before = FileJournal(str(path))
    assert [(e[1], e[2]) for e in before] == [(i, 1) for i in range(1, 8)] + [(8, 2), (9, 2)] + [
        (i, 3) for i in range(10, 14)]
    before._destroy()
    assert unsynced(tmp_path)
    dropped = lose_power(tmp_path)
    assert dropped["journal"]["changed"]
    after = FileJournal(str(path))
    assert [(e[1], e[2], e[0]) for e in after] == (
        [(i, 1, b"a%d" % i) for i in range(1, 8)] + [(i, 2, b"b%d" % i) for i in range(8, 13)])
    after._destroy()
    assert not unsynced(tmp_path)


def test_power_loss_after_a_compaction_rewrite_keeps_the_rewritten_journal(tmp_path: Path) -> None:
    """deleteEntriesTo rewrites the journal from its first record: the image follows the rewrite."""
    from pysyncobj.journal import FileJournal

    raft = tmp_path / "raft"
    raft.mkdir()
    path = raft / "raft.journal"
    script = textwrap.dedent(
        """
        import os, sys
        from cluster._pysyncobj_compat import DurableFileJournal
        j = DurableFileJournal(sys.argv[1])
        for i in range(1, 11):
            j.add(b"e%d" % i, i, 1)
        j.sync()
        j.deleteEntriesTo(5)          # compaction: entries 6-10 rewritten from the first record on
        j.sync()
        j.add(b"e11", 11, 1)          # not synced
        os._exit(137)
        """
    )
    assert _run(script, str(path)).returncode == 137
    lose_power(tmp_path)
    journal = FileJournal(str(path))
    assert [(e[1], e[0]) for e in journal] == [(i, b"e%d" % i) for i in range(6, 11)]
    journal._destroy()


def test_journal_never_synced_loses_every_entry(tmp_path: Path) -> None:
    from pysyncobj.journal import FileJournal

    raft = tmp_path / "raft"
    raft.mkdir()
    path = raft / "raft.journal"
    script = ("import os, sys\nfrom cluster._pysyncobj_compat import DurableFileJournal\n"
              "j = DurableFileJournal(sys.argv[1])\nj.add(b'x', 1, 1)\nos._exit(137)\n")
    assert _run(script, str(path)).returncode == 137
    lose_power(tmp_path)
    journal = FileJournal(str(path))
    assert len(journal) == 0
    journal._destroy()


def test_schedules_alternate_follower_and_leader_and_are_seeded() -> None:
    crash = storage_faults.crash_points_schedule(random.Random(1), 60.0)
    power = storage_faults.power_loss_schedule(random.Random(1), 60.0)
    assert [s.target for s in crash[:2]] == ["follower", "leader"]
    assert [s.target for s in power[:2]] == ["follower", "leader"]
    assert all(s.failpoint in storage_faults.CRASH_POINTS and s.count >= 1 for s in crash)
    assert crash == storage_faults.crash_points_schedule(random.Random(1), 60.0)
    assert crash != storage_faults.crash_points_schedule(random.Random(2), 60.0)
    assert all(s.mode == "power-loss" for s in power)
    assert [bool(s.torn) for s in power[:4]] == [False, False, True, True]


@pytest.mark.slow
def test_crash_points_smoke() -> None:
    """25 s of crash-points: failpoints fire, the nodes recover, every check passes."""
    started = time.monotonic()
    report = runner.run_scenario("crash-points", duration=25, seed=7)
    failed = [f"{c['name']}: {c['violations'][:2]}" for c in report["checks"] if not c["ok"]]
    assert report["verdict"] == "pass", failed
    check = next(c for c in report["checks"] if c["name"] == "storage_fault_recovery")
    assert check["details"]["failpoints_fired"] >= 1
    assert report["operations"]["writes"]["acknowledged"] > 100
    assert time.monotonic() - started <= 90


def test_live_arming_arms_the_running_process_and_acknowledges(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec in the arm file is armed in this process and the file renamed to .armed; a bad one is refused."""
    from simulations.chaos import _armed_node

    monkeypatch.setattr(failpoints, "_armed", {})  # never hit here: arming must not touch the real table
    arm = tmp_path / "failpoints.arm"
    assert _armed_node.arm_once(str(arm)) is None
    arm.write_text("store.after_append=3\n")
    assert "store.after_append=3" == _armed_node.arm_once(str(arm))
    assert ({"store.after_append": 3}, False, True) == (failpoints.armed(), arm.exists(), (tmp_path / "failpoints.arm.armed").exists())
    arm.write_text("store.nowhere=1\n")
    assert _armed_node.arm_once(str(arm)) is None
    assert "unknown failpoint" in (tmp_path / "failpoints.arm.refused").read_text() and not arm.exists()
    assert {"store.after_append": 3} == failpoints.armed()


def test_crash_point_steps_arm_the_running_leader_and_followers() -> None:
    """Followers and leaders alternate; all are armed on the running node but every fourth step (a restarted follower)."""
    crash = storage_faults.crash_points_schedule(random.Random(3), 60.0)
    assert [("follower", "live"), ("leader", "live"), ("follower", "restart"), ("leader", "live")] == [
        (s.target, s.arm) for s in crash[:4]]
    assert all(s.to_dict()["armed"] == s.arm for s in crash)
