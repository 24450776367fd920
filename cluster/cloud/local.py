"""The local cloud: each Service Engine is an ``avictl se run`` process on the controller's host.

Everything an SE needs lives under ``{home}/se/{name}/``: its state dir (the last good slice),
``se.log`` (stdout and stderr, appended) and ``se.pid``. The pid file, not the driver object,
is the record: any controller process on the host that builds a ``LocalCloud`` on the same home
sees and stops SEs another one started, and SEs run in their own session so they outlive the
controller that started them (a new leader adopts them).

A pid counts as a live SE only while ``/proc/<pid>`` is not a zombie and its command line still
names that SE (``--name NAME``) and its state dir, so a recycled pid is never taken for an SE nor
signalled. Starting and stopping one SE hold an exclusive ``flock`` on its directory's lock file,
so two controllers on the host never start the same SE twice.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from cluster.cloud import SE_NAME_PATTERN, CloudError, SeSpec

__all__ = ["LocalCloud", "TOKEN_ENV"]

# How ``avictl se run`` reads its bearer token (the root group's ``--token`` envvar): never argv,
# which every local user can read in /proc.
TOKEN_ENV = "AVICTL_TOKEN"

PID_FILE = "se.pid"
LOG_FILE = "se.log"
LOCK_FILE = ".lock"
LOG_LEVELS = ("debug", "info", "warning", "error")
KILL_WAIT = 5.0
POLL = 0.02
REAP_WAIT = 1.0

# Children started by any LocalCloud of this process, by pid. Polling them reaps the ones that
# died, so a killed SE does not linger as a zombie (which would also hold its pid).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_CHILDREN_LOCK = threading.Lock()


def _reap() -> None:
    with _CHILDREN_LOCK:
        for pid, proc in list(_CHILDREN.items()):
            if proc.poll() is not None:
                del _CHILDREN[pid]


def _state(pid: int) -> Optional[str]:
    """The one-letter state of ``pid`` from /proc (``Z`` for a zombie), or None when there is none."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


def _dying(pid: int) -> bool:
    """Gone, a zombie, or exiting (an exiting process has already lost its command line)."""
    if _state(pid) in (None, "Z", "X", "x"):
        return True
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _reap_dead(pid: int) -> None:
    """Reap ``pid`` if it is our child and has died; it is dying, so the wait is short.

    A killed multi-threaded process shows as a zombie before ``waitpid`` can collect it.
    """
    with _CHILDREN_LOCK:
        proc = _CHILDREN.get(pid)
        if proc is None or not _dying(pid):
            return
        try:
            proc.wait(timeout=REAP_WAIT)
        except subprocess.TimeoutExpired:
            return
        del _CHILDREN[pid]


class LocalCloud:
    """SEs as local processes (see the module docstring).

    A spec's ``group`` and ``memory_mb`` do not shape the process: an SE joins its group through
    the controller, and a local SE gets no memory limit. ``controllers`` may be empty for an
    instance that only inspects and stops SEs (``cluster down``); starting one then fails.
    """

    kind = "local"

    def __init__(
        self,
        home: Path,
        controllers: list[str],
        token: str | Callable[[str], str],
        *,
        report_interval: float = 1.0,
        ha_dir: Optional[Path] = None,
        python: str = sys.executable,
        log_level: str = "info",
    ) -> None:
        # What ``avictl se run`` accepts: refused here, not by every SE process at start.
        if not 0.2 <= report_interval <= 3600.0:
            raise CloudError(f"report_interval {report_interval} is outside 0.2..3600 s")
        if log_level not in LOG_LEVELS:
            raise CloudError(f"log_level {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        self.home = Path(home).resolve()
        self.controllers = list(controllers)
        self._token = token
        self.report_interval = report_interval
        self.ha_dir = Path(ha_dir).resolve() if ha_dir is not None else None
        self.python = python
        self.log_level = log_level

    def __repr__(self) -> str:  # the token stays out of logs
        return f"LocalCloud(home={str(self.home)!r}, controllers={self.controllers!r})"

    # -- where things are ------------------------------------------------------------------------

    @property
    def se_root(self) -> Path:
        return self.home / "se"

    def se_dir(self, name: str) -> Path:
        if not SE_NAME_PATTERN.fullmatch(name):
            raise CloudError(f"SE name {name!r} must match {SE_NAME_PATTERN.pattern}")
        return self.se_root / name

    def command(self, name: str) -> list[str]:
        """The argv that runs SE ``name`` (the token goes in the environment, not here)."""
        argv = [
            self.python, "-m", "avictl", "se", "run",
            "--name", name,
            "--controller", ",".join(self.controllers),
            "--report-interval", str(self.report_interval),
            "--state-dir", str(self.se_dir(name)),
            "--log-level", self.log_level,
        ]
        if self.ha_dir is not None:
            argv += ["--ha-dir", str(self.ha_dir)]
        return argv

    # -- the driver ------------------------------------------------------------------------------

    def ensure_running(self, specs: Sequence[SeSpec]) -> list[str]:
        """Start every SE of ``specs`` that has no live process; return the names started, in order."""
        _reap()
        started: list[str] = []
        for spec in specs:
            if spec.name in started:
                continue
            with self._locked(spec.name):
                if self._live_pid(spec.name) is None:
                    self._start(spec.name)
                    started.append(spec.name)
        return started

    def running(self) -> dict[str, int]:
        """SE name -> pid of every live SE under this home, whoever started it."""
        _reap()
        out: dict[str, int] = {}
        try:
            entries = sorted(self.se_root.iterdir())
        except FileNotFoundError:
            return out
        for entry in entries:
            if not SE_NAME_PATTERN.fullmatch(entry.name) or not (entry / PID_FILE).exists():
                continue
            pid = self._live_pid(entry.name)
            if pid is not None:
                out[entry.name] = pid
        return out

    def stop(self, name: str, timeout: float = 5.0) -> bool:
        """SIGTERM the SE, wait up to ``timeout``, SIGKILL if still alive; True if it was running."""
        _reap()
        if not self.se_dir(name).is_dir():
            return False
        with self._locked(name):
            pid = self._live_pid(name)
            if pid is None:
                self._remove_pid_file(name)
                return False
            self._signal(pid, signal.SIGTERM)
            if not self._wait_gone(name, pid, timeout):
                self._signal(pid, signal.SIGKILL)
                if not self._wait_gone(name, pid, KILL_WAIT):
                    raise CloudError(f"SE {name} (pid {pid}) survived SIGKILL for {KILL_WAIT:g} s")
            self._remove_pid_file(name)
            return True

    # -- helpers ---------------------------------------------------------------------------------

    def _start(self, name: str) -> int:
        if not self.controllers:
            raise CloudError(f"cannot start SE {name}: this local cloud has no controller URL for it")
        directory = self.se_dir(name)
        # The SE's first token: the same for every SE, or (what the controllers pass) one made
        # for this SE's name; it registers and then uses the credential the cluster answers with.
        token = self._token(name) if callable(self._token) else self._token
        env = {**os.environ, TOKEN_ENV: token, "PYTHONUNBUFFERED": "1"}
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with open(directory / LOG_FILE, "ab") as log:
                proc = subprocess.Popen(
                    self.command(name),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # outlives this controller; a new leader adopts it
                    env=env,
                )
        except OSError as exc:
            raise CloudError(f"cannot start SE {name} with {self.python!r}: {exc.strerror or exc}") from None
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = proc
        try:
            self._write_pid_file(name, proc.pid)
        except OSError as exc:
            proc.kill()
            proc.wait()
            raise CloudError(f"started SE {name} but cannot write its pid file ({exc}); killed it") from None
        return proc.pid

    def _write_pid_file(self, name: str, pid: int) -> None:
        path = self.se_dir(name) / PID_FILE
        tmp = path.with_name(f".{PID_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            f.write(f"{pid}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _remove_pid_file(self, name: str) -> None:
        try:
            (self.se_dir(name) / PID_FILE).unlink()
        except FileNotFoundError:
            pass

    def _read_pid(self, name: str) -> Optional[int]:
        try:
            text = (self.se_dir(name) / PID_FILE).read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _live_pid(self, name: str) -> Optional[int]:
        pid = self._read_pid(name)
        if pid is None:
            return None
        if self._is_ours(pid, name):
            return pid
        _reap_dead(pid)  # it may have died since the last reaping: no zombie outlives this answer
        return None

    def _is_ours(self, pid: int, name: str) -> bool:
        """``pid`` runs (not a zombie) and its command line names this SE and its state dir."""
        state = _state(pid)
        if state is None or state in ("Z", "X", "x"):
            return False
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return _has_option(args, "--name", name) and _has_option(args, "--state-dir", str(self.se_dir(name)))

    def _signal(self, pid: int, sig: signal.Signals) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _wait_gone(self, name: str, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if not self._is_ours(pid, name):
                _reap_dead(pid)
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL)

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        directory = self.se_dir(name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise CloudError(f"cannot use SE directory {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _has_option(args: list[bytes], option: str, value: str) -> bool:
    want = (option.encode(), value.encode())
    return any((a, b) == want for a, b in itertools.pairwise(args))
