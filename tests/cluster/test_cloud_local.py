"""The local cloud driver with real ``avictl se run`` processes (against a controller URL nobody serves)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from cluster.cloud import CloudDriver, CloudError, SeSpec
from cluster.cloud.local import LocalCloud
from tests.helpers import wait_until

pytestmark = pytest.mark.slow

UNREACHABLE = ["http://127.0.0.1:9"]
TOKEN = "local-cloud-test-token"
DEADLINE = 20.0


def proc_gone(pid: int) -> bool:
    """No process and no zombie holds ``pid``."""
    return not Path(f"/proc/{pid}").exists()


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def specs(*names: str) -> list[SeSpec]:
    return [SeSpec(name=n, group="Default-Group") for n in names]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cloud home; every SE still running under it at teardown is stopped (SIGKILL if need be).

    SEs inherit AVICTL_HOME (their default HA socket dir): it is the test's, never the user's.
    """
    path = tmp_path / "home"
    monkeypatch.setenv("AVICTL_HOME", str(path))
    yield path
    cleaner = LocalCloud(path, UNREACHABLE, TOKEN)
    for name, pid in cleaner.running().items():
        if not cleaner.stop(name, timeout=2.0):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cloud(home: Path) -> LocalCloud:
    return LocalCloud(home, UNREACHABLE, TOKEN, report_interval=0.5)


def test_is_a_cloud_driver(cloud: LocalCloud) -> None:
    """LocalCloud satisfies the CloudDriver protocol and says it is local."""
    driver: CloudDriver = cloud
    assert "local" == driver.kind


def test_command_passes_options_and_ha_dir_only_when_given(home: Path, tmp_path: Path) -> None:
    """The argv names the SE, its controllers, interval and state dir; --ha-dir only when configured."""
    plain = LocalCloud(home, ["http://a:1", "http://b:2"], TOKEN, report_interval=0.5, python="/usr/bin/python3")
    assert [
        "/usr/bin/python3", "-m", "avictl", "se", "run", "--name", "Avi-1", "--controller", "http://a:1,http://b:2",
        "--report-interval", "0.5", "--state-dir", str(home.resolve() / "se" / "Avi-1"), "--log-level", "info",
    ] == plain.command("Avi-1")
    with_ha = LocalCloud(home, ["http://a:1"], TOKEN, ha_dir=tmp_path / "ha")
    assert ["--ha-dir", str((tmp_path / "ha").resolve())] == with_ha.command("Avi-1")[-2:]
    assert TOKEN not in " ".join(with_ha.command("Avi-1"))


def test_spec_and_names_are_checked(cloud: LocalCloud) -> None:
    """An SE name must be usable as a directory name."""
    with pytest.raises(ValueError):
        SeSpec(name="../etc", group="g")
    with pytest.raises(CloudError):
        cloud.se_dir("a/b")


def test_start_two_then_idempotent(cloud: LocalCloud, home: Path) -> None:
    """ensure_running starts the missing SEs once; their pids are in running(), their pid files and argv."""
    assert [] == list(cloud.running())
    assert ["Avi-1", "Avi-2"] == cloud.ensure_running(specs("Avi-1", "Avi-2"))
    running = cloud.running()
    assert ["Avi-1", "Avi-2"] == sorted(running)
    for name, pid in running.items():
        assert f"{pid}\n" == (home / "se" / name / "se.pid").read_text()
        assert (home / "se" / name / "se.log").exists()
        argv = cmdline(pid)
        assert ["--name", name] == argv[argv.index("--name"):argv.index("--name") + 2]
        assert TOKEN not in argv
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"AVICTL_TOKEN={TOKEN}".encode() in environ
        assert os.getsid(pid) == pid  # its own session: it outlives the controller
    assert [] == cloud.ensure_running(specs("Avi-1", "Avi-2"))
    assert running == cloud.running()


def test_killed_se_disappears_and_is_restarted(cloud: LocalCloud) -> None:
    """kill -9 one SE: it leaves running() (reaped, no zombie) and ensure_running starts it again."""
    cloud.ensure_running(specs("Avi-1", "Avi-2"))
    before = cloud.running()
    os.kill(before["Avi-1"], signal.SIGKILL)
    wait_until(lambda: "Avi-1" not in cloud.running(), DEADLINE, interval=0.02, what="killed SE leaves running()")
    wait_until(lambda: proc_gone(before["Avi-1"]), DEADLINE, interval=0.02, what="killed SE reaped")
    assert {"Avi-2": before["Avi-2"]} == cloud.running()
    assert ["Avi-1"] == cloud.ensure_running(specs("Avi-1", "Avi-2"))
    after = cloud.running()
    assert before["Avi-2"] == after["Avi-2"]
    assert before["Avi-1"] != after["Avi-1"]


def test_se_log_is_appended(cloud: LocalCloud, home: Path) -> None:
    """The SE writes its log to se.log, and a restart appends to it."""
    log = home / "se" / "Avi-1" / "se.log"
    cloud.ensure_running(specs("Avi-1"))
    wait_until(lambda: b"se_register_retry" in log.read_bytes(), DEADLINE, interval=0.02, what="the SE logs its retries")
    first = log.read_bytes()
    assert cloud.stop("Avi-1")
    cloud.ensure_running(specs("Avi-1"))
    wait_until(lambda: len(log.read_bytes()) > len(first), DEADLINE, interval=0.02, what="the restarted SE appends")
    assert log.read_bytes().startswith(first)


def test_stop(cloud: LocalCloud, home: Path) -> None:
    """stop() ends the SE and removes its pid file; stopping it again, or an unknown SE, is False."""
    cloud.ensure_running(specs("Avi-1", "Avi-2"))
    pid = cloud.running()["Avi-1"]
    assert cloud.stop("Avi-1", timeout=5.0)
    assert ["Avi-2"] == list(cloud.running())
    assert proc_gone(pid)
    assert not (home / "se" / "Avi-1" / "se.pid").exists()
    assert not cloud.stop("Avi-1")
    assert not cloud.stop("Avi-9")
    assert not (home / "se" / "Avi-9").exists()


def test_stop_kills_what_ignores_sigterm(cloud: LocalCloud, home: Path) -> None:
    """An SE that does not exit on SIGTERM within the timeout is killed."""
    cloud.ensure_running(specs("Avi-1"))
    pid = cloud.running()["Avi-1"]
    os.kill(pid, signal.SIGSTOP)  # a stopped process cannot act on SIGTERM
    started = time.monotonic()
    assert cloud.stop("Avi-1", timeout=0.3)
    assert time.monotonic() - started < 5.0
    assert proc_gone(pid)


def test_second_instance_adopts(cloud: LocalCloud, home: Path) -> None:
    """Another LocalCloud on the same home sees, keeps and stops the SEs the first one started."""
    cloud.ensure_running(specs("Avi-1", "Avi-2"))
    other = LocalCloud(home, UNREACHABLE, "another-token")
    assert cloud.running() == other.running()
    assert [] == other.ensure_running(specs("Avi-1", "Avi-2"))
    pid = other.running()["Avi-2"]
    assert other.stop("Avi-2")
    assert ["Avi-1"] == list(cloud.running())
    wait_until(lambda: proc_gone(pid), DEADLINE, interval=0.02, what="the stopped SE is reaped by the instance that started it")


def test_adopted_from_another_process(home: Path, tmp_path: Path) -> None:
    """SEs started by a controller process that has exited are adopted by a LocalCloud here."""
    script = (
        "import sys; from pathlib import Path; from cluster.cloud import SeSpec; from cluster.cloud.local import LocalCloud\n"
        f"c = LocalCloud(Path({str(home)!r}), {UNREACHABLE!r}, {TOKEN!r})\n"
        "print(c.ensure_running([SeSpec('Avi-7', 'g')]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=DEADLINE,
                          cwd=Path(__file__).resolve().parents[2])
    assert 0 == done.returncode, done.stderr
    assert "['Avi-7']" == done.stdout.strip()
    adopter = LocalCloud(home, UNREACHABLE, TOKEN)
    pid = adopter.running()["Avi-7"]
    assert adopter.stop("Avi-7")
    wait_until(lambda: proc_gone(pid), DEADLINE, interval=0.02, what="the orphaned SE is gone")


def test_stale_pid_files_are_not_running(cloud: LocalCloud, home: Path) -> None:
    """A pid file naming a dead process or another live process is not an SE; ensure_running replaces it."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, pid in (("Avi-1", dead.pid), ("Avi-2", os.getpid()), ("Avi-3", 0)):
        (home / "se" / name).mkdir(parents=True)
        (home / "se" / name / "se.pid").write_text(f"{pid}\n")
    (home / "se" / "Avi-4").mkdir(parents=True)
    (home / "se" / "Avi-4" / "se.pid").write_text("garbage")
    assert {} == cloud.running()
    assert not cloud.stop("Avi-2")
    assert Path(f"/proc/{os.getpid()}").exists()
    assert ["Avi-1", "Avi-2"] == cloud.ensure_running(specs("Avi-1", "Avi-2"))
    assert ["Avi-1", "Avi-2"] == sorted(cloud.running())


def test_same_name_in_another_home_is_not_ours(cloud: LocalCloud, home: Path, tmp_path: Path) -> None:
    """A live SE of the same name run from another home is not taken as this home's SE."""
    elsewhere = LocalCloud(tmp_path / "elsewhere", UNREACHABLE, TOKEN)
    try:
        elsewhere.ensure_running(specs("Avi-1"))
        pid = elsewhere.running()["Avi-1"]
        (home / "se" / "Avi-1").mkdir(parents=True)
        (home / "se" / "Avi-1" / "se.pid").write_text(f"{pid}\n")
        assert {} == cloud.running()
    finally:
        elsewhere.stop("Avi-1", timeout=2.0)


def test_start_failure_is_a_cloud_error(home: Path) -> None:
    """A python that cannot be executed gives a CloudError naming the SE and the program."""
    broken = LocalCloud(home, UNREACHABLE, TOKEN, python=str(home / "no-such-python"))
    with pytest.raises(CloudError, match=r"cannot start SE Avi-1 with .*no-such-python.*No such file"):
        broken.ensure_running(specs("Avi-1"))
    assert {} == broken.running()


def test_options_se_run_would_refuse_are_refused_here(home: Path) -> None:
    """An interval or a log level that `avictl se run` rejects: a CloudError at construction."""
    with pytest.raises(CloudError, match="report_interval"):
        LocalCloud(home, UNREACHABLE, TOKEN, report_interval=0.1)
    with pytest.raises(CloudError, match="log_level"):
        LocalCloud(home, UNREACHABLE, TOKEN, log_level="loud")


def test_without_controllers_it_only_sees_and_stops(cloud: LocalCloud, home: Path) -> None:
    """A LocalCloud with no controllers (for cleanup) sees and stops SEs but refuses to start one."""
    cloud.ensure_running(specs("Avi-1"))
    cleaner = LocalCloud(home, [], "")
    assert ["Avi-1"] == list(cleaner.running())
    with pytest.raises(CloudError, match="no controller"):
        cleaner.ensure_running(specs("Avi-2"))
    assert cleaner.stop("Avi-1")
    assert {} == cloud.running()
