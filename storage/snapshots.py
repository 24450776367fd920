"""Snapshots of the views: opaque payload bytes taken at a revision, written atomically.

A snapshot file ``snap-<revision, 20 digits>.snap`` is a header ``[magic][u64 revision][u64 raft
index][u64 payload length][u32 crc32]`` followed by the payload; the crc covers the header fields
before it and the payload. A file is written under a ``.tmp`` name, fsynced, renamed into place and
the directory fsynced, so a snapshot file is either complete or absent; ``.tmp`` files are crash
leftovers and never read.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import attrs
import structlog

__all__ = ["KEEP", "Snapshot", "SnapshotStore"]

log = structlog.get_logger(__name__)

# How many of the newest snapshots are kept, so a corrupt newest one has a fallback.
KEEP = 2

_MAGIC = b"AVSNAP1\n"
_HEADER = struct.Struct(">8sQQQI")
_PREFIX = struct.Struct(">8sQQQ")
_NAME = re.compile(r"snap-(\d{20})\.snap")
_TMP_SUFFIX = ".tmp"


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be an int >= 0, got {value!r}")


@attrs.frozen
class Snapshot:
    revision: int = attrs.field(validator=_non_negative)
    raft_index: int = attrs.field(validator=_non_negative)
    payload: bytes = attrs.field(validator=attrs.validators.instance_of(bytes), repr=False)


class _BadSnapshot(ValueError):
    pass


class SnapshotStore:
    """The snapshot files of one directory."""

    def __init__(self, directory: str | Path) -> None:
        self._dir = Path(directory)
        self._dir.mkdir(parents=True, exist_ok=True)

    @property
    def directory(self) -> Path:
        return self._dir

    def save(self, revision: int, raft_index: int, payload: bytes) -> Snapshot:
        """Write a snapshot durably, then delete all but the newest :data:`KEEP`."""
        snapshot = Snapshot(revision, raft_index, payload)
        path = self._dir / _name(revision)
        tmp = path.with_name(path.name + _TMP_SUFFIX)
        prefix = _PREFIX.pack(_MAGIC, revision, raft_index, len(payload))
        crc = zlib.crc32(payload, zlib.crc32(prefix))
        with open(tmp, "wb") as f:
            f.write(prefix + struct.pack(">I", crc))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        # The data is durable before the name points at it; the rename is durable before pruning.
        os.replace(tmp, path)
        _fsync_directory(self._dir)
        self._prune()
        return snapshot

    def latest(self) -> Snapshot | None:
        """The newest snapshot that reads back intact; corrupt ones are logged and skipped."""
        for revision, path in reversed(self._files()):
            try:
                return _load(path, revision)
            except (_BadSnapshot, OSError) as exc:
                log.warning("snapshot_skipped", path=str(path), reason=str(exc))
        return None

    def _files(self) -> list[tuple[int, Path]]:
        """Snapshot files, oldest first."""
        return sorted(
            (int(match.group(1)), self._dir / entry.name)
            for entry in os.scandir(self._dir)
            if (match := _NAME.fullmatch(entry.name))
        )

    def _prune(self) -> None:
        doomed = [path for _, path in self._files()[:-KEEP]]
        doomed += [
            self._dir / entry.name
            for entry in os.scandir(self._dir)
            if entry.name.endswith(_TMP_SUFFIX) and _NAME.fullmatch(entry.name[: -len(_TMP_SUFFIX)])
        ]
        for path in doomed:
            path.unlink(missing_ok=True)
        if doomed:
            _fsync_directory(self._dir)


def _name(revision: int) -> str:
    return f"snap-{revision:020d}.snap"


def _load(path: Path, revision: int) -> Snapshot:
    with open(path, "rb") as f:
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise _BadSnapshot(f"incomplete header ({len(header)} of {_HEADER.size} bytes)")
        magic, stored_revision, raft_index, length, crc = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise _BadSnapshot(f"bad magic {magic!r}")
        if stored_revision != revision:
            raise _BadSnapshot(f"header says revision {stored_revision}, the name {revision}")
        # The length is checked against the file before the payload is read.
        available = os.fstat(f.fileno()).st_size - _HEADER.size
        if length != available:
            raise _BadSnapshot(f"header says {length} payload bytes, the file holds {available}")
        payload = f.read(length)
    if zlib.crc32(payload, zlib.crc32(header[: _PREFIX.size])) != crc:
        raise _BadSnapshot("checksum mismatch")
    return Snapshot(stored_revision, raft_index, payload)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
