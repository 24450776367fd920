"""Smoke test of ``python -m simulations.scale`` on a small fleet: both phases run, no invariant breaks, one JSON line."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import pytest

from simulations import scale


@pytest.mark.timeout(120)
def test_small_fleet_through_placement_and_reconcile() -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = scale.main(["--vss", "300", "--ses", "40", "--steps", "60", "--first-rounds", "1"])
    lines = buf.getvalue().strip().splitlines()
    summary = json.loads(lines[-1])
    assert status == 0, "\n".join(lines[-15:])
    assert summary["violations"] == 0 and summary["initial_place_ms"] > 0
    rec = summary["reconcile"]
    assert rec["violations"] == 0 and rec["rejected_commands"] == 0
    assert rec["first_round_commands"] >= 300 and rec["first_round_reconcile_ms"] > 0 and rec["first_round_commit_ms"] > 0
    assert rec["steps"] == 60 and sum(rec["rounds_to_converge"].values()) == 60
    assert rec["declared_down"] > 0 and rec["placements"] > 0


def test_reconcile_only() -> None:
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = scale.main(["--through", "reconcile", "--vss", "60", "--ses", "12", "--steps", "20", "--first-rounds", "1"])
    summary = json.loads(buf.getvalue().strip().splitlines()[-1])
    assert status == 0 and summary["reconcile"]["violations"] == 0 and summary["reconcile"]["final_vss_placed"] > 0
