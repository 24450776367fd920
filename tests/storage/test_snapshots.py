"""SnapshotStore: atomic saves, the newest intact snapshot wins, two are kept."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from storage.snapshots import KEEP, Snapshot, SnapshotStore


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def store(tmp_path: Path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "snapshots")


def test_no_snapshot_yet(store: SnapshotStore) -> None:
    """An empty store has no latest snapshot."""
    assert store.latest() is None


def test_latest_is_the_newest_save(store: SnapshotStore) -> None:
    """latest() returns the snapshot of the highest revision, payload intact."""
    store.save(10, 4, b"ten")
    store.save(25, 9, b"twenty-five")
    assert Snapshot(25, 9, b"twenty-five") == store.latest()


def test_latest_goes_by_revision_not_save_order(store: SnapshotStore) -> None:
    """A snapshot saved later at a lower revision is not the newest."""
    store.save(30, 9, b"thirty")
    store.save(20, 5, b"twenty")
    assert 30 == store.latest().revision  # type: ignore[union-attr]


def test_empty_payload_round_trips(store: SnapshotStore) -> None:
    """A snapshot of nothing is still a snapshot."""
    store.save(1, 1, b"")
    assert Snapshot(1, 1, b"") == store.latest()


def test_only_the_newest_two_are_kept(store: SnapshotStore) -> None:
    """Saving a third snapshot deletes the oldest."""
    for revision in (1, 2, 3, 4):
        store.save(revision, revision, b"x")
    kept = ["snap-00000000000000000003.snap", "snap-00000000000000000004.snap"]
    assert (2, kept) == (KEEP, names(store.directory))


def test_same_revision_saved_again_replaces_it(store: SnapshotStore) -> None:
    """A second save at one revision replaces the first."""
    store.save(5, 5, b"first")
    store.save(5, 6, b"second")
    assert Snapshot(5, 6, b"second") == store.latest()


def test_corrupt_newest_falls_back_to_the_previous(store: SnapshotStore) -> None:
    """A newest snapshot with a flipped payload byte is skipped for the one before it."""
    store.save(10, 4, b"older")
    store.save(20, 8, b"newer")
    newest = store.directory / "snap-00000000000000000020.snap"
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0x01
    newest.write_bytes(bytes(data))
    assert Snapshot(10, 4, b"older") == store.latest()


def test_skipped_snapshot_is_logged(store: SnapshotStore) -> None:
    """Skipping a corrupt snapshot logs a warning naming it."""
    store.save(10, 4, b"older")
    store.save(20, 8, b"newer")
    newest = store.directory / "snap-00000000000000000020.snap"
    newest.write_bytes(newest.read_bytes()[:10])
    with capture_logs() as logs:
        store.latest()
    assert [("warning", str(newest))] == [
        (e["log_level"], e["path"]) for e in logs if e["event"] == "snapshot_skipped"
    ]


def test_truncated_newest_falls_back(store: SnapshotStore) -> None:
    """A newest snapshot missing its last bytes is skipped."""
    store.save(10, 4, b"older")
    store.save(20, 8, b"newer payload")
    newest = store.directory / "snap-00000000000000000020.snap"
    newest.write_bytes(newest.read_bytes()[:-3])
    assert 10 == store.latest().revision  # type: ignore[union-attr]


def test_header_claiming_a_huge_payload_is_skipped(store: SnapshotStore) -> None:
    """A length field larger than the file is refused before the payload is read."""
    store.save(10, 4, b"older")
    store.save(20, 8, b"newer")
    newest = store.directory / "snap-00000000000000000020.snap"
    data = bytearray(newest.read_bytes())
    data[24:32] = b"\xff" * 8
    newest.write_bytes(bytes(data))
    assert 10 == store.latest().revision  # type: ignore[union-attr]


def test_file_renamed_to_another_revision_is_skipped(store: SnapshotStore) -> None:
    """A snapshot whose name and header disagree is not trusted."""
    store.save(10, 4, b"ten")
    (store.directory / "snap-00000000000000000010.snap").rename(
        store.directory / "snap-00000000000000000099.snap"
    )
    assert store.latest() is None


def test_tmp_leftover_is_ignored(store: SnapshotStore) -> None:
    """A half-written .tmp file from a crash is never read, even at a newer revision."""
    store.save(10, 4, b"ten")
    (store.directory / "snap-00000000000000000050.snap.tmp").write_bytes(b"half writ")
    assert Snapshot(10, 4, b"ten") == store.latest()


def test_tmp_leftover_is_removed_by_the_next_save(store: SnapshotStore) -> None:
    """A save cleans up the .tmp leftovers of an earlier crash."""
    (store.directory / "snap-00000000000000000050.snap.tmp").write_bytes(b"half writ")
    store.save(60, 7, b"sixty")
    assert ["snap-00000000000000000060.snap"] == names(store.directory)


def test_every_snapshot_corrupt_gives_none(store: SnapshotStore) -> None:
    """With no intact snapshot there is none to start from."""
    store.save(10, 4, b"ten")
    (store.directory / "snap-00000000000000000010.snap").write_bytes(b"garbage")
    assert store.latest() is None


def test_negative_revision_refused(store: SnapshotStore) -> None:
    """Revisions and raft indexes are never negative."""
    with pytest.raises(ValueError):
        store.save(-1, 0, b"")
