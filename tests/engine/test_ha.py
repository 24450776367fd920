"""Active/standby HA between SEs on one host: the claim rules, then real processes and sockets.

The process tests run two SE processes (``tests/engine/_ha_proc.py``) that share a VIP through the
HA channel; each proxies to its own backend, which answers ``se=<name>``, so a response tells which
SE accepted the connection.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pytest

from engine import ha
from engine.config import PlacementConfig, SliceConfig, SliceError
from engine.ha import Claim
from tests.helpers import free_port, wait_for, wait_until

LEGACY = "HA_MODE_LEGACY_ACTIVE_STANDBY"
ROOT = Path(__file__).resolve().parents[2]


def placement(ses: tuple[str, ...] = ("a", "b"), epoch: int = 5, mode: str = LEGACY) -> PlacementConfig:
    return PlacementConfig(ha_mode=mode, epoch=epoch, ses=ses)


# -- the slice field ---------------------------------------------------------------------------


def _slice(placement_doc: Any) -> dict[str, Any]:
    vs = {"uuid": "vs-1", "name": "web", "vip": "127.10.0.1", "ports": [80], "application": "http", "pool": None}
    if placement_doc is not None:
        vs["placement"] = placement_doc
    return {"revision": 1, "se_name": "a", "virtual_services": [vs]}


def test_placement_is_parsed() -> None:
    """A slice's placement becomes a PlacementConfig with the SE names in order."""
    doc = _slice({"ha_mode": LEGACY, "epoch": 7, "ses": ["a", "b"]})
    assert placement(("a", "b"), 7) == SliceConfig.from_dict(doc).virtual_services[0].placement


def test_placement_is_optional() -> None:
    """A slice without placement (older controllers) parses with placement None."""
    assert None is SliceConfig.from_dict(_slice(None)).virtual_services[0].placement


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"ha_mode": "HA_MODE_X", "epoch": 1, "ses": []}, "virtual_services[0].placement.ha_mode"),
        ({"ha_mode": LEGACY, "epoch": "1", "ses": []}, "virtual_services[0].placement.epoch"),
        ({"ha_mode": LEGACY, "epoch": -1, "ses": []}, "virtual_services[0].placement.epoch"),
        ({"ha_mode": LEGACY, "epoch": 1, "ses": "a"}, "virtual_services[0].placement.ses"),
        ({"ha_mode": LEGACY, "epoch": 1, "ses": ["a", 3]}, "virtual_services[0].placement.ses[1]"),
        ({"ha_mode": LEGACY, "epoch": 1, "ses": ["a", "a"]}, "virtual_services[0].placement.ses[1]"),
        ([], "virtual_services[0].placement"),
    ],
)
def test_bad_placement_is_refused(doc: Any, field: str) -> None:
    """A malformed placement is a SliceError naming the field."""
    with pytest.raises(SliceError) as err:
        SliceConfig.from_dict(_slice(doc))
    assert field == err.value.field


# -- the pure rules ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "expected"),
    [
        (None, False),
        (placement(mode="HA_MODE_SHARED"), False),
        (placement(mode="HA_MODE_SHARED_PAIR"), True),
        (placement(ses=("a",)), False),
        (placement(ses=("b", "c")), False),
        (placement(), True),
        (placement(ses=("b", "a")), True),
    ],
)
def test_managed(p: Optional[PlacementConfig], expected: bool) -> None:
    """Only an active/standby or shared-pair VS with a peer is handed off; everything else binds as before."""
    assert expected is ha.managed(p, "a")


def test_slice_claim_names_the_primary() -> None:
    """With no local claim, the placement's first SE owns the VIP under the placement's epoch."""
    assert Claim(5, 0, "a") == ha.on_slice(None, placement())


def test_newer_slice_wins_over_takeover() -> None:
    """A placement with a higher epoch replaces a local takeover made under an older one."""
    assert Claim(9, 0, "a") == ha.on_slice(Claim(5, 1, "b"), placement(("a", "b"), 9))


def test_takeover_wins_over_its_own_slice() -> None:
    """A takeover made under epoch E survives the slice of epoch E being applied again."""
    assert Claim(5, 1, "b") == ha.on_slice(Claim(5, 1, "b"), placement(("a", "b"), 5))


def test_older_slice_does_not_win() -> None:
    """A slice older than what the SE already knows changes nothing."""
    assert Claim(9, 0, "b") == ha.on_slice(Claim(9, 0, "b"), placement(("a", "b"), 5))


def test_takeover_raises_generation() -> None:
    """A takeover keeps the epoch and outranks the claim it replaces."""
    taken = ha.takeover(Claim(5, 0, "a"), "b")
    assert (Claim(5, 1, "b"), True) == (taken, taken > Claim(5, 0, "a"))


def test_merge_keeps_the_greatest() -> None:
    """Merging claims is a max: epoch first, then generation."""
    assert [Claim(6, 0, "a"), Claim(5, 2, "a"), Claim(5, 1, "b")] == [
        ha.merge(Claim(5, 3, "b"), Claim(6, 0, "a")),
        ha.merge(Claim(5, 2, "a"), Claim(5, 1, "b")),
        ha.merge(None, Claim(5, 1, "b")),
    ]


def test_after_peer_lost_takes_only_the_peers_vss() -> None:
    """A lost peer's VSs that this SE also serves are taken over; others stay."""
    claims = {"v1": Claim(5, 0, "a"), "v2": Claim(5, 0, "b"), "v3": Claim(4, 0, "a")}
    members = {"v1": ("a", "b"), "v2": ("b", "a"), "v3": ("a", "c")}
    assert {"v1": Claim(5, 1, "b")} == ha.after_peer_lost(claims, members, "b", "a")


def test_role_of() -> None:
    """An SE is active exactly when the claim names it."""
    assert ("active", "standby") == (ha.role_of(Claim(1, 0, "a"), "a"), ha.role_of(Claim(1, 0, "a"), "b"))


def test_pick_target_prefers_the_least_loaded() -> None:
    """A shared pair gives a new connection to the SE with the fewest open connections."""
    assert "b" == ha.pick_target({"a": 3, "b": 1, "c": 2}, {"b": 50})


def test_pick_target_alternates_between_idle_ses() -> None:
    """With equal loads, the SE given the fewest connections so far goes next, then by name."""
    assert ("b", "a") == (ha.pick_target({"a": 0, "b": 0}, {"a": 4, "b": 3}), ha.pick_target({"a": 0, "b": 0}, {}))


def test_suspect_gap_is_below_the_peer_timeout() -> None:
    """An active doubts itself after a stall shorter than what lets its peer take over."""
    assert 0.35 == pytest.approx(ha.suspect_gap(0.5, 0.1, 0.05))


def test_clock_jumped_and_peer_silent() -> None:
    """Both compare a gap in monotonic seconds with a bound, strictly."""
    assert (False, True, False, True) == (
        ha.clock_jumped(10.0, 10.3, 0.35),
        ha.clock_jumped(10.0, 10.4, 0.35),
        ha.peer_silent(10.0, 10.5, 0.5),
        ha.peer_silent(10.0, 10.6, 0.5),
    )


@pytest.mark.parametrize("raw", [[1, 0], [1, 0, ""], ["1", 0, "a"], [1, -1, "a"], [True, 0, "a"], {"epoch": 1}])
def test_malformed_wire_claims_are_ignored(raw: Any) -> None:
    """A peer's malformed claim reads as None."""
    assert None is ha.claim_from_wire(raw)


# -- real processes ----------------------------------------------------------------------------


def _vip(n: int) -> str:
    return f"127.10.{os.getpid() % 200 + 20}.{n}"


def get(vip: str, port: int, timeout: float = 1.0) -> Optional[str]:
    """One HTTP request on a new connection; the body, or None when it failed."""
    try:
        with socket.create_connection((vip, port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    return data.split(b"\r\n\r\n", 1)[1].decode()


class SE:
    """One SE process of ``_ha_proc``; its slice and status are files in ``workdir``."""

    def __init__(self, name: str, workdir: Path, ha_dir: str) -> None:
        self.name = name
        self.scaleout_mode = "auto"
        self.workdir = workdir
        self.ha_dir = ha_dir
        self.backend_port = free_port("127.0.0.1")
        self.slice_file = workdir / f"{name}.slice.json"
        self.status_file = workdir / f"{name}.status.json"
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def write_slice(self, vip: str, port: int, ses: list[str], epoch: int, revision: int, mode: str = LEGACY) -> None:
        doc = {
            "revision": revision,
            "se_name": self.name,
            "virtual_services": [
                {
                    "uuid": "vs-web",
                    "name": "web",
                    "vip": vip,
                    "ports": [port],
                    "application": "http",
                    "pool": {
                        "uuid": "pool-web", "name": "web-pool", "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
                        "servers": [{"ip": "127.0.0.1", "port": self.backend_port}], "graceful_disable_timeout": 5,
                    },
                    "placement": {"ha_mode": mode, "epoch": epoch, "ses": ses},
                }
            ],
        }
        tmp = self.slice_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.slice_file)

    def start(self) -> None:
        self.status_file.unlink(missing_ok=True)
        out = open(self.workdir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.engine._ha_proc", self.name, str(self.slice_file), self.ha_dir, str(self.status_file), str(self.backend_port),
             self.scaleout_mode],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
        )
        out.close()

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()))
        except (OSError, ValueError):
            return {}

    def vs(self) -> dict[str, Any]:
        return dict(self.status().get("ha", {}).get("vs-web", {}))

    def wait_role(self, role: str, timeout: float = 5.0, **extra: Any) -> dict[str, Any]:
        def ok() -> Optional[dict[str, Any]]:
            vs = self.vs()
            want = {"role": role, "accepting": role == "active", **extra}
            return vs if all(vs.get(k) == v for k, v in want.items()) else None

        return dict(wait_until(ok, timeout, interval=0.01, what=f"{self.name} to be {role} {extra}: last {self.vs()}"))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.workdir / f"{self.name}.log").read_text()[-4000:]
        except OSError:
            return ""


class Prober(threading.Thread):
    """Opens a new connection to the VIP every ``interval`` and records ``(start, end, body or None)``."""

    def __init__(self, vip: str, port: int, *, interval: float = 0.02, max_requests: int = 1000, timeout: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.vip, self.port = vip, port
        self.interval = interval
        self.max_requests = max_requests
        self.timeout = timeout
        self.results: list[tuple[float, float, Optional[str]]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set() and len(self.results) < self.max_requests:
            start = time.monotonic()
            body = get(self.vip, self.port, self.timeout)
            self.results.append((start, time.monotonic(), body))
            self._done.wait(max(0.0, start + self.interval - time.monotonic()))

    def finish(self) -> list[tuple[float, float, Optional[str]]]:
        self._done.set()
        self.join(10)
        return list(self.results)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[SE, SE, str]]:
    # Unix socket paths are short (sun_path): the HA directory lives directly under /tmp.
    ha_dir = tempfile.mkdtemp(prefix="avha", dir="/tmp")
    ses = (SE("se-a", tmp_path, ha_dir), SE("se-b", tmp_path, ha_dir))
    try:
        yield ses[0], ses[1], ha_dir
    finally:
        for se in ses:
            se.stop()
        for se in ses:
            print(f"--- {se.name} log tail ---\n{se.log()}")
        for entry in os.listdir(ha_dir):
            os.unlink(os.path.join(ha_dir, entry))
        os.rmdir(ha_dir)


def _start_pair(a: SE, b: SE, vip: str, port: int, epoch: int = 10) -> None:
    for se in (a, b):
        se.write_slice(vip, port, [a.name, b.name], epoch, revision=epoch)
    a.start()
    a.wait_role("active")
    b.start()
    b.wait_role("standby", holding=True)


@pytest.mark.slow
def test_only_the_active_accepts(pair: tuple[SE, SE, str]) -> None:
    """While both run, every new connection to the VIP is served by the active SE."""
    a, b, _ = pair
    vip = _vip(1)
    port = free_port(vip)
    _start_pair(a, b, vip, port)
    bodies = [get(vip, port) for _ in range(30)]
    assert ["se=se-a"] * 30 == bodies
    assert ([f"{vip}:{port}"], []) == (a.status()["listening"], b.status()["listening"])


def _kill_gap(results: list[tuple[float, float, Optional[str]]], killed_at: float) -> tuple[float, int]:
    """The gap between the last success before the kill and the first after; failures after that."""
    before = [end for _, end, body in results if body is not None and end <= killed_at]
    after = [(end, i) for i, (_, end, body) in enumerate(results) if body is not None and end > killed_at]
    assert before and after, f"no success before or after the kill: {results}"
    first_end, first_index = after[0]
    failures = sum(1 for _, _, body in results[first_index:] if body is None)
    return first_end - before[-1], failures


@pytest.mark.slow
def test_kill_of_the_active_moves_the_vip(pair: tuple[SE, SE, str]) -> None:
    """kill -9 of the active: the standby serves the VIP within 1 s and no request fails after that; three times, alternating."""
    a, b, _ = pair
    vip = _vip(2)
    port = free_port(vip)
    _start_pair(a, b, vip, port)
    active, standby = a, b
    gaps = []
    for round_ in range(3):
        prober = Prober(vip, port, max_requests=200)
        prober.start()
        wait_until(lambda prober=prober: sum(1 for r in prober.results if r[2] is not None) >= 10, 5, interval=0.01, what="requests before the kill")
        killed_at, killed_wall = time.monotonic(), time.time()
        active.signal(signal.SIGKILL)
        wait_until(lambda prober=prober, killed_at=killed_at: any(r[2] is not None and r[0] > killed_at + 0.3 for r in prober.results), 5,
                   interval=0.01, what="requests after the kill")
        time.sleep(0.2)  # a few more requests after the first success after the kill
        results = prober.finish()
        gap, failures = _kill_gap(results, killed_at)
        gaps.append(gap)
        took = standby.wait_role("active", took_over_from=active.name)
        failed = sum(1 for r in results if r[2] is None)
        print(f"round {round_}: gap {gap * 1000:.0f} ms, takeover {(took['at'] - killed_wall) * 1000:.1f} ms after the kill, "
              f"failed {failed} (after recovery {failures}) of {len(results)} requests")
        assert failures == 0
        assert gap <= 1.0
        assert all(body == f"se={standby.name}" for s, _, body in results if s > killed_at + 0.3)
        # The killed SE comes back with its old slice (it is primary there) and must become the standby.
        assert active.proc is not None
        active.proc.wait(5)
        active.start()
        active.wait_role("standby", holding=True)
        assert [f"se={standby.name}"] * 5 == [get(vip, port) for _ in range(5)]
        active, standby = standby, active
    print(f"kill -9 gaps (ms): {[round(g * 1000) for g in gaps]}, median {statistics.median(gaps) * 1000:.0f}, worst {max(gaps) * 1000:.0f}")


@pytest.mark.slow
def test_frozen_active_is_fenced(pair: tuple[SE, SE, str]) -> None:
    """SIGSTOP of the active: the standby takes over; after SIGCONT the old active does not serve and turns standby."""
    a, b, _ = pair
    vip = _vip(3)
    port = free_port(vip)
    _start_pair(a, b, vip, port)
    prober = Prober(vip, port, max_requests=400, timeout=0.8)
    prober.start()
    wait_until(lambda: len(prober.results) >= 5, 5, interval=0.01, what="requests before the pause")
    stopped_at, stopped_wall = time.monotonic(), time.time()
    a.signal(signal.SIGSTOP)
    took = b.wait_role("active", took_over_from="se-a")
    time.sleep(max(0.0, stopped_at + 2.0 - time.monotonic()))
    during = [r for r in prober.results if r[0] > stopped_at + 1.0]
    continued_at = time.monotonic()
    a.signal(signal.SIGCONT)
    a.wait_role("standby")
    wait_until(lambda: len([r for r in prober.results if r[0] > continued_at]) >= 20, 5, interval=0.01, what="requests after the pause")
    results = prober.finish()
    after = [body for start, _, body in results if start > continued_at]
    ends = [end for _, end, body in results if body is not None]
    worst = max(later - earlier for earlier, later in zip(ends, ends[1:], strict=False))
    print(f"SIGSTOP: takeover {(took['at'] - stopped_wall) * 1000:.0f} ms after the stop ({took['reason']}), longest gap between successes "
          f"{worst * 1000:.0f} ms; during the pause {len(during)} requests, {sum(1 for r in during if r[2] is None)} failed; after SIGCONT {len(after)}")
    assert during and all(body == "se=se-b" for _, _, body in during)
    assert all(body == "se=se-b" for body in after)
    assert [] == a.status()["listening"]
    assert ["se=se-b"] * 10 == [get(vip, port) for _ in range(10)]
    # The controller then records the takeover as a placement [se-b, se-a] with a higher epoch: nothing moves.
    for se in (a, b):
        se.write_slice(vip, port, [b.name, a.name], 11, revision=11)
    b.wait_role("active", epoch=11)
    a.wait_role("standby", epoch=11, holding=True)
    assert ["se=se-b"] * 5 == [get(vip, port) for _ in range(5)]


@pytest.mark.slow
@pytest.mark.parametrize("told", ["both", "new-active", "old-active"])
def test_switchover_keeps_established_connections(pair: tuple[SE, SE, str], told: str) -> None:
    """A new placement naming the standby first (sent to both SEs, or to one only): new connections go to it, a keep-alive connection on the old active keeps working."""
    a, b, _ = pair
    vip = _vip({"both": 4, "new-active": 8, "old-active": 9}[told])
    port = free_port(vip)
    _start_pair(a, b, vip, port)
    kept = socket.create_connection((vip, port), timeout=2)
    try:
        def ask() -> str:
            kept.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            data = b""
            while not (b"\r\n\r\n" in data and data.endswith(b"se=se-a") or data.endswith(b"se=se-b")):
                chunk = kept.recv(4096)
                assert chunk, f"keep-alive connection closed after {data!r}"
                data += chunk
            return data.split(b"\r\n\r\n", 1)[1].decode()

        assert "se=se-a" == ask()
        for se in {"both": (b, a), "new-active": (b,), "old-active": (a,)}[told]:
            se.write_slice(vip, port, [b.name, a.name], 20, revision=20)
        b.wait_role("active", epoch=20)
        a.wait_role("standby", epoch=20, holding=True)
        assert ["se=se-b"] * 10 == [get(vip, port) for _ in range(10)]
        assert ["se=se-a"] * 3 == [ask() for _ in range(3)]
    finally:
        kept.close()


@pytest.mark.slow
def test_shared_pair_passes_connections_to_the_secondary(pair: tuple[SE, SE, str]) -> None:
    """A shared pair: the primary accepts and passes about half the new connections to its secondary; when the secondary dies it keeps them all."""
    a, b, _ = pair
    vip = _vip(10)
    port = free_port(vip)
    for se in (a, b):
        se.write_slice(vip, port, [a.name, b.name], 10, revision=10, mode="HA_MODE_SHARED_PAIR")
    a.start()
    a.wait_role("active", distribution="fd_passing")
    b.start()
    b.wait_role("secondary", holding=True)
    wait_until(lambda: get(vip, port) == "se=se-b", 5, interval=0.01, what="se-a to pass a connection to se-b")
    bodies = [get(vip, port) for _ in range(40)]
    print(f"shared pair: {bodies.count('se=se-a')} served by se-a, {bodies.count('se=se-b')} by se-b")
    assert 40 == bodies.count("se=se-a") + bodies.count("se=se-b")
    assert bodies.count("se=se-b") >= 10 and bodies.count("se=se-a") >= 10
    status = a.vs()
    assert ("fd_passing", {}) == (status["distribution"], status["relayed"])
    b.signal(signal.SIGKILL)
    assert b.proc is not None
    b.proc.wait(5)
    wait_until(lambda: get(vip, port) == "se=se-a", 5, interval=0.01, what="se-a to serve alone")
    assert ["se=se-a"] * 20 == [get(vip, port) for _ in range(20)]


@pytest.mark.slow
def test_a_huge_request_head_at_the_active_causes_no_failover(pair: tuple[SE, SE, str]) -> None:
    """Four clients streaming endless request heads at the active SE's VIP at 64 MB/s each (a
    connection after another, each up to 200 MB, for 10 s or 1 GB in all) are each refused 431, and
    meanwhile the active keeps its heartbeats: the standby never takes over and every probe is
    served by the active."""
    from tests.engine.test_l7_hostile import stream_huge_head

    a, b, _ = pair
    vip = _vip(11)
    port = free_port(vip)
    _start_pair(a, b, vip, port)
    prober = Prober(vip, port, max_requests=1000, interval=0.01)
    prober.start()
    until = time.monotonic() + 10.0
    budget = [1 << 30]
    attacks: list[dict[str, Any]] = []
    lock = threading.Lock()

    def attack() -> None:
        while time.monotonic() < until:
            with lock:
                if budget[0] <= 0:
                    return
                allowed = min(budget[0], 200 << 20)
            got = stream_huge_head(port, until, allowed, host=vip)
            with lock:
                budget[0] -= got["sent"]
                attacks.append(got)

    attackers = [threading.Thread(target=attack, daemon=True) for _ in range(4)]
    for thread in attackers:
        thread.start()
    for thread in attackers:
        thread.join(25)
    time.sleep(0.3)
    results = prober.finish()
    print(f"{len(attacks)} attacking connections, {sum(x['sent'] for x in attacks) >> 20} MB sent; {len(results)} probes, "
          f"slowest {max(end - start for start, end, _ in results) * 1000:.0f} ms")
    assert [] == [x for x in attacks if x["status"] != 431]
    assert {} == b.status().get("takeovers", {})
    assert ("active", "standby") == (a.vs().get("role"), b.vs().get("role"))
    assert len(results) > 100 and all(body == "se=se-a" for _, _, body in results), [r for r in results if r[2] != "se=se-a"][:5]


# -- two SEs in one process: the fencing paths, deterministically ---------------------------------


def _slice_doc(se: str, vip: str, port: int, backend_port: int, ses: list[str], epoch: int) -> dict[str, Any]:
    return {
        "revision": epoch,
        "se_name": se,
        "virtual_services": [
            {
                "uuid": "vs-web", "name": "web", "vip": vip, "ports": [port], "application": "http",
                "pool": {"uuid": "pool-web", "name": "web-pool", "lb_algorithm": "LB_ALGORITHM_ROUND_ROBIN",
                         "servers": [{"ip": "127.0.0.1", "port": backend_port}]},
                "placement": {"ha_mode": LEGACY, "epoch": epoch, "ses": ses},
            }
        ],
    }


class _InProcess:
    """Two DataPlanes with HA coordinators on one loop, each proxying to its own ``se=NAME`` backend."""

    def __init__(self, ha_dir: str, vip: str, port: int) -> None:
        self.ha_dir, self.vip, self.port = ha_dir, vip, port
        self.planes: dict[str, Any] = {}
        self.backends: list[Any] = []

    async def start(self, name: str, ses: list[str], epoch: int = 10) -> Any:
        import asyncio

        from engine.dataplane import DataPlane
        from engine.ha_coordinator import HaCoordinator
        from tests.engine.test_dataplane import StubChecker

        body = f"se={name}".encode()

        class Backend(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:  # type: ignore[override]
                self.transport = transport

            def data_received(self, data: bytes) -> None:
                if b"\r\n\r\n" in data:
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

        loop = asyncio.get_running_loop()
        backend = await loop.create_server(Backend, "127.0.0.1", 0)
        self.backends.append(backend)
        backend_port = backend.sockets[0].getsockname()[1]
        # A long peer timeout: nobody is declared lost unless the test says so.
        plane = DataPlane(health_factory=StubChecker, ha=partial(HaCoordinator, se_name=name, ha_dir=self.ha_dir, peer_timeout=5.0))
        assert {} == await plane.apply(SliceConfig.from_dict(_slice_doc(name, self.vip, self.port, backend_port, ses, epoch)))
        self.planes[name] = plane
        return plane

    async def get(self) -> Optional[str]:
        import asyncio

        try:
            reader, writer = await asyncio.open_connection(self.vip, self.port)
            writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(reader.read(), 3)
            writer.close()
        except (OSError, asyncio.TimeoutError):
            return None
        return data.split(b"\r\n\r\n", 1)[1].decode() if data.startswith(b"HTTP/1.1 200") else None

    async def close(self) -> None:
        for plane in self.planes.values():
            await plane.close()
        for backend in self.backends:
            backend.close()


def _run_in_process(n: int, scenario: Callable[[_InProcess], Any], loop_name: str = "uvloop", ha_dir: Optional[str] = None) -> None:
    import asyncio

    import uvloop

    made = ha_dir is None
    ha_dir = ha_dir or tempfile.mkdtemp(prefix="avha", dir="/tmp")
    vip = _vip(n)
    env = _InProcess(ha_dir, vip, free_port(vip))

    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(env), 15)
        finally:
            await env.close()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop if loop_name == "uvloop" else asyncio.new_event_loop) as runner:
            runner.run(main())
    finally:
        if made:
            for entry in os.listdir(ha_dir):
                os.unlink(os.path.join(ha_dir, entry))
            os.rmdir(ha_dir)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_connection_accepted_after_a_stall_waits_for_confirmation(loop_name: str) -> None:
    """An active whose clock jumped holds a new connection unread, asks its peer, and serves it itself when still the owner."""

    async def scenario(env: _InProcess) -> None:
        a = await env.start("se-a", ["se-a", "se-b"])
        await wait_for(lambda: a.ha.status()["vs-web"]["accepting"], 5.0, what="se-a accepting")
        b = await env.start("se-b", ["se-a", "se-b"])
        await wait_for(lambda: b.ha.status()["vs-web"]["holding"], 5.0, what="se-b holding the socket")
        a.ha._last_tick -= 10  # as if the process had been stopped for 10 s
        assert "se=se-a" == await env.get()
        assert (1, 0, "active") == (a.ha.refused, a.ha.handed_off, a.ha.status()["vs-web"]["role"])
        await wait_for(lambda: a.ha.status()["vs-web"]["accepting"], 5.0, what="se-a accepting again")

    _run_in_process(5, scenario, loop_name)


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_superseded_active_passes_the_connection_to_the_new_owner(loop_name: str) -> None:
    """An active that learns after a stall that its peer took over passes the held connection to it, unread, and turns standby."""

    async def scenario(env: _InProcess) -> None:
        a = await env.start("se-a", ["se-a", "se-b"])
        await wait_for(lambda: a.ha.status()["vs-web"]["accepting"], 5.0, what="se-a accepting")
        b = await env.start("se-b", ["se-a", "se-b"])
        await wait_for(lambda: b.ha.status()["vs-web"]["holding"], 5.0, what="se-b holding the socket")
        # se-b has taken over (it has not started accepting yet) while se-a was stopped.
        b.ha._set_claim("vs-web", ha.takeover(Claim(10, 0, "se-a"), "se-b"))
        a.ha._last_tick -= 10
        assert "se=se-b" == await env.get()
        assert (1, 1, 1) == (a.ha.refused, a.ha.handed_off, b.ha.taken)
        assert {"role": "standby", "accepting": False} == {k: a.ha.status()["vs-web"][k] for k in ("role", "accepting")}
        await wait_for(lambda: b.ha.status()["vs-web"]["accepting"], 5.0, what="se-b accepting")
        assert "se=se-b" == await env.get()

    _run_in_process(6, scenario, loop_name)


def test_slice_without_ha_binds_as_before() -> None:
    """A VS whose placement is not active/standby is bound at once, even with an HA directory."""

    async def scenario(env: _InProcess) -> None:
        a = await env.start("se-a", ["se-a"])
        assert {(env.vip, env.port): "web"} == a.listening()
        assert {} == a.ha.status()

    _run_in_process(7, scenario)


def test_long_ha_socket_path_is_refused() -> None:
    """An HA directory too deep for a Unix socket path is a clear error, not a silent truncation."""
    from engine.dataplane import DataPlane
    from engine.ha_coordinator import HaCoordinator

    with pytest.raises(ValueError, match="too long"):
        DataPlane(ha=partial(HaCoordinator, se_name="se-a", ha_dir="/tmp/" + "d" * 120))


def test_agent_reports_ha_roles(tmp_path: Path) -> None:
    """With an HA directory, the agent's ACK and status carry the ``ha`` roles."""
    from engine.agent import ServiceEngineAgent

    agent = ServiceEngineAgent("se-a", ["http://127.0.0.1:1"], "t", tmp_path, ha_dir="/tmp/avha-unused")
    assert ({}, {}) == (agent.ack()["ha"], agent.status()["ha"])
    assert "ha" not in ServiceEngineAgent("se-a", ["http://127.0.0.1:1"], "t", tmp_path).ack()


def test_unusable_ha_dir_still_serves(tmp_path: Path) -> None:
    """An HA directory that cannot be created does not stop the SE from serving its VSs."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def scenario(env: _InProcess) -> None:
        a = await env.start("se-a", ["se-a", "se-b"])
        await wait_for(lambda: a.ha.status()["vs-web"]["accepting"], 5.0, what="se-a accepting without its Unix socket")
        assert "se=se-a" == await env.get()

    _run_in_process(11, scenario, ha_dir=str(blocker / "run"))
