"""``python -m simulations.chaos._armed_node --config PATH``: ``cluster.main``, plus failpoints armed while it runs.

:mod:`storage.failpoints` reads ``AVICTL_FAILPOINTS`` once, at start. The ``crash-points`` scenario
also arms a point on a node that is running (the acting leader): it writes the spec
(``"store.after_append=3"``, as the variable takes it) to the file named by
``AVICTL_FAILPOINTS_ARM_FILE`` (write a temporary file, then rename it there). A daemon thread
here polls for that file every 20 ms, arms the points (the Nth hit *from now on* kills the
process, as after a start), renames the file to ``<file>.armed`` (the acknowledgement the harness
waits for) and writes ``armed live: SPEC`` to stderr. A spec that does not parse is renamed to
``<file>.refused`` with the reason.

Harness only: a production controller is never started this way.
"""

from __future__ import annotations

import os
import runpy
import threading
import time
from typing import Optional

from storage import failpoints

__all__ = ["ARM_FILE_ENV", "ARMED_SUFFIX", "REFUSED_SUFFIX", "arm_once"]

ARM_FILE_ENV = "AVICTL_FAILPOINTS_ARM_FILE"
ARMED_SUFFIX = ".armed"
REFUSED_SUFFIX = ".refused"
POLL_INTERVAL = 0.02


def arm_once(path: str) -> Optional[str]:
    """Arm what ``path`` asks for, if it exists: the spec armed (and acknowledged), else None."""
    try:
        with open(path) as f:
            spec = f.read().strip()
    except FileNotFoundError:
        return None
    try:
        points = failpoints.parse(spec)
    except ValueError as exc:
        with open(path + REFUSED_SUFFIX, "w") as f:
            f.write(f"{exc}\n")
        os.unlink(path)
        return None
    # Armed before the acknowledgement: once the harness sees it, the next hit counts.
    failpoints.arm(points)
    os.replace(path, path + ARMED_SUFFIX)
    os.write(2, f"armed live: {spec}\n".encode())
    return spec


def _watch(path: str) -> None:
    while True:
        if arm_once(path) is None:
            time.sleep(POLL_INTERVAL)


def main() -> None:
    path = os.environ.get(ARM_FILE_ENV)
    if path:
        threading.Thread(target=_watch, args=(path,), name="failpoint-arming", daemon=True).start()
    runpy.run_module("cluster.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
