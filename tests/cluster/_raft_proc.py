"""Real pysyncobj nodes in child processes, for the slow tests of ``cluster._pysyncobj_compat``.

Child side (``python -m tests.cluster._raft_proc node CONFIG_JSON``): one ``SyncObj`` with a
replicated counter, driven by JSON lines on stdin and answering JSON lines on stdout. Its status
is captured inside pysyncobj's tick thread (an ``addOnTickCallback``), never read across threads.

Parent side: :class:`NodeProcess`, :class:`Cluster`, and the scenarios :func:`livelock_trial`
and :func:`throughput_trial`. Run as a script for the measurements the test suite does not make::

    .venv/bin/python -m tests.cluster._raft_proc livelock --runs 5 [--no-patch]
    .venv/bin/python -m tests.cluster._raft_proc bench [--seconds 4]
    .venv/bin/python -m tests.cluster._raft_proc msync
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Self

from tests.helpers import free_ports, wait_until_or_none

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASSWORD = "raft-proc-test-password"

#: Tight timings for chaos tests (see the design notes, "Performance").
FAST_CONF: dict[str, Any] = {
    "raftMinTimeout": 0.2,
    "raftMaxTimeout": 0.6,
    "appendEntriesPeriod": 0.05,
    "autoTickPeriod": 0.01,
    "connectionRetryTime": 0.5,
    "connectionTimeout": 1.5,
    # Compaction (a snapshot) heals the livelock: keep it out of the way.
    "logCompactionMinEntries": 10**9,
    "logCompactionMinTime": 10**9,
}


# -- child ---------------------------------------------------------------------------------------


def _node_main(cfg: dict[str, Any]) -> None:
    from pysyncobj import SyncObj, SyncObjConf, replicated

    from cluster import _pysyncobj_compat
    from cluster.logsetup import configure_logging

    # stdout carries the JSON-lines protocol: every log line goes to stderr.
    configure_logging(stream=sys.stderr)
    if cfg["patch"]:
        _pysyncobj_compat.install()
        _pysyncobj_compat.set_durable(cfg["durable"])
    elif cfg["durable"]:
        raise SystemExit("durable journal needs the patch")

    class CounterNode(SyncObj):  # type: ignore[misc]
        # A class attribute, so the instance value lives only in __dict__ once replicated
        # (pysyncobj dumps every instance attribute created after its __init__).
        counter = 0

        @replicated
        def add(self, n: int, pad: bytes = b"") -> int:
            self.counter += n
            return self.counter

    data_dir = cfg["dir"]
    conf = SyncObjConf(
        password=cfg["password"],
        journalFile=os.path.join(data_dir, "journal"),
        fullDumpFile=os.path.join(data_dir, "dump"),
        **cfg["conf"],
    )
    node = CounterNode(cfg["self"], cfg["partners"], conf)
    driver = _Driver(node, pad=b"x" * cfg.get("pad", 100))
    node.addOnTickCallback(driver.on_tick)
    _out({"ready": True, "pid": os.getpid()})
    for line in sys.stdin:
        request = json.loads(line)
        reply = driver.handle(request)
        reply["id"] = request.get("id")
        _out(reply)
        if request["op"] == "quit":
            break
    node.destroy()
    os._exit(0)


def _out(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class _Driver:
    def __init__(self, node: Any, pad: bytes) -> None:
        self.node = node
        self.pad = pad
        self.status: dict[str, Any] = {}
        self.lock = threading.Lock()
        self.inflight = 0
        self.submitted = 0
        self.ok = 0
        self.failed = 0
        self.stop = threading.Event()
        self.writer: threading.Thread | None = None

    def on_tick(self) -> None:
        node = self.node
        raft_log = node._SyncObj__raftLog
        leader = node._getLeader()
        status = {
            "t": time.monotonic(),
            "leader": node._isLeader(),
            "leader_addr": None if leader is None else leader.id,
            "term": node.raftCurrentTerm,
            "commit": node.raftCommitIndex,
            "applied": node.raftLastApplied,
            "last_idx": raft_log[-1][1],
            "last_term": raft_log[-1][2],
            "counter": node.counter,
            "next_idx": {n.id: i for n, i in node._SyncObj__raftNextIndex.items()},
            "match_idx": {n.id: i for n, i in node._SyncObj__raftMatchIndex.items()},
            "flush_count": getattr(raft_log, "flush_count", None),
            "flush_seconds": getattr(raft_log, "flush_seconds", None),
        }
        self.status = status

    def _done(self, result: Any, err: Any) -> None:
        with self.lock:
            self.inflight -= 1
            if err == 0:
                self.ok += 1
            else:
                self.failed += 1

    def _write_loop(self, rate: float | None, max_inflight: int, duration: float) -> None:
        deadline = time.monotonic() + duration
        slot = 0.01
        while not self.stop.is_set() and time.monotonic() < deadline:
            started = time.monotonic()
            if self.node._isLeader():
                budget = max_inflight if rate is None else max(1, int(rate * slot))
                for _ in range(budget):
                    with self.lock:
                        if self.inflight >= max_inflight:
                            break
                        self.inflight += 1
                        self.submitted += 1
                    self.node.add(1, self.pad, callback=self._done)
            time.sleep(max(0.0, slot - (time.monotonic() - started)))

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "status":
            with self.lock:
                counts = {"submitted": self.submitted, "ok": self.ok, "failed": self.failed, "inflight": self.inflight}
            return {"status": self.status, "writer": counts}
        if op == "write":
            self.stop.clear()
            self.writer = threading.Thread(
                target=self._write_loop,
                args=(request.get("rate"), request.get("inflight", 200), request.get("duration", 60.0)),
                daemon=True,
            )
            self.writer.start()
            return {"ok": True}
        if op == "stop_writes":
            self.stop.set()
            return {"ok": True}
        if op == "add":
            done = threading.Event()
            box: dict[str, Any] = {}

            def callback(result: Any, err: Any) -> None:
                box.update(result=result, err=err)
                done.set()

            self.node.add(1, self.pad, callback=callback)
            if not done.wait(request.get("wait", 5.0)):
                return {"ok": False, "err": "timeout"}
            return {"ok": box["err"] == 0, "err": box["err"], "result": box["result"]}
        if op == "quit":
            return {"ok": True}
        return {"error": f"unknown op {op!r}"}


def _journal_main(cfg: dict[str, Any]) -> None:
    """Add entries to a DurableFileJournal, report, then wait to be killed."""
    from cluster._pysyncobj_compat import DurableFileJournal

    journal = DurableFileJournal(cfg["path"])
    for idx in range(cfg["first"], cfg["first"] + cfg["count"]):
        journal.add(b"entry-%d" % idx, idx, cfg["term"])
    if cfg.get("sync"):
        journal.sync()
    _out({"added": cfg["count"]})
    # The test kills this process within seconds; the bound only makes sure it never lingers.
    time.sleep(60)


# -- parent --------------------------------------------------------------------------------------


def spawn_child(mode: str, cfg: dict[str, Any], stderr_path: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(stderr_path, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.cluster._raft_proc", mode, json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO_ROOT,
            env=env,
        )


class NodeProcess:
    """One child node; requests time out instead of blocking (a stopped child never answers)."""

    def __init__(self, addr: str, partners: list[str], data_dir: str, patch: bool, durable: bool, conf: dict[str, Any]) -> None:
        self.addr = addr
        self.data_dir = data_dir
        os.makedirs(data_dir, exist_ok=True)
        cfg = {"self": addr, "partners": partners, "dir": data_dir, "password": PASSWORD,
               "patch": patch, "durable": durable, "conf": conf}
        self.proc = spawn_child("node", cfg, os.path.join(data_dir, "stderr.log"))
        self._buf = b""
        self._next_id = 0
        self.stopped = False

    @property
    def port(self) -> int:
        return int(self.addr.rsplit(":", 1)[1])

    def _readline(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def wait_ready(self, timeout: float = 10.0) -> bool:
        reply = self._readline(time.monotonic() + timeout)
        return bool(reply and reply.get("ready"))

    def request(self, op: str, timeout: float = 2.0, **kwargs: Any) -> dict[str, Any] | None:
        if self.stopped or self.proc.poll() is not None:
            return None
        self._next_id += 1
        request_id = self._next_id
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(dict(kwargs, op=op, id=request_id)) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            return None
        deadline = time.monotonic() + timeout
        while True:
            reply = self._readline(deadline)
            if reply is None or reply.get("id") == request_id:
                return reply

    def status(self, timeout: float = 2.0) -> dict[str, Any] | None:
        reply = self.request("status", timeout=timeout)
        return None if reply is None else reply["status"] or None

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.stopped = sig == signal.SIGSTOP

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                try:
                    pipe.close()
                except OSError:
                    pass


class Cluster:
    """Three child nodes on free 127.0.0.1 ports; :meth:`close` kills every child it started."""

    def __init__(self, base_dir: str, patch: bool = True, durable: bool = True, conf: dict[str, Any] | None = None, size: int = 3) -> None:
        addrs = [f"127.0.0.1:{p}" for p in free_ports(size)]
        self.nodes: list[NodeProcess] = []
        try:
            for i, addr in enumerate(addrs):
                partners = [a for a in addrs if a != addr]
                self.nodes.append(NodeProcess(addr, partners, os.path.join(base_dir, f"n{i}"), patch, durable, dict(conf or FAST_CONF)))
            for node in self.nodes:
                if not node.wait_ready():
                    raise RuntimeError(f"node {node.addr} did not start; see {node.data_dir}/stderr.log")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for node in self.nodes:
            node.kill()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def statuses(self) -> dict[str, dict[str, Any]]:
        out = {}
        for node in self.nodes:
            status = node.status(timeout=1.0)
            if status:
                out[node.addr] = status
        return out

    def leader(self, timeout: float = 10.0, exclude: NodeProcess | None = None) -> NodeProcess | None:
        """The running node that leads in the highest term, once its peers agree."""

        def find() -> NodeProcess | None:
            statuses = self.statuses()
            leaders = [(s["term"], addr) for addr, s in statuses.items() if s["leader"]]
            if not leaders:
                return None
            term, addr = max(leaders)
            agreeing = sum(1 for s in statuses.values() if s["leader_addr"] == addr and s["term"] == term)
            if agreeing < 2 or (exclude is not None and addr == exclude.addr):
                return None
            return next(n for n in self.nodes if n.addr == addr)

        return wait_until_or_none(find, timeout, interval=0.05)


def livelock_trial(base_dir: str, patch: bool, pause: float = 8.0, catchup_timeout: float = 20.0,
                   rate: float = 800.0, conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pause the loaded leader for ``pause`` s while a new leader takes writes, resume it, and
    time how long until its commit index and counter equal the leader's (writes stopped).

    Returns ``catchup_s`` (None if not caught up within ``catchup_timeout``) and diagnostics.
    Bounded: every wait has a deadline and every child is killed on the way out.
    """
    result: dict[str, Any] = {"patch": patch, "catchup_s": None}
    with Cluster(base_dir, patch=patch, durable=patch, conf=conf) as cluster:
        old = cluster.leader(timeout=15.0)
        if old is None:
            raise RuntimeError("no leader elected")
        for node in cluster.nodes:
            node.request("write", rate=rate, inflight=400, duration=pause + 20.0)
        # Load the leader for a while, so it holds unreplicated entries when it stops.
        if not wait_until_or_none(lambda: (old.request("status") or {}).get("writer", {}).get("ok", 0) > rate, 10.0, interval=0.02):
            raise RuntimeError("writes do not commit before the pause")
        before = old.status()
        old.signal(signal.SIGSTOP)
        paused_at = time.monotonic()
        new = cluster.leader(timeout=5.0, exclude=old)
        if new is None:
            raise RuntimeError("no new leader while the old one was paused")
        wait_until_or_none(lambda: time.monotonic() - paused_at >= pause, pause + 1.0, interval=0.05)
        new_before_resume = new.status()
        for node in cluster.nodes:
            if node is not old:
                node.request("stop_writes")
        old.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        old.request("stop_writes", timeout=5.0)

        def caught_up() -> float | None:
            leader_status = new.status(timeout=1.0)
            old_status = old.status(timeout=1.0)
            if not leader_status or not old_status or not leader_status["leader"]:
                return None
            if old_status["commit"] >= leader_status["commit"] and old_status["counter"] == leader_status["counter"] \
                    and leader_status["commit"] > (new_before_resume or {}).get("commit", 0):
                return time.monotonic() - resumed_at
            return None

        result["catchup_s"] = wait_until_or_none(caught_up, catchup_timeout, interval=0.02)
        result.update(
            paused_s=round(resumed_at - paused_at, 2),
            old_before_pause={k: before.get(k) for k in ("term", "commit", "last_idx")} if before else None,
            leader_at_resume={k: new_before_resume.get(k) for k in ("term", "commit", "last_idx")} if new_before_resume else None,
            old_final={k: v for k, v in (old.status() or {}).items() if k in ("term", "commit", "last_idx", "last_term", "counter")},
            leader_final={k: v for k, v in (new.status() or {}).items() if k in ("term", "commit", "last_idx", "counter", "next_idx", "match_idx")},
        )
    return result


def throughput_trial(base_dir: str, durable: bool, seconds: float = 4.0, inflight: int = 2000,
                     conf: dict[str, Any] | None = None) -> dict[str, Any]:
    """Commits per second seen by the leader's own writer (100-byte entries, callbacks)."""
    with Cluster(base_dir, patch=True, durable=durable, conf=conf) as cluster:
        leader = cluster.leader(timeout=15.0)
        if leader is None:
            raise RuntimeError("no leader elected")
        leader.request("write", rate=None, inflight=inflight, duration=seconds + 10.0)
        wait_until_or_none(lambda: (leader.request("status") or {}).get("writer", {}).get("ok", 0) > 500, 10.0, interval=0.02)
        first = leader.request("status")
        t0 = time.monotonic()
        wait_until_or_none(lambda: time.monotonic() - t0 >= seconds, seconds + 1.0, interval=0.05)
        last = leader.request("status")
        t1 = time.monotonic()
        leader.request("stop_writes")
        assert first is not None and last is not None
        ok = last["writer"]["ok"] - first["writer"]["ok"]
        out: dict[str, Any] = {"durable": durable, "commits_per_s": ok / (t1 - t0), "failed": last["writer"]["failed"]}
        flushes = []
        for status in cluster.statuses().values():
            if status.get("flush_count"):
                flushes.append((status["flush_count"], status["flush_seconds"]))
        if flushes:
            out["flushes_per_node"] = [c for c, _ in flushes]
            out["ms_per_flush"] = [round(1000 * s / c, 3) for c, s in flushes]
        return out


def msync_cost(path: str, entries: int = 2000, size: int = 100) -> dict[str, float]:
    """Per-call cost of one DurableFileJournal sync after one added entry, and of adding alone."""
    from cluster._pysyncobj_compat import DurableFileJournal

    journal = DurableFileJournal(path)
    payload = b"x" * size
    add_only, add_sync = [], []
    for idx in range(1, entries + 1):
        t = time.perf_counter()
        journal.add(payload, idx, 1)
        add_only.append(time.perf_counter() - t)
    for idx in range(entries + 1, 2 * entries + 1):
        t = time.perf_counter()
        journal.add(payload, idx, 1)
        journal.sync()
        add_sync.append(time.perf_counter() - t)
    journal._destroy()
    return {
        "add_ms_p50": 1000 * statistics.median(add_only),
        "add_and_msync_ms_p50": 1000 * statistics.median(add_sync),
        "add_and_msync_ms_p99": 1000 * sorted(add_sync)[int(0.99 * len(add_sync))],
    }


def _main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster._raft_proc")
    sub = parser.add_subparsers(dest="mode", required=True)
    for child in ("node", "journal"):
        sub.add_parser(child).add_argument("config")
    live = sub.add_parser("livelock", help="leader-pause catch-up trials")
    live.add_argument("--runs", type=int, default=3)
    live.add_argument("--no-patch", action="store_true")
    live.add_argument("--pause", type=float, default=8.0)
    live.add_argument("--timeout", type=float, default=20.0)
    live.add_argument("--conf", default="{}", help="JSON overrides of FAST_CONF")
    bench = sub.add_parser("bench", help="throughput with and without the durable journal")
    bench.add_argument("--seconds", type=float, default=4.0)
    bench.add_argument("--runs", type=int, default=2)
    bench.add_argument("--conf", default="{}", help="JSON overrides of FAST_CONF")
    sub.add_parser("msync", help="cost of one msync")
    args = parser.parse_args(argv)

    if args.mode == "node":
        _node_main(json.loads(args.config))
    elif args.mode == "journal":
        _journal_main(json.loads(args.config))
    elif args.mode == "livelock":
        conf = dict(FAST_CONF, **json.loads(args.conf))
        for _run in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                print(json.dumps(livelock_trial(tmp, patch=not args.no_patch, pause=args.pause,
                                                catchup_timeout=args.timeout, conf=conf)), flush=True)
    elif args.mode == "bench":
        for _run in range(args.runs):
            for durable in (False, True):
                with tempfile.TemporaryDirectory() as tmp:
                    conf = dict(FAST_CONF, **json.loads(args.conf))
                    print(json.dumps(throughput_trial(tmp, durable=durable, seconds=args.seconds, conf=conf)), flush=True)
    elif args.mode == "msync":
        with tempfile.TemporaryDirectory(dir=REPO_ROOT) as tmp:
            print(json.dumps(msync_cost(os.path.join(tmp, "journal"))))


if __name__ == "__main__":
    _main(sys.argv[1:])
