"""``make demo``: a 3-node cluster, two web servers, an active/standby SE pair it starts itself, traffic, a failover.

Runs the same commands a user types, with this Python's ``avictl``; everything lives under
``$AVICTL_HOME`` (default ``~/.avictl``). ``python -m examples.demo down`` (or ``make demo-down``)
stops the demo servers and the cluster with its SEs.
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


def vs_roles() -> list[tuple[str, str | None]]:
    vs = json.loads(run("vs", "show", "web", "-o", "json", quiet=True))
    return [(r["se"], r.get("reported_role")) for r in (vs.get("runtime") or {}).get("se_roles") or []]


def wait_pair(seconds: float, not_active: str | None = None) -> tuple[str, str]:
    """The (active, standby) SEs of VS web once both report their role."""
    deadline = time.monotonic() + seconds
    roles: list[tuple[str, str | None]] = []
    while time.monotonic() < deadline:
        roles = vs_roles()
        if len(roles) == 2 and roles[0][1] == "active" and roles[1][1] == "standby" and roles[0][0] != not_active:
            return roles[0][0], roles[1][0]
        time.sleep(0.3)
    raise SystemExit(
        f"demo: virtual service web is not on an active/standby pair after {seconds:.0f} s (now: {roles or 'unplaced'}). "
        f"The cluster starts its SEs itself since this release: if {HOME} holds a cluster made before, "
        "'avictl cluster down --purge' and 'make demo' again; SE logs are under $AVICTL_HOME/se/<name>/se.log"
    )


def wait_servers_up(se: str, seconds: float) -> None:
    """Until the health monitor on ``se`` has marked every server of web-pool UP (traffic before
    that finds no server up: a fresh SE counts a server down until its first successful checks)."""
    deadline = time.monotonic() + seconds
    servers: dict[str, dict[str, str]] = {}
    while time.monotonic() < deadline:
        pool = json.loads(run("pool", "show", "web-pool", "-o", "json", quiet=True))
        servers = (pool.get("runtime") or {}).get("servers") or {}
        if len(servers) == 2 and all(states.get(se) == "UP" for states in servers.values()):
            return
        time.sleep(0.3)
    raise SystemExit(f"demo: the servers of web-pool are not all UP on {se} after {seconds:.0f} s (now: {servers or 'no report'}); "
                     f"are the demo servers running? (logs under {HOME})")


def wait_requests(se: str, at_least: int, seconds: float) -> dict[str, int]:
    """The live stats of VS web on ``se`` once its reports count ``at_least`` requests."""
    deadline = time.monotonic() + seconds
    stats: dict[str, int] = {}
    while time.monotonic() < deadline:
        shown = json.loads(run("se", "show", se, "-o", "json", quiet=True))
        stats = (shown.get("runtime", {}).get("telemetry") or {}).get("web") or {}
        if stats.get("requests", 0) >= at_least:
            break
        time.sleep(0.3)
    return {k: v for k, v in stats.items() if k in ("open_connections", "total_connections", "requests", "responses", "bytes_in", "bytes_out")}


def traffic(count: int) -> None:
    for i in range(count):
        with urllib.request.urlopen(VIP_URL + f"req-{i}", timeout=5) as resp:
            answer = json.loads(resp.read())
        print(f"  GET /req-{i:<3} answered by {answer['server']}")


def up() -> None:
    run("cluster", "up", "--nodes", "3")
    print("\n# two demo web servers on 127.0.0.1:9001 and :9002", flush=True)
    for name, port in (("server-a", 9001), ("server-b", 9002)):
        background(name, "-m", "simulations.backend", "--port", str(port), "--name", name)
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    run("apply", "-f", str(EXAMPLES / "quickstart.yaml"))
    print("\n# SE group web-group is active/standby: the leader starts two Service Engines and places web on them", flush=True)
    active, standby = wait_pair(60)
    run("vs", "show", "web")
    print(f"\n# the health monitor web-http checks both servers from {active} before traffic is sent", flush=True)
    wait_servers_up(active, 30)
    wait_for(VIP_URL, 20)
    before = wait_requests(active, 0, 5).get("requests", 0)
    print(f"\n# 12 requests to {VIP_URL} through {active} (pool web-pool: round robin, server-b has ratio 2)", flush=True)
    traffic(12)
    stats = wait_requests(active, before + 12, 10)
    run("se", "list")
    print(f"\n# live stats of virtual service 'web' on {active}:")
    print(json.dumps(stats, indent=2) if stats else "  (not reported yet)")

    pid = int((HOME / "se" / active / "se.pid").read_text())
    print(f"\n# kill -9 of the active SE {active} (pid {pid}): {standby} takes the VIP over", flush=True)
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    wait_for(VIP_URL, 5)
    print(f"  the VIP answered again {1000 * (time.monotonic() - started):.0f} ms after the kill")
    traffic(3)
    new_active, new_standby = wait_pair(30, not_active=active)
    print(f"  now: {new_active} active, {new_standby} standby (the cloud restarted {active}; failback is manual: 'avictl vs switchover web')")
    run("cluster", "status")
    run("events", "--limit", "12")
    print("\nEverything keeps running: try 'avictl vs show web', 'avictl pool show web-pool -o yaml' or 'curl http://127.10.0.1:8080/';")
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
