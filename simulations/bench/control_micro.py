"""CPU per event of the controller's bulk write path, in process, optionally against an older commit.

    python -m simulations.bench.control_micro [--existing 3000] [--macros 4] [--macro-size 100] [--reps 7] [--baseline REV]

A focused companion of ``control-plane --macro-size 100``: no Raft, no HTTP, no disk, only the
Python the controller runs per committed event. On a view holding the built-in objects and
``--existing`` pools, every repetition

* decides ``--macros`` ``POST /api/macro`` bodies of ``--macro-size`` pools each (what the node
  that took the request does: ``decide_macro_create``, fresh uuids included), then encodes them
  as one ``ProposalBatch`` (what that node proposes);
* applies the entry as every node does: unpack, decode, ``check`` + ``evolve`` on the view, and
  the event-store payload (``committed_payload``);
* answers the requests as the deciding node does: ``Api.render`` of every created object and
  the JSON text of the response.

Times are ``time.process_time`` per event; each figure is the median over ``--reps``. With
``--baseline REV`` the same measurement runs on ``git archive REV cluster storage`` too, each
side in its own child process, ``--rounds`` times in rotating order (CPU per event barely depends
on what else the shared machine does, so the two can be compared within one run).

Prints one line per side and round and a summary to stderr, one JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_REPO_ROOT = Path(__file__).resolve().parents[2]
_PHASES = ("decide", "encode", "apply", "respond")


def _pool_body(n: int) -> dict[str, Any]:
    # The shape simulations.bench.api_load posts (kept literal: the baseline tree may lack it).
    return {"name": f"bench-{n}", "servers": [{"ip": {"addr": "127.0.0.2", "type": "V4"}, "port": 80}]}


def _macro_body(start: int, size: int) -> dict[str, Any]:
    return {"model_name": "Pool", "data": [_pool_body(n) for n in range(start, start + size)]}


def measure(existing: int, macros: int, macro_size: int, reps: int) -> dict[str, Any]:
    """µs of process CPU per event for each phase, one figure per repetition (after one warm-up)."""
    from types import SimpleNamespace

    from cluster.api.app import Api
    from cluster.apply import apply
    from cluster.decide import builtin_events
    from cluster.macro import decide_macro_create
    from cluster.pipeline import committed_payload
    from cluster.views import ConfigView
    from storage import codec
    from storage.events import Proposal, ProposalBatch

    view = ConfigView.with_builtins(builtin_events())
    names = 0
    # The existing pools go in through the same path, 100 per command (their cost is not timed).
    while names < existing:
        size = min(100, existing - names)
        decision = decide_macro_create(view, "Pool", _macro_body(names, size)["data"], tenant="admin")
        view.evolve(view.raft_index + 1, f"seed-{names}", decision.events)
        names += size

    api = Api.__new__(Api)  # only render() is used: it reads node.view, node.se_status, node.slices
    api.node = SimpleNamespace(view=view, se_status={}, slices=None, config=SimpleNamespace(api_url="http://127.0.0.1:9443"))  # type: ignore[assignment]
    request = SimpleNamespace(scheme="http", host="127.0.0.1:9443")
    per_rep: dict[str, list[float]] = {p: [] for p in _PHASES}
    events_per_rep = macros * macro_size
    for rep in range(reps + 1):
        bodies = [_macro_body(names + i * macro_size, macro_size) for i in range(macros)]
        names += macros * macro_size
        t0 = time.process_time()
        decisions = [decide_macro_create(view, b["model_name"], b["data"], tenant="admin") for b in bodies]
        t1 = time.process_time()
        proposals = [
            Proposal(command_id=f"cmd-{rep}-{i}", based_on=view.revision, time=1_700_000_000.0 + rep + i / 7,
                     preconditions=d.preconditions, events=d.events)
            for i, d in enumerate(decisions)
        ]  # fmt: skip
        payload = codec.encode(ProposalBatch(proposals))
        t2 = time.process_time()
        raft_index = view.raft_index + 1
        plain = codec.unpack(payload)
        entry = codec.decode_value(plain)
        committed = list(apply(view, raft_index, entry).committed)
        stored = committed_payload(plain, committed)
        t3 = time.process_time()
        answers = [json.dumps([api.render(request, view.get(e.uuid)) for e in d.events]) for d in decisions]  # type: ignore[arg-type]
        t4 = time.process_time()
        assert len(committed) == macros and len(entry.items[0].events) == macro_size and stored and answers
        if rep == 0:
            continue  # warm-up
        for phase, dt in zip(_PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=False):
            per_rep[phase].append(dt / events_per_rep * 1e6)
    return {"objects": len(view), "events_per_rep": events_per_rep, "per_rep": per_rep,
            "median": {p: round(statistics.median(v), 2) for p, v in per_rep.items()}}  # fmt: skip


def _child(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--existing", str(args.existing), "--macros", str(args.macros),
           "--macro-size", str(args.macro_size), "--reps", str(args.reps)]  # fmt: skip
    done = subprocess.run(cmd, env=env, cwd=root, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child on {root} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def _line(name: str, r: dict[str, Any]) -> str:
    m = r["median"]
    return f"{name:5} decide {m['decide']:7.2f}  encode {m['encode']:6.2f}  apply {m['apply']:6.2f}  respond {m['respond']:6.2f}  us/event  ({r['objects']} objects)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--existing", type=int, default=3000, help="pools in the view before the timed writes")
    parser.add_argument("--macros", type=int, default=4, help="macro requests per repetition (one Raft entry)")
    parser.add_argument("--macro-size", type=int, default=100)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=2, help="with --baseline: child runs per side, in rotating order")
    parser.add_argument("--baseline", default=None, help="git revision whose cluster/ and storage/ run as 'base'")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print(json.dumps(measure(args.existing, args.macros, args.macro_size, args.reps)))
        return 0
    if not args.baseline:
        result = measure(args.existing, args.macros, args.macro_size, args.reps)
        print(_line("this", result), file=sys.stderr)
        print(json.dumps({"this": result["median"]}))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="avictl-control-micro-"))
    try:
        base = tmp / "base"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(_REPO_ROOT), "archive", args.baseline, "cluster", "storage"], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        roots = {"this": _REPO_ROOT, "base": base}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in roots}
        names = list(roots)
        for rnd in range(args.rounds):
            for name in names[rnd % 2 :] + names[: rnd % 2]:
                r = _child(roots[name], args)
                runs[name].append(r)
                print(_line(name, r), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        name: {p: round(statistics.median(v for r in rs for v in r["per_rep"][p]), 2) for p in _PHASES} for name, rs in runs.items()
    }
    for name in names:
        s = summary[name]
        print(f"median {name:5} decide {s['decide']:7.2f}  encode {s['encode']:6.2f}  apply {s['apply']:6.2f}  respond {s['respond']:6.2f}  us/event", file=sys.stderr)
    ratio = {p: round(summary["this"][p] / summary["base"][p], 3) for p in _PHASES}
    ratio["all"] = round(sum(summary["this"].values()) / sum(summary["base"].values()), 3)
    print(f"this/base: {ratio}", file=sys.stderr)
    print(json.dumps({"summary": summary, "ratio": ratio, "baseline": args.baseline}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
