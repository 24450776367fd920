"""Service Engines as real processes: slices from the cluster, traffic through VIPs, health, NACKs, headless."""

from __future__ import annotations

import collections
import json
import os
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from simulations.local_cluster import LocalCluster, die_with_parent, free_port, wait_until

pytestmark = pytest.mark.slow


class Fleet:
    """A 3-node cluster, two HTTP backends and SE processes, all on 127.0.0.1."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.cluster = LocalCluster(base / "cluster", nodes=3)
        self.backends: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
        self.ses: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: dict[str, int] = {}

    def start_backend(self, name: str, port: int | None = None) -> int:
        port = port or free_port()
        proc = subprocess.Popen([sys.executable, "-m", "simulations.backend", "--port", str(port), "--name", name],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        self.backends[name] = (port, proc)
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{port}/healthz"), 10, what=f"backend {name}")
        return port

    def stop_backend(self, name: str) -> None:
        _port, proc = self.backends[name]
        proc.terminate()
        proc.wait(10)

    def start_se(self, name: str) -> None:
        urls = ",".join(self.cluster.api(n) for n in self.cluster.ids)
        log = open(self.base / f"{name}.log", "ab")
        metrics_port = self.metrics_ports.setdefault(name, free_port())
        self.ses[name] = subprocess.Popen(
            [sys.executable, "-m", "avictl", "--api", urls, "--token", self.cluster.token, "se", "run", "--name", name,
             "--state-dir", str(self.base / name), "--report-interval", "0.5", "--metrics", f"127.0.0.1:{metrics_port}"],
            stdout=log, stderr=log, env={**os.environ, "AVICTL_HOME": str(self.base / "home")}, preexec_fn=die_with_parent,
        )
        log.close()

    def stop_se(self, name: str) -> None:
        proc = self.ses[name]
        proc.kill()
        proc.wait(10)

    def se(self, name: str, node: str = "n1") -> dict[str, Any]:
        code, body = self.cluster.request(node, "GET", f"/api/serviceengine?name={name}&stale=true")
        assert code == 200
        return body["results"][0] if body["results"] else {}

    def close(self) -> None:
        for proc in self.ses.values():
            if proc.poll() is None:
                proc.kill()
        for _port, proc in self.backends.values():
            if proc.poll() is None:
                proc.kill()
        self.cluster.close()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def answered_by(url: str, n: int) -> collections.Counter[str]:
    return collections.Counter(get(url)["server"] for _ in range(n))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("fleet"))
    try:
        f.cluster.start_all()
        f.start_backend("a")
        f.start_backend("b")
        f.start_se("se-1")
        wait_until(lambda: f.se("se-1"), 20, what="se-1 to register")
        yield f
    finally:
        f.close()


def make_vs(fleet: Fleet, name: str, vip: str, port: int, *, algorithm: str = "LB_ALGORITHM_ROUND_ROBIN", monitor: bool = False) -> dict[str, Any]:
    c = fleet.cluster
    pa, pb = fleet.backends["a"][0], fleet.backends["b"][0]
    pool: dict[str, Any] = {"name": f"{name}-pool", "lb_algorithm": algorithm,
                            "servers": [{"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": pa, "ratio": 1},
                                        {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": pb, "ratio": 2}]}
    if monitor:
        code, hm = c.request("n1", "POST", "/api/healthmonitor", {
            "name": f"{name}-hm", "type": "HEALTH_MONITOR_HTTP", "send_interval": 2, "receive_timeout": 1,
            "successful_checks": 1, "failed_checks": 2, "http_monitor": {"http_request": "GET /healthz HTTP/1.0"}})
        assert code == 201, hm
        pool["health_monitor_refs"] = [hm["url"]]
    code, pool_obj = c.request("n1", "POST", "/api/pool", pool)
    assert code == 201, pool_obj
    code, vip_obj = c.request("n2", "POST", "/api/vsvip", {"name": f"{name}-vip", "vip": [{"ip_address": {"addr": vip, "type": "V4"}}]})
    assert code == 201, vip_obj
    code, vs = c.request("n3", "POST", "/api/virtualservice", {"name": name, "services": [{"port": port}], "pool_ref": pool_obj["url"], "vsvip_ref": vip_obj["url"]})
    assert code == 201, vs
    code, placed = c.request("n1", "POST", f"/api/virtualservice/{vs['uuid']}/placement", {"serviceengine_refs": ["se-1"]})
    assert code == 200, placed
    return {"pool": pool_obj, "vs": vs, "revision": int(placed["_last_modified"])}


def test_traffic_reaches_both_servers_in_ratio(fleet: Fleet) -> None:
    """A VS placed on se-1 answers on its VIP and spreads requests 1:2 by server ratio (round robin)."""
    port = free_port()
    made = make_vs(fleet, "ratio", "127.10.1.1", port)
    url = f"http://127.10.1.1:{port}/hello"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    counts = answered_by(url, 300)
    assert counts == collections.Counter({"a": 100, "b": 200})
    assert get(url)["x_forwarded_for"] == "127.0.0.1"
    # Every controller hears from the SE within a report interval (0.5 s here).
    se = wait_until(lambda: (s := fleet.se("se-1", "n2")).get("runtime", {}).get("applied_revision") is not None and s, 10,
                    what="n2 to hear from se-1")
    assert se["runtime"]["applied_revision"] >= made["revision"] - 5
    assert "ratio" in se["runtime"]["virtualservices"]


def test_telemetry_reaches_the_controllers_and_se_metrics(fleet: Fleet) -> None:
    """Per-VS counters and per-SE figures show on the SE object; the SE serves Prometheus /metrics."""
    port = free_port()
    make_vs(fleet, "counted", "127.10.1.7", port)
    url = f"http://127.10.1.7:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    answered_by(url, 20)

    def reported() -> dict[str, Any] | None:
        for node in fleet.cluster.ids:
            runtime = fleet.se("se-1", node).get("runtime") or {}
            stats = (runtime.get("telemetry") or {}).get("counted")
            if stats and stats["requests"] >= 20:
                return runtime
        return None

    runtime = wait_until(reported, 10, what="telemetry to reach a controller")
    assert runtime["telemetry"]["counted"]["responses"]["2xx"] >= 20
    assert runtime["resources"]["memory_mb"] > 0
    assert runtime["resources"]["open_connections"] >= 0
    with urllib.request.urlopen(f"http://127.0.0.1:{fleet.metrics_ports['se-1']}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    line = next(row for row in text.splitlines() if row.startswith('avictl_vs_requests_total{se="se-1",vs="counted"}'))
    assert float(line.split()[-1]) >= 20
    assert "avictl_se_memory_bytes" in text


def test_request_logs_and_metrics_through_the_cli(fleet: Fleet) -> None:
    """avictl logs VS shows the client requests the SE served; avictl metrics VS its counters."""
    port = free_port()
    make_vs(fleet, "logged", "127.10.1.8", port)
    url = f"http://127.10.1.8:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    for i in range(5):
        get(f"{url}logged-{i}")
    env = {**os.environ, "AVICTL_HOME": str(fleet.base / "home")}
    base = [sys.executable, "-m", "avictl", "--api", fleet.cluster.api("n1"), "--token", fleet.cluster.token]

    def logged() -> list[dict[str, Any]] | None:
        out = subprocess.run([*base, "logs", "logged", "-o", "json"], env=env, capture_output=True, text=True, timeout=30)
        logs = json.loads(out.stdout) if out.returncode == 0 else []
        return logs if sum(1 for r in logs if r["uri"].startswith("/logged-")) == 5 else None

    logs = wait_until(logged, 15, interval=0.3, what="the request logs to reach n1")
    assert {r["status"] for r in logs} == {200}
    assert all(r["se"] == "se-1" and r["client"] == "127.0.0.1" for r in logs)
    out = subprocess.run([*base, "metrics", "logged", "-o", "json"], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["se-1"]["requests"] >= 5


def test_health_monitor_takes_a_stopped_server_out_and_back(fleet: Fleet) -> None:
    """A stopped server gets no requests once its monitor marks it down; it returns after it restarts."""
    port = free_port()
    made = make_vs(fleet, "health", "127.10.1.2", port, monitor=True)
    url = f"http://127.10.1.2:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    b_port = fleet.backends["b"][0]
    fleet.stop_backend("b")
    wait_until(lambda: set(answered_by(url, 6)) == {"a"}, 10, interval=0.2, what="b to be taken out")
    key = f"127.0.0.1:{b_port}"
    wait_until(lambda: fleet.cluster.request("n3", "GET", f"/api/pool/{made['pool']['uuid']}")[1]["runtime"]["servers"].get(key) == {"se-1": "DOWN"},
               10, what="the pool to show b down")
    fleet.start_backend("b", b_port)
    wait_until(lambda: "b" in answered_by(url, 6), 10, interval=0.2, what="b to come back")


def test_a_port_in_use_is_nacked_and_the_other_vs_keeps_serving(fleet: Fleet) -> None:
    """A VS whose port is taken shows as an error on the SE; the SE's other VSs keep serving."""
    taken = socket.socket()
    taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    taken.bind(("127.10.1.3", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        make_vs(fleet, "clash", "127.10.1.3", port)
        wait_until(lambda: "clash" in (fleet.se("se-1").get("runtime", {}).get("vs_errors") or {}), 15, what="the NACK")
        se = wait_until(lambda: (s := fleet.se("se-1", "n3")).get("runtime", {}).get("nack") and s, 10, what="n3 to hear the NACK")
        assert "clash" in se["runtime"]["nack"]["error"]
        other_port = free_port()
        make_vs(fleet, "fine", "127.10.1.4", other_port)
        wait_until(lambda: _http_ok(f"http://127.10.1.4:{other_port}/"), 15, what="the other VS to serve")
    finally:
        taken.close()


def _status_for_header(vip: str, port: int, size: int) -> int:
    """The status of a request with one header field of ``size`` bytes, on a new connection."""
    with socket.create_connection((vip, port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"v" * (size - 5) + b"\r\n\r\n")
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
    return int(head.split(b" ")[1]) if head.startswith(b"HTTP/1.1 ") else 0


def test_an_application_profiles_limits_reach_the_se(fleet: Fleet) -> None:
    """A VS on an HTTP profile with client_max_header_size 1 KB refuses a 2 KB header field with
    431 (and serves a 1 KB one); raising the limit through the API lets the next connection through."""
    c = fleet.cluster
    code, profile = c.request("n1", "POST", "/api/applicationprofile", {
        "name": "tight", "type": "APPLICATION_PROFILE_TYPE_HTTP", "http_profile": {"client_max_header_size": 1}})
    assert code == 201, profile
    assert {"client_max_header_size": 1, "client_max_request_size": 48, "max_header_count": 256, "client_header_timeout": 10000} == profile["http_profile"]
    port = free_port()
    made = make_vs(fleet, "tight", "127.10.1.10", port)
    code, vs = c.request("n2", "PATCH", f"/api/virtualservice/{made['vs']['uuid']}", {"replace": {"application_profile_ref": profile["url"]}})
    assert code == 200, vs
    wait_until(lambda: _status_for_header("127.10.1.10", port, 2048) == 431, 15, what="the 1 KB limit on the SE")
    assert 200 == _status_for_header("127.10.1.10", port, 1024)
    code, profile = c.request("n3", "PATCH", f"/api/applicationprofile/{profile['uuid']}", {"replace": {"http_profile": {"client_max_header_size": 4}}})
    assert code == 200, profile
    wait_until(lambda: _status_for_header("127.10.1.10", port, 2048) == 200, 15, what="the 4 KB limit on the SE")


def test_se_reconnects_to_another_controller_and_misses_no_change(fleet: Fleet) -> None:
    """Kill the controller the SE streams from; a change made meanwhile still reaches the SE."""
    port = free_port()
    made = make_vs(fleet, "moving", "127.10.1.5", port)
    url = f"http://127.10.1.5:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    connected = wait_until(lambda: fleet.se("se-1").get("runtime", {}).get("telemetry") is not None and _connected_node(fleet), 10, what="a connection")
    fleet.cluster.kill(connected)
    others = [n for n in fleet.cluster.ids if n != connected]
    code, _ = fleet.cluster.request(others[0], "PATCH", f"/api/pool/{made['pool']['uuid']}",
                                    {"replace": {"servers": [{"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": fleet.backends["a"][0]}]}}, timeout=15)
    assert code == 200
    wait_until(lambda: set(answered_by(url, 6)) == {"a"}, 15, interval=0.2, what="the change to reach the SE")
    fleet.cluster.start(connected)
    fleet.cluster.wait_converged(30)


def _connected_node(fleet: Fleet) -> str | None:
    log = (fleet.base / "se-1.log").read_text()
    for line in reversed(log.splitlines()):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "se_subscribed":
            for node in fleet.cluster.ids:
                if fleet.cluster.api(node) == event.get("controller"):
                    return node
    return None


def test_se_restarted_with_controllers_down_serves_its_last_config(fleet: Fleet) -> None:
    """Restart the SE while every controller is down: it serves its last good slice, then reconnects."""
    port = free_port()
    make_vs(fleet, "headless", "127.10.1.6", port)
    url = f"http://127.10.1.6:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    fleet.stop_se("se-1")
    for node in fleet.cluster.ids:
        fleet.cluster.kill(node)
    fleet.start_se("se-1")
    wait_until(lambda: _http_ok(url), 15, what="the restarted SE to serve headless")
    for node in fleet.cluster.ids:
        fleet.cluster.start(node)
    fleet.cluster.wait_leader(30)
    wait_until(lambda: (fleet.se("se-1").get("runtime") or {}).get("lag") == 0, 20, what="the SE to report in again")
    assert _http_ok(url)


def test_pool_changes_under_load_fail_no_request(fleet: Fleet) -> None:
    """1 000 requests through the VIP while servers are added and removed and the algorithm changes: none fails."""
    import threading

    port = free_port()
    made = make_vs(fleet, "churn", "127.10.1.9", port)
    url = f"http://127.10.1.9:{port}/"
    wait_until(lambda: _http_ok(url), 15, what="the VIP to answer")
    pa, pb = fleet.backends["a"][0], fleet.backends["b"][0]
    a = {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": pa}
    b = {"ip": {"addr": "127.0.0.1", "type": "V4"}, "port": pb}
    changes = [
        {"replace": {"servers": [a]}},
        {"replace": {"servers": [a, b], "lb_algorithm": "LB_ALGORITHM_LEAST_CONNECTIONS"}},
        {"replace": {"servers": [b]}},
        {"replace": {"servers": [a, b], "lb_algorithm": "LB_ALGORITHM_CONSISTENT_HASH"}},
        {"replace": {"servers": [a, b], "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN"}},
    ]
    failures: list[str] = []
    served = collections.Counter()
    done = threading.Event()

    def client() -> None:
        for i in range(1000):
            try:
                served[get(f"{url}churn-{i}")["server"]] += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                failures.append(f"request {i}: {exc!r}")
        done.set()

    thread = threading.Thread(target=client)
    thread.start()
    for change in changes:
        if done.is_set():
            break
        code, body = fleet.cluster.request("n1", "PATCH", f"/api/pool/{made['pool']['uuid']}", change)
        assert code == 200, body
        wait_until(lambda: done.is_set() or sum(served.values()) > 0, 5, what="traffic")
    thread.join(120)
    assert not failures, failures[:5]
    assert sum(served.values()) == 1000
