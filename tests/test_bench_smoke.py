"""Smoke test of ``python -m simulations.bench control-plane``: the raw pysyncobj baseline half only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

REQUIRED_KEYS = {
    "events_per_s",
    "baseline_events_per_s",
    "ratio",
    "p50_ms",
    "p99_ms",
    "concurrent_p50_ms",
    "concurrent_p99_ms",
    "baseline_default_events_per_s",
    "baseline_tuned_events_per_s",
    "baseline_lone_p50_ms",
    "errors",
    "payload_bytes",
    "duration_s",
    "cpu_count",
}


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_raw_baseline_commits_and_reports_json(tmp_path: Path) -> None:
    """Both baseline settings commit entries and stdout ends with one JSON line holding every report key."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "simulations.bench",
            "control-plane",
            "--only",
            "baseline",
            "--duration",
            "1",
            "--lone-writes",
            "5",
            "--lone-budget",
            "1",
            "--tmp-dir",
            str(tmp_path),
        ],
        check=False,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=40,
    )
    assert 0 == proc.returncode, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set() == REQUIRED_KEYS - set(report)
    assert report["baseline_default_events_per_s"] > 0
    assert report["baseline_tuned_events_per_s"] > 0
    assert report["baseline_events_per_s"] == max(report["baseline_default_events_per_s"], report["baseline_tuned_events_per_s"])
    assert 300 == report["payload_bytes"]
    assert isinstance(report["errors"], int)
    assert report["baseline_lone_p50_ms"]["default"] is not None
    assert report["baseline_lone_p50_ms"]["tuned"] is not None
