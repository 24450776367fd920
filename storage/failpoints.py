"""Named crash points in the write path, and the sync trace that power-loss simulation reads.

Both are off unless their environment variable is set when this module is imported (read once,
at start); unarmed, a hook is one function call and one dict lookup (``hit``) or one global test
(the trace hooks).

Failpoints
----------
``AVICTL_FAILPOINTS="store.after_append=3,raft.journal.before_sync=1"`` arms points by name: the
process dies on the Nth hit of that point (counted from start) with ``os._exit(137)`` - no
cleanup, no flush of Python buffers, no ``finally``, like kill -9 (the page cache keeps what was
handed to the OS, as after a real kill -9). A line ``failpoint <name> fired (hit N)`` goes to
stderr first. Unknown names are refused at import (``ValueError``), so a typo cannot silently
disarm a scenario.

The points, in the order a committed write meets them on one node:

``raft.journal.after_add`` (``cluster/_pysyncobj_compat.py``, ``DurableFileJournal.add``)
    an entry is written into the journal's mmap, not yet fdatasync'ed (leader: its own new
    entry; follower: an entry from ``append_entries``).
``raft.journal.before_sync`` (``DurableFileJournal.flush``)
    about to fdatasync the journal (before a commit index is persisted / a follower acks).
``raft.journal.after_sync`` (``DurableFileJournal.flush``)
    the journal is durable, the follower's ack / the leader's commit index not yet sent/stored.
``raft.meta.before_rename`` (``_DurableMetaStorer.storeMeta``)
    the new meta (term, vote, commit index) is written and fsync'ed under ``.tmp``, not renamed.
``raft.dump.before_rename`` (``_atomic_replace``)
    a pysyncobj dump (compaction) is written and fsync'ed under its temporary name, not renamed.
``store.after_append`` (``storage/file.py``, ``FileLog.append``)
    a record is appended to the event store (in the file object's buffer), nothing fsync'ed.
``store.before_sync`` (``FileLog.prepare_sync``'s ``make_durable``, on the fsync thread)
    the record was handed to the OS (flushed), its fdatasync not started.
``store.after_sync`` (``cluster/node.py``, ``Controller._flushed``)
    the store fsync returned; no writer was answered yet, the applied index not advanced.

``AVICTL_FAILPOINTS_EIO`` takes the same form but the Nth hit raises ``OSError(EIO)`` there
instead of exiting, as a failing disk would; only at the two sync points
(``raft.journal.before_sync``, ``store.before_sync``).

Sync trace (power-loss simulation)
----------------------------------
``AVICTL_POWER_TRACE=1`` makes the durable files record, after each successful fsync or
fdatasync and before the caller relies on it, what that sync made durable:

* an event-store segment ``seg-*.log``: its length when the sync started, in the sidecar
  ``seg-*.log.synced`` (20 digits, rewritten in place);
* the raft journal (an mmap'ed, preallocated, partly rewritten-in-place file): a copy of its
  synced content, ``raft.journal.synced``, kept up to date range by range (what was appended or
  rewritten since the last sync, and the header).

Sidecars are written, not fsync'ed: the simulation kills the process, not the machine, so the
page cache keeps them; and they are written after the sync returned and before the writer, the
leader or the applied index hears of it, so a process killed in between has only a sidecar that
understates what was durable, which is a power loss just before that sync - a case that exists.
``simulations.chaos.power`` reads them after a kill -9 and cuts every traced file back to them.
Files made durable by fsync + rename (meta, dump, view snapshots) need no trace.
"""

from __future__ import annotations

import errno
import os
import struct
import sys
import threading
from typing import Any

__all__ = ["EIO_ENV", "ENV", "JOURNAL_IMAGE_SUFFIX", "POINTS", "TRACE_ENV", "TRACE_SUFFIX", "arm", "armed", "hit",
           "journal_rewritten", "journal_synced", "parse", "sync_started", "synced", "tracing"]

POINTS = (
    "raft.journal.after_add",
    "raft.journal.before_sync",
    "raft.journal.after_sync",
    "raft.meta.before_rename",
    "raft.dump.before_rename",
    "store.after_append",
    "store.before_sync",
    "store.after_sync",
)
ENV = "AVICTL_FAILPOINTS"
EIO_ENV = "AVICTL_FAILPOINTS_EIO"
TRACE_ENV = "AVICTL_POWER_TRACE"
TRACE_SUFFIX = ".synced"
JOURNAL_IMAGE_SUFFIX = ".synced"
EXIT_CODE = 137


def parse(spec: str, env: str = ENV) -> dict[str, int]:
    """``"a=3,b=1"`` -> ``{"a": 3, "b": 1}``; refuses unknown names and counts below 1."""
    out: dict[str, int] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, count = part.partition("=")
        name = name.strip()
        if name not in POINTS:
            raise ValueError(f"{env}: unknown failpoint {name!r}; known: {', '.join(POINTS)}")
        n = int(count) if sep else 1
        if n < 1:
            raise ValueError(f"{env}: {name} count must be >= 1, got {n}")
        out[name] = n
    return out


# name -> hits left before death; empty unless armed (the only thing ``hit`` reads when unarmed).
_armed: dict[str, int] = parse(os.environ.get(ENV, ""))
# name -> hits left before the I/O error; raised on that hit only.
_eio: dict[str, int] = parse(os.environ.get(EIO_ENV, ""), EIO_ENV)
# Only where the caller handles a failed sync as a failing disk (stop the node): elsewhere an
# injected error would only test our failpoint, not the code.
EIO_POINTS = ("raft.journal.before_sync", "store.before_sync")
if set(_eio) - set(EIO_POINTS):
    raise ValueError(f"{EIO_ENV}: I/O errors can be injected only at {', '.join(EIO_POINTS)}")
_hits_lock = threading.Lock()


def arm(points: dict[str, int]) -> None:
    """Arm ``points`` (as :func:`parse` returns them) in a running process: the Nth hit from now
    on fires. For harnesses that arm a live node (``simulations.chaos._armed_node``)."""
    with _hits_lock:
        _armed.update(points)


def armed() -> dict[str, int]:
    """The armed points and the hits each has left."""
    return dict(_armed)


def hit(name: str) -> None:
    """A pass through failpoint ``name``: dies here (exit 137) on its armed Nth hit."""
    if name in _armed:
        _count(name)
    if name in _eio:
        _raise_eio(name)


def _raise_eio(name: str) -> None:
    with _hits_lock:
        _eio[name] -= 1
        left = _eio[name]
    if left == 0:
        os.write(2, f"failpoint {name} raises EIO (pid {os.getpid()})\n".encode())
        raise OSError(errno.EIO, f"injected I/O error at failpoint {name}")


def _count(name: str) -> None:
    with _hits_lock:
        _armed[name] -= 1
        left = _armed[name]
    if left <= 0:
        try:
            os.write(2, f"failpoint {name} fired (pid {os.getpid()})\n".encode())
        finally:
            os._exit(EXIT_CODE)


# -- the sync trace ------------------------------------------------------------------------------

_tracing = os.environ.get(TRACE_ENV, "") not in ("", "0")
_trace_lock = threading.Lock()
_pending: dict[int, int] = {}  # dup'ed fd -> file length when its sync was prepared
_recorded: dict[str, int] = {}  # path -> synced length recorded by this process
_journals: dict[str, "_JournalTrace"] = {}


def tracing() -> bool:
    return _tracing


def sync_started(fd: int) -> None:
    """``fd``'s data handed to the OS so far is what the coming fdatasync of ``fd`` covers."""
    if _tracing:
        with _trace_lock:
            _pending[fd] = os.fstat(fd).st_size


def synced(fd: int) -> None:
    """An fsync/fdatasync of ``fd`` returned: record the length it made durable (see module doc)."""
    if not _tracing:
        return
    path = os.readlink(f"/proc/self/fd/{fd}")
    with _trace_lock:
        length = _pending.pop(fd, None)
        if length is None:
            length = os.fstat(fd).st_size
        # Within one process a file only grows; a later, smaller figure is an older sync finishing late.
        if length < _recorded.get(path, -1):
            return
        _recorded[path] = length
        _write_sidecar(path + TRACE_SUFFIX, f"{length:020d}\n".encode())


def _write_sidecar(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, 0)
    finally:
        os.close(fd)


class _JournalTrace:
    def __init__(self, path: str) -> None:
        self.path = path
        self.image = path + JOURNAL_IMAGE_SUFFIX
        self.synced_end: int | None = None  # None: nothing synced by this process yet (copy it all)
        self.low_water: int | None = None  # lowest offset rewritten since the last sync


def _journal_state(journal: Any) -> tuple[Any, int, _JournalTrace]:
    mapped = journal._FileJournal__journalFile
    path = os.readlink(f"/proc/self/fd/{mapped._ResizableFile__f.fileno()}")
    trace = _journals.get(path)
    if trace is None:
        trace = _journals[path] = _JournalTrace(path)
    return mapped, journal._FileJournal__currentOffset, trace


def journal_rewritten(journal: Any) -> None:
    """The journal was cut back (clear / deleteEntriesFrom): bytes from its new end on will change."""
    if not _tracing:
        return
    with _trace_lock:
        _mapped, end, trace = _journal_state(journal)
        trace.low_water = end if trace.low_water is None else min(trace.low_water, end)


def journal_synced(journal: Any) -> None:
    """The journal's mmap was fdatasync'ed: bring the image of its durable content up to date."""
    if not _tracing:
        return
    with _trace_lock:
        mapped, end, trace = _journal_state(journal)
        header_end = 40  # name, version, format, last record offset (pysyncobj.journal)
        if trace.synced_end is None:
            start = 0  # the first sync of this process covers all an earlier process left
        else:
            start = min(trace.synced_end, trace.low_water if trace.low_water is not None else end)
        start = max(min(start, end), header_end)
        fd = os.open(trace.image, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if trace.synced_end is None:
                os.pwrite(fd, mapped.read(0, end), 0)
            else:
                os.pwrite(fd, mapped.read(start, end - start), start)
                os.pwrite(fd, mapped.read(0, header_end), 0)
            os.ftruncate(fd, end)
        finally:
            os.close(fd)
        last_offset = struct.unpack("<I", mapped.read(36, 4))[0]
        if last_offset != end:  # pragma: no cover - pysyncobj's format changed under us
            print(f"failpoints: journal header says {last_offset}, offset is {end}", file=sys.stderr)
        trace.synced_end = end
        trace.low_water = None
