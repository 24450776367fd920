"""Local controller processes for ``avictl cluster up|down``: ports, start, liveness, stop.

A pid from the context counts as our controller only while the process's command line still
names that node's config file, so a recycled pid is never signalled.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

__all__ = ["controller_command", "free_ports", "pid_alive", "port_free", "start_controller", "stop_processes", "tail"]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports the kernel reports free (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def controller_command(config_path: str) -> list[str]:
    return [sys.executable, "-m", "avictl", "controller", "run", "--config", config_path]


def pid_alive(pid: Optional[int], config_path: str) -> bool:
    """True while ``pid`` runs and its command line names ``config_path``."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process took the pid
    proc = Path(f"/proc/{pid}")
    deadline = time.monotonic() + 0.2
    while True:
        try:
            cmdline = (proc / "cmdline").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except FileNotFoundError:
            return not Path("/proc/self").exists()  # no /proc on this OS: signal 0 is all we can check
        except (OSError, IndexError):
            return False
        if state in ("Z", "X"):
            return False
        # A process that has just exec'd can show an empty command line for a few milliseconds.
        if cmdline or time.monotonic() >= deadline:
            return config_path.encode() in cmdline.split(b"\0")
        time.sleep(0.005)


# Controllers outlive the CLI that started them; holding their Popen objects keeps the finalizer
# from warning "still running" when a long-lived caller (a test session) drops them.
_DETACHED: list[subprocess.Popen[bytes]] = []


def start_controller(config_path: str, log_path: str) -> subprocess.Popen[bytes]:
    """Start one controller in the background, in its own session, appending to ``log_path``."""
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            controller_command(config_path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    _DETACHED.append(proc)
    return proc


def stop_processes(
    targets: Iterable[tuple[int, str]],
    timeout: float = 10.0,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[int, str]:
    """SIGTERM every ``(pid, config_path)``, wait up to ``timeout``, then SIGKILL what is left.

    Returns pid -> ``"stopped"`` | ``"killed"`` | ``"not running"``.
    """
    targets = list(targets)
    result: dict[int, str] = {}
    pending: dict[int, str] = {}
    for pid, config in targets:
        if not pid_alive(pid, config):
            result[pid] = "not running"
            continue
        try:
            os.kill(pid, signal.SIGTERM)
            pending[pid] = config
        except ProcessLookupError:
            result[pid] = "stopped"
    deadline = clock() + timeout
    while pending and clock() < deadline:
        for pid in [p for p, c in pending.items() if not pid_alive(p, c)]:
            result[pid] = "stopped"
            del pending[pid]
        if pending:
            sleep(0.05)
    for pid in pending:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            result[pid] = "stopped"
            continue
        result[pid] = "killed"
    final = clock() + 5.0
    while any(pid_alive(p, c) for p, c in pending.items()) and clock() < final:
        sleep(0.05)
    return result


def tail(path: str, lines: int = 1) -> str:
    """The last non-empty ``lines`` of a text file (for error messages), or ``""``."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])
