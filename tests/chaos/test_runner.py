"""CI smoke of the chaos harness: short leader-kill and leader-pause runs pass, a planted loss fails.

Each run brings up its own 3-node cluster in a temp dir; the whole file takes about a minute.
"""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from simulations.chaos import runner
from simulations.chaos.scenarios import SCENARIOS

pytestmark = pytest.mark.slow


def _failed(report: dict) -> list[str]:
    return [f"{c['name']}: {c['violations'][:2]}" for c in report["checks"] if not c["ok"]]


@pytest.mark.parametrize("scenario", ["leader-kill", "leader-pause"])
def test_short_scenario_passes(scenario: str) -> None:
    report = runner.run_scenario(scenario, duration=15, seed=11)
    assert report["verdict"] == "pass", _failed(report)
    assert report["faults"], "no fault was injected"
    assert report["operations"]["writes"]["acknowledged"] > 100
    assert report["operations"]["register"]["ok"] > 100
    names = {c["name"] for c in report["checks"]}
    assert {"acknowledged_writes", "logs_identical", "linearizable", "write_recovery"} <= names


def test_planted_lost_write_fails_through_the_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    real = runner.collect_present

    def drop_one_acked(cluster):  # type: ignore[no-untyped-def]
        present = real(cluster)
        node = sorted(present)[1]
        present[node] = sorted(present[node])[1:]  # one acknowledged write "lost" on one node
        return present

    monkeypatch.setattr(runner, "collect_present", drop_one_acked)
    result = CliRunner().invoke(cli, ["chaos", "run", "--scenario", "no-faults", "--duration", "4", "--seed", "3", "-o", "json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "fail"
    assert report["seed"] == 3 and report["scenario"] == "no-faults"
    ack = next(c for c in report["checks"] if c["name"] == "acknowledged_writes")
    assert not ack["ok"] and ack["violations"][0]["kind"] == "lost"
    assert "chaos verdict: fail" in result.stderr


def test_schedules_are_reproducible_from_the_seed() -> None:
    for scenario in SCENARIOS.values():
        assert scenario.faults(7, 60) == scenario.faults(7, 60)
    kills = SCENARIOS["leader-kill"].faults(7, 60)
    assert len(kills) >= 5 and all(s.action == "kill" and s.target == "leader" and s.hold == 2.0 for s in kills)
    gaps = [b.at - a.at for a, b in zip(kills, kills[1:])]
    assert all(9.0 <= g <= 11.0 for g in gaps)
    assert SCENARIOS["no-faults"].faults(random.randrange(100), 60) == []


def test_chaos_list_names_every_scenario() -> None:
    result = CliRunner().invoke(cli, ["chaos", "list"])
    assert result.exit_code == 0
    for name in ("no-faults", "leader-kill", "follower-kill", "leader-pause", "all-kill"):
        assert name in result.output
