"""Power loss of one node, simulated: after a kill -9, cut every traced file back to what it fsync'ed.

The node must have run with ``AVICTL_POWER_TRACE=1`` (see :mod:`storage.failpoints`), which
records after each fsync/fdatasync what it made durable. :func:`lose_power` then, on the stopped
node's data directory:

* event store (``events/seg-*.log``): truncates each segment to the length in its
  ``.synced`` sidecar; a segment with no sidecar was never synced (neither its data nor its
  directory entry), so it is deleted; sidecars of segments no longer there are removed;
* raft journal (``raft/raft.journal``, pysyncobj's preallocated mmap file): its content becomes
  the synced image ``raft.journal.synced`` followed by zeros up to the file's size (the file
  keeps its size; the header's last-record offset comes from the image). With no image the
  journal was never synced after its creation, which fsync'ed the bare header: it is reset to
  that header (no entries);
* everything written by fsync + rename (journal meta, pysyncobj dump, view snapshots, ``torn-*``
  copies) is kept as it is.

With ``torn`` the event store keeps part of its unsynced tail instead (a partial write-back),
which is how a torn record is made. Not modelled otherwise: a kernel that wrote back some unsynced pages before the power went (a real disk
may hold any subset of them; this keeps none), and a segment whose data was fdatasync'ed but whose
directory entry was not yet (kept here; ext4 in practice commits both together).
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

from storage.failpoints import JOURNAL_IMAGE_SUFFIX, TRACE_SUFFIX

__all__ = ["lose_power", "unsynced"]

_SEGMENT = re.compile(r"seg-\d{20}\.log")
# pysyncobj.journal: name (24) + version (8) + format (4) + last record offset (4).
_LAST_RECORD_OFFSET_AT = 36
_FIRST_RECORD_OFFSET = 40


def lose_power(data_dir: str | Path, *, dry_run: bool = False, torn: float = 0.0) -> dict[str, Any]:
    """Cut the node's traced files back to their synced state; return what was (would be) dropped.

    ``torn`` in (0, 1): event-store segments keep that fraction of their unsynced tail (a write
    back that got part of it out: usually a record cut in the middle, which the next open must
    find and truncate). The journal is always cut exactly (see the module doc).
    """
    data = Path(data_dir)
    out: dict[str, Any] = {"segments": {}, "journal": None}
    events = data / "events"
    if events.is_dir():
        out["segments"] = _cut_segments(events, dry_run, torn)
    journal = data / "raft" / "raft.journal"
    if journal.exists():
        out["journal"] = _cut_journal(journal, dry_run)
    return out


def unsynced(data_dir: str | Path, *, store_only: bool = False) -> bool:
    """Whether a power loss now would drop anything (in the event store only, with ``store_only``);
    the node should be stopped while this looks."""
    dropped = lose_power(data_dir, dry_run=True)
    if store_only:
        return any(not d.get("deleted") for d in dropped["segments"].values())
    return bool(dropped["segments"]) or bool((dropped["journal"] or {}).get("changed"))


def _cut_segments(directory: Path, dry_run: bool = False, torn: float = 0.0) -> dict[str, Any]:
    dropped: dict[str, Any] = {}
    for entry in sorted(directory.iterdir()):
        if _SEGMENT.fullmatch(entry.name):
            sidecar = entry.with_name(entry.name + TRACE_SUFFIX)
            size = entry.stat().st_size
            if not sidecar.exists():
                if not dry_run:
                    entry.unlink()
                dropped[entry.name] = {"deleted": True, "bytes": size}
                continue
            synced = int(sidecar.read_text().strip() or 0)
            if size > synced:
                keep = synced + int((size - synced) * torn) if 0.0 < torn < 1.0 else synced
                if not dry_run:
                    with open(entry, "r+b") as f:
                        f.truncate(keep)
                dropped[entry.name] = {"kept": keep, "bytes": size - keep, "unsynced": size - synced}
        elif entry.name.endswith(TRACE_SUFFIX):
            target = entry.with_name(entry.name[: -len(TRACE_SUFFIX)])
            if _SEGMENT.fullmatch(target.name) and not target.exists() and not dry_run:
                entry.unlink()
    return dropped


def _cut_journal(path: Path, dry_run: bool = False) -> dict[str, Any]:
    image = path.with_name(path.name + JOURNAL_IMAGE_SUFFIX)
    size = path.stat().st_size
    with open(path, "rb" if dry_run else "r+b") as f:
        before = f.read()
        if image.exists():
            content = image.read_bytes()
        else:
            content = before[:_LAST_RECORD_OFFSET_AT] + struct.pack("<I", _FIRST_RECORD_OFFSET)
        last_before = struct.unpack_from("<I", before, _LAST_RECORD_OFFSET_AT)[0] if len(before) >= 40 else 0
        last_after = struct.unpack_from("<I", content, _LAST_RECORD_OFFSET_AT)[0]
        new = content + b"\0" * max(0, size - len(content))
        changed = last_before != last_after or before[:last_after] != content[:last_after]
        if not dry_run and new != before:
            f.seek(0)
            f.write(new)
            f.truncate(max(size, len(content)))
    return {"last_record_offset_before": last_before, "last_record_offset_after": last_after,
            "image": image.exists(), "changed": changed}
