"""``avictl chaos`` without running a cluster: the scenario list and what a scenario cannot run here."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from avictl.cli import cli
from simulations.chaos import partitions


def test_chaos_list_names_the_network_scenarios_and_what_they_need() -> None:
    """partition-leader is listed as needing root, clock-skew as needing root and faketime."""
    result = CliRunner().invoke(cli, ["chaos", "list", "-o", "json"])
    assert 0 == result.exit_code, result.output
    needs = {s["name"]: s["needs"] for s in json.loads(result.stdout)}
    assert (["root"], ["root", "faketime"], []) == (needs["partition-leader"], needs["clock-skew"], needs["leader-kill"])
    table = CliRunner().invoke(cli, ["chaos", "list"])
    assert "partition-leader" in table.output and "NEEDS" in table.output


def test_chaos_run_without_faketime_is_a_skip_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """clock-skew on a machine without libfaketime: verdict skip, the reason as a note, exit 0."""
    monkeypatch.setattr(partitions, "faketime_lib", lambda: None)
    result = CliRunner().invoke(cli, ["chaos", "run", "--scenario", "clock-skew", "--duration", "30", "--seed", "1"])
    assert 0 == result.exit_code, result.output
    assert "apt-get install faketime" in result.stderr
    rows = [line.split(None, 2) for line in result.stdout.splitlines()]
    assert ["reason", "skip"] == rows[1][:2]


def test_chaos_run_unknown_scenario_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["chaos", "run", "--scenario", "partition-everything"])
    assert 2 == result.exit_code
    assert 1 == len(result.stderr.strip().splitlines()) and "partition-leader" in result.stderr


def test_chaos_run_of_a_partition_without_namespaces_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine that cannot make network namespaces: exit 1 with the reason on one line, no traceback."""
    from simulations import netns

    monkeypatch.setattr(netns, "check_netns_support", lambda tools=("ip",): "network namespaces need root (CAP_NET_ADMIN)")
    result = CliRunner().invoke(cli, ["chaos", "run", "--scenario", "partition-leader", "--duration", "5", "--seed", "1"])
    assert 1 == result.exit_code, result.output
    assert ["error: partition-leader needs network namespaces: cannot make network namespaces: network namespaces need root "
            "(CAP_NET_ADMIN)"] == result.stderr.strip().splitlines()
