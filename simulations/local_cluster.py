"""A cluster of real controller processes on 127.0.0.1, for tests, benchmarks and chaos runs.

Every wait here is a poll against a deadline; every process is killed in ``close``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import weakref
from pathlib import Path
from typing import Any, Optional

from avictl.launcher import Credentials, NodeLayout, loopback_addresses, node_configs
from avictl.nodes import free_ports
from cluster.config import NodeConfig

__all__ = ["INTERNAL_ERRORS", "LocalCluster", "die_with_parent", "free_port", "wait_until"]

# Log events that are bugs wherever they appear: a reconcile round that raised, a request that
# reached the API's last line of defence. Tests fail when a controller logs one.
INTERNAL_ERRORS = ("reconcile_round_failed", "api_unhandled")


def die_with_parent() -> None:
    """In a child before exec: get SIGKILL when the harness dies, so no controller outlives a killed test run.

    Only for children started from the main thread: the kernel sends the signal when the thread
    that forked the child exits, not only when the whole process does.
    """
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the kernel reports free on ``host`` (bound and released at once)."""
    return free_ports(1, host)[0]


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true (returned); TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    #: every cluster made in this process, so a test harness can check their logs
    instances: "weakref.WeakSet[LocalCluster]" = weakref.WeakSet()

    def __init__(
        self,
        base_dir: str | Path,
        nodes: int = 3,
        *,
        durable_journal: bool = True,
        env: Optional[dict[str, str]] = None,
        local_cloud: bool = False,
    ) -> None:
        """``local_cloud``: the leader starts the SEs the groups need, under ``<base_dir>/cloud/se/``."""
        self.env = dict(env or {})
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        credentials = Credentials.generate()
        self.password = credentials.password
        self.token = credentials.token
        self.cloud_home = (self.base_dir / "cloud").resolve()
        self.layout = NodeLayout(self.base_dir)
        self.configs: dict[str, NodeConfig] = node_configs(
            self.layout, loopback_addresses(nodes), credentials, durable_journal=durable_journal,
            local_cloud_home=str(self.cloud_home) if local_cloud else "",
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_checked: dict[Path, int] = {}
        LocalCluster.instances.add(self)

    def log_path(self, node_id: str) -> Path:
        return self.layout.log_path(node_id)

    def new_internal_errors(self) -> list[str]:
        """Log lines naming one of :data:`INTERNAL_ERRORS` written since the last call."""
        found: list[str] = []
        for node_id in self.ids:
            path = self.log_path(node_id)
            try:
                with open(path, "rb") as f:
                    f.seek(self._log_checked.get(path, 0))
                    data = f.read()
            except FileNotFoundError:
                continue
            complete = data[: data.rfind(b"\n") + 1]
            self._log_checked[path] = self._log_checked.get(path, 0) + len(complete)
            for line in complete.decode("utf-8", "replace").splitlines():
                if any(f'"{name}"' in line or f" {name} " in line for name in INTERNAL_ERRORS):
                    found.append(f"{node_id}: {line[:2000]}")
        return found

    @property
    def ids(self) -> list[str]:
        return list(self.configs)

    def api(self, node_id: str) -> str:
        return self.configs[node_id].api_url

    def config_path(self, node_id: str) -> Path:
        return self.layout.config_path(node_id)

    # The module each controller process runs (``python -m``); a harness may run a wrapper.
    controller_module = "cluster.main"
    #: controllers get SIGKILL when the harness dies (off for a harness whose nodes outlive it)
    tie_to_parent = True

    def node_env(self, node_id: str) -> dict[str, str]:
        """Extra environment of ``node_id``'s process, over the cluster's ``env``."""
        return {}

    def command_prefix(self, node_id: str) -> list[str]:
        """argv before ``python -m MODULE`` (e.g. entering a network namespace)."""
        return []

    def controller_argv(self, node_id: str, config_path: Path) -> list[str]:
        """How node ``node_id`` is started, after :meth:`command_prefix`."""
        return [sys.executable, "-m", self.controller_module, "--config", str(config_path)]

    def start(self, node_id: str) -> None:
        config = self.configs[node_id]
        path = self.config_path(node_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        config.save(path)
        logf = open(self.log_path(node_id), "ab")
        self.procs[node_id] = subprocess.Popen(
            [*self.command_prefix(node_id), *self.controller_argv(node_id, path)],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=logf,
            start_new_session=True,
            # PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so only a
            # child started from the main thread may be tied to it (the chaos nemesis restarts
            # nodes from worker threads).
            preexec_fn=die_with_parent if self.tie_to_parent and threading.current_thread() is threading.main_thread() else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env, **self.node_env(node_id)},
            cwd=str(Path(__file__).resolve().parent.parent),  # the project's code, whatever the caller's cwd
        )
        logf.close()

    def start_all(self, timeout: float = 30.0) -> "LocalCluster":
        for node_id in self.ids:
            self.start(node_id)
        self.wait_leader(timeout)
        return self

    def alive(self, node_id: str) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def kill(self, node_id: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.get(node_id)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM):
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def pause(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGSTOP)

    def resume(self, node_id: str) -> None:
        self.procs[node_id].send_signal(signal.SIGCONT)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGCONT)
                    proc.kill()
                    proc.wait(10)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        if self.cloud_home.exists():
            self.stop_cloud_ses()

    def cloud(self) -> Any:
        """A driver on this cluster's local cloud home (to see, pause or kill the SEs it started)."""
        from cluster.cloud.local import LocalCloud

        return LocalCloud(self.cloud_home, [c.api_url for c in self.configs.values()], "harness")

    def stop_cloud_ses(self) -> None:
        """Stop every SE the local cloud started (they outlive controllers on purpose)."""
        cloud = self.cloud()
        for name, pid in cloud.running().items():
            try:
                os.kill(pid, signal.SIGCONT)
            except OSError:
                pass
            cloud.stop(name, timeout=2.0)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- HTTP helpers (synchronous, for tests and harnesses) -----------------------------------

    def request(
        self,
        node_id: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        timeout: float = 5.0,
        headers: Optional[dict[str, str]] = None,
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api(node_id) + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                return resp.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                return exc.code, json.loads(raw)
            except ValueError:
                return exc.code, raw.decode(errors="replace")

    def status(self, node_id: str) -> Optional[dict[str, Any]]:
        try:
            code, body = self.request(node_id, "GET", "/internal/status", timeout=1.0,
                                      headers={"Authorization": f"Bearer {self._internal_token()}"})
        except (OSError, ValueError):
            return None
        return body if code == 200 else None

    def _internal_token(self) -> str:
        import hashlib

        secret = next(iter(self.configs.values())).cluster_secret
        return hashlib.sha256(b"avictl-internal\0" + secret.encode()).hexdigest()

    def leader(self) -> Optional[str]:
        best: tuple[int, Optional[str]] = (-1, None)
        for node_id in self.ids:
            if not self.alive(node_id):
                continue
            st = self.status(node_id)
            if st and st.get("role") == "leader" and st.get("term", 0) > best[0]:
                best = (st["term"], node_id)
        return best[1]

    def wait_leader(self, timeout: float = 30.0) -> str:
        return str(wait_until(self.leader, timeout, what="a leader"))

    def wait_converged(self, timeout: float = 30.0) -> int:
        """Wait until every live node has applied the same revision; returns it."""

        def same() -> Optional[tuple[int]]:
            revs = set()
            for node_id in self.ids:
                if not self.alive(node_id):
                    continue
                st = self.status(node_id)
                if st is None:
                    return None
                revs.add(st["applied_revision"])
            return (revs.pop(),) if len(revs) == 1 else None

        return int(wait_until(same, timeout, what="nodes to converge")[0])

    # -- what a node holds (for checkers) ------------------------------------------------------

    def raw_records(self, node_id: str) -> list[list[Any]]:
        """Every event-store record of ``node_id`` as [raft_index, first_revision, count, payload]."""
        import msgpack

        out: list[list[Any]] = []
        after = 0
        while True:
            req = urllib.request.Request(f"{self.api(node_id)}/internal/records?after_raft_index={after}&limit=5000")
            req.add_header("Authorization", f"Bearer {self._internal_token()}")
            with urllib.request.urlopen(req, timeout=30) as resp:
                batch = msgpack.unpackb(resp.read(), raw=False)
            if not batch:
                return out
            out.extend(batch)
            after = batch[-1][0]

    def object_names(self, node_id: str, kind: str = "pool", *, stale: bool = True) -> list[str]:
        names: list[str] = []
        page = 1
        while True:
            code, body = self.request(
                node_id, "GET", f"/api/{kind}?page_size=200&page={page}&fields=name{'&stale=true' if stale else ''}", timeout=30
            )
            if code != 200:
                raise RuntimeError(f"{node_id} answered {code}: {body}")
            names.extend(r["name"] for r in body["results"])
            if not body.get("next"):
                return names
            page += 1
