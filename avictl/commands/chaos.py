"""``avictl chaos list|run``: fault-injection scenarios against a fresh local cluster, with a verdict."""

from __future__ import annotations

import secrets
from typing import Optional

import attrs
import click

from avictl import render
from avictl.commands._output import emit, note, output_option
from avictl.errors import Refused, UsageFault

__all__ = ["chaos_group"]


@click.group("chaos")
def chaos_group() -> None:
    """Fault-injection runs against a fresh local cluster, with a verdict (issue 5)."""


@chaos_group.command("list")
@output_option
def chaos_list(fmt: str) -> None:
    """The scenarios `avictl chaos run` knows, and what each needs (root: network namespaces; faketime)."""
    from simulations.chaos.scenarios import SCENARIOS, requirements

    if fmt != "table":
        emit(render.dump([{"name": s.name, "description": s.description, "needs": requirements(s),
                           "criteria": attrs.asdict(s.criteria)} for s in SCENARIOS.values()], fmt))
        return
    emit(render.table(["NAME", "NEEDS", "DESCRIPTION"],
                      ([s.name, ", ".join(requirements(s)) or "-", s.description] for s in SCENARIOS.values())))


@chaos_group.command("run")
@click.option("--scenario", required=True, metavar="NAME", help="A scenario from `avictl chaos list`.")
@click.option("--duration", type=click.FloatRange(1.0, 86400.0), default=60.0, show_default=True,
              help="Seconds of workload and faults.")
@click.option("--seed", type=int, default=None, help="Seed of the fault schedule (default: random, printed in the report).")
@output_option
def chaos_run(scenario: str, duration: float, seed: Optional[int], fmt: str) -> None:
    """Run SCENARIO on a fresh 3-node cluster in a temp dir; exit 1 when the verdict is fail.

    Network scenarios (partition-*, clock-skew) need root; a scenario this machine cannot run
    (clock-skew without faketime) reports the verdict skip with the reason and exits 0.
    """
    from simulations.chaos.report import verdict_rows
    from simulations.chaos.runner import run_scenario
    from simulations.chaos.scenarios import SCENARIOS
    from simulations.netns_cluster import NetnsUnavailable

    if scenario not in SCENARIOS:
        raise UsageFault(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    try:
        report = run_scenario(scenario, duration=duration, seed=seed, progress=note)
    except NetnsUnavailable as exc:
        raise Refused(f"{scenario} needs network namespaces: {exc}") from None
    if fmt == "table":
        emit(render.table(["CHECK", "VERDICT", "DETAIL"], verdict_rows(report)))
    else:
        emit(render.dump(report, fmt))
    if report["verdict"] == "skip":
        note(f"note: {scenario} was not run: {report.get('reason') or 'skipped'}")
        return
    if report["verdict"] != "pass":
        failed = [c["name"] for c in report["checks"] if not c["ok"]]
        raise Refused(f"chaos verdict: fail ({', '.join(failed)}); seed {seed}")
