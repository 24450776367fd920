"""``make demo``: a 3-node cluster, two web servers, two Service Engines, and traffic through a VIP.

Runs the same commands a user types, with this Python's ``avictl``; everything lives under
``$AVICTL_HOME`` (default ``~/.avictl``). ``python -m examples.demo down`` (or ``make demo-down``)
stops the SEs, the demo servers and the cluster.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
HOME = Path(os.environ.get("AVICTL_HOME", "~/.avictl")).expanduser()
PIDS = HOME / "demo-pids.json"
VIP_URL = "http://127.10.0.1:8080/"


def run(*args: str, quiet: bool = False) -> str:
    if not quiet:
        print(f"\n$ avictl {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "avictl", *args], capture_output=quiet, text=True)
    if result.returncode != 0:
        print(f"demo: 'avictl {shlex.join(args)}' failed with exit code {result.returncode}", file=sys.stderr)
        if quiet:
            print(result.stderr, file=sys.stderr)
        raise SystemExit(result.returncode)
    return result.stdout if quiet else ""


def background(name: str, *command: str) -> int:
    HOME.mkdir(parents=True, exist_ok=True)
    log = open(HOME / f"demo-{name}.log", "ab")
    proc = subprocess.Popen([sys.executable, *command], stdout=log, stderr=log, start_new_session=True)
    log.close()
    pids = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    pids[name] = proc.pid
    PIDS.write_text(json.dumps(pids))
    print(f"started {name} (pid {proc.pid}, log {HOME / f'demo-{name}.log'})", flush=True)
    return proc.pid


def wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"demo: {url} did not answer within {seconds:.0f} s (see the logs under {HOME})")


def up() -> None:
    run("cluster", "up", "--nodes", "3")
    print("\n# two demo web servers on 127.0.0.1:9001 and :9002", flush=True)
    for name, port in (("server-a", 9001), ("server-b", 9002)):
        background(name, "-m", "simulations.backend", "--port", str(port), "--name", name)
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    print("\n# two Service Engines", flush=True)
    for se in ("se-1", "se-2"):
        background(se, "-m", "avictl", "se", "run", "--name", se, "--report-interval", "1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        names = [s["name"] for s in json.loads(run("se", "list", "-o", "json", quiet=True))]
        if {"se-1", "se-2"} <= set(names):
            break
        time.sleep(0.3)
    run("vs", "place", "web", "--se", "se-1")
    wait_for(VIP_URL, 20)
    print(f"\n# 12 requests to {VIP_URL} (pool web-pool: round robin, server-b has ratio 2)", flush=True)
    for i in range(12):
        with urllib.request.urlopen(VIP_URL + f"req-{i}", timeout=5) as resp:
            answer = json.loads(resp.read())
        print(f"  GET /req-{i:<3} answered by {answer['server']}")
    time.sleep(1.5)  # one status report interval, so the stats below include these requests
    run("se", "list")
    se = json.loads(run("se", "show", "se-1", "-o", "json", quiet=True))
    stats = (se.get("runtime", {}).get("telemetry") or {}).get("web")
    if stats:
        stats = {k: v for k, v in stats.items() if k in ("open_connections", "total_connections", "requests", "responses", "bytes_in", "bytes_out")}
    print("\n# live stats of virtual service 'web' on se-1:")
    print(json.dumps(stats, indent=2) if stats else "  (not reported yet)")
    run("cluster", "status")
    run("events", "--limit", "10")
    print("\nEverything keeps running: try 'avictl pool show web-pool -o yaml' or 'curl http://127.10.0.1:8080/';")
    print("'make demo-down' stops the SEs, the demo servers and the cluster.")


def down() -> None:
    pids = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    for name, pid in pids.items():
        try:
            os.kill(pid, signal.SIGTERM)
            print(f"stopped {name} (pid {pid})")
        except ProcessLookupError:
            pass
    PIDS.unlink(missing_ok=True)
    run("cluster", "down")


if __name__ == "__main__":
    down() if sys.argv[1:] == ["down"] else up()
