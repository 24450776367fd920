"""``make demo``: bring up a 3-node cluster, apply the quickstart, show the cluster and the objects.

Runs the same commands a user types, with this Python's ``avictl``; everything lives under
``$AVICTL_HOME`` (default ``~/.avictl``). ``avictl cluster down`` stops it afterwards.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent


def run(*args: str) -> None:
    print(f"\n$ avictl {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "avictl", *args])
    if result.returncode != 0:
        print(f"demo: 'avictl {shlex.join(args)}' failed with exit code {result.returncode}", file=sys.stderr)
        raise SystemExit(result.returncode)


def main() -> None:
    run("cluster", "up", "--nodes", "3")
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    run("cluster", "status")
    for kind in ("healthmonitor", "pool", "segroup", "vsvip", "vs"):
        run(kind, "list")
    run("events", "--limit", "10")
    print("\nThe cluster keeps running: try 'avictl pool show web-pool -o yaml', then 'avictl cluster down'.")


if __name__ == "__main__":
    main()
