"""CPU per L7 request of the SE against HAProxy (and optionally an older engine), in one run.

    python -m simulations.bench.l7_cpu [--seconds 3] [--reps 3] [--baseline REV] [--perf]

A focused companion of ``data_plane``: it reuses that module's nginx, SE child and HAProxy
setup, starts every proxy once (each pinned to the proxy CPU, idle while another is loaded) and
then loads them in turn with the same wrk (``-t1 -c50``) for ``--seconds`` each, ``--reps``
times, rotating the order. Per run it reads the proxy's user and system time from
/proc/PID/stat and the softirq time of the proxy CPU from /proc/stat, and prints microseconds
of CPU per request (user + sys + softirq). CPU per request barely depends on what else the
machine is doing, so an engine change can be judged against HAProxy and against ``--baseline``
(a git revision whose ``engine/`` is run as a second SE) within one run, on a shared machine.

Prints one line per run and a summary (median per proxy) to stderr, one JSON line to stdout.
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

from simulations.bench import data_plane as dp
from simulations.local_cluster import free_port


def _proc_cpu_ticks(pid: int) -> tuple[int, int]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[11]), int(fields[12])


def _softirq_ticks(cpu: int) -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            f = line.split()
            return int(f[6]) + int(f[7])
    return 0


def _measure(name: str, pid: int, url: str, seconds: float, load_cpu: int, proxy_cpu: int, connections: int, perf: bool, tmp: Path, groups: dict[str, int]) -> dict[str, Any]:
    wrk = ["taskset", "-c", str(load_cpu), "wrk", "-t1", f"-c{connections}"]
    subprocess.run([*wrk, "-d0.5s", url], capture_output=True, timeout=30)  # warm-up: fill the pools
    window = dp._CpuWindow(dict(groups, proxy=pid), proxy_cpu)
    cpu0 = dp._cpu_times()
    u0, s0 = _proc_cpu_ticks(pid)
    i0 = _softirq_ticks(proxy_cpu)
    perf_proc = None
    if perf:
        perf_proc = subprocess.Popen(
            ["perf", "stat", "-e", "task-clock,context-switches,cpu-migrations,page-faults", "-p", str(pid), "-o", str(tmp / f"perf-{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
    done = subprocess.run([*wrk, f"-d{seconds:g}s", "--latency", url], capture_output=True, text=True, timeout=seconds + 30)
    u1, s1 = _proc_cpu_ticks(pid)
    i1 = _softirq_ticks(proxy_cpu)
    cpu1 = dp._cpu_times()
    other = window.result()["process_cpu"]["other"]
    if perf_proc is not None:
        perf_proc.send_signal(2)
        perf_proc.wait(10)
    res = dp.parse_wrk(done.stdout)
    n = res["requests"] or 1
    tick_us = 1e6 / dp._CLK_TCK
    out = {
        "proxy": name,
        "rps": res["rps"],
        "requests": res["requests"],
        "errors": res["errors"] + res["non_2xx"],
        "user_us": round((u1 - u0) * tick_us / n, 2),
        "sys_us": round((s1 - s0) * tick_us / n, 2),
        "softirq_us": round((i1 - i0) * tick_us / n, 2),
        "other": other,
        "busy": {f"cpu{c}": round((cpu1[c][0] - cpu0[c][0]) / max(cpu1[c][1] - cpu0[c][1], 1), 2) for c in cpu1},
    }
    out["total_us"] = round(out["user_us"] + out["sys_us"] + out["softirq_us"], 2)
    if perf_proc is not None:
        out["perf"] = (tmp / f"perf-{name}.txt").read_text()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--baseline", default=None, help="git revision whose engine/ runs as a second SE ('base')")
    parser.add_argument("--no-haproxy", action="store_true")
    parser.add_argument("--perf", action="store_true", help="perf stat the proxy during each run")
    parser.add_argument("--hold", type=float, default=0.0, help="after the runs, keep everything up this many seconds (for strace/perf by hand)")
    args = parser.parse_args()

    load_cpu, proxy_cpu = dp._cpus()
    children = dp._Children()
    tmp = Path(tempfile.mkdtemp(prefix="avictl-l7cpu-"))
    os.sched_setaffinity(0, {load_cpu})
    runs: list[dict[str, Any]] = []
    try:
        os.chmod(tmp, 0o755)
        (tmp / "www").mkdir(mode=0o755)
        backend_ports = [free_port(dp._BACKEND_HOST), free_port(dp._BACKEND_HOST)]
        (tmp / "nginx.conf").write_text(dp._nginx_conf(tmp, backend_ports))
        nginx = children.start(["taskset", "-c", str(load_cpu), "nginx", "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "nginx-error.log")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        for port in backend_ports:
            dp._wait_http(dp._BACKEND_HOST, port, 10.0, nginx)

        targets: dict[str, tuple[int, str]] = {}
        ses = {"se": dp._REPO_ROOT}
        if args.baseline:
            base = tmp / "base"
            base.mkdir()
            archive = subprocess.run(["git", "-C", str(dp._REPO_ROOT), "archive", args.baseline, "engine"], capture_output=True, check=True).stdout
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
            ses["base"] = base
        hosts = {"se": dp._SE_L7, "base": "127.0.0.6"}
        for name, root in ses.items():
            l4_port, l7_port = free_port(dp._SE_L4), free_port(hosts[name])
            sl = dp._slice(l4_port, l7_port, backend_ports)
            sl["virtual_services"][1]["vip"] = hosts[name]
            sl["virtual_services"] = sl["virtual_services"][1:]  # L7 only
            slice_path = tmp / f"slice-{name}.json"
            slice_path.write_text(json.dumps(sl))
            env = dict(os.environ, PYTHONPATH=os.pathsep.join((str(root), str(dp._REPO_ROOT))))
            cmd = ["taskset", "-c", str(proxy_cpu), sys.executable, "-m", "simulations.bench.data_plane", "se-child", str(slice_path)]
            se = dp._SeProcess(children, cmd, tmp / f"{name}-stderr.log", env=env, cwd=tmp)
            ready = se.expect("ready", 30.0)
            if ready["errors"]:
                raise RuntimeError(f"{name}: {ready['errors']}")
            dp._wait_http(hosts[name], l7_port, 10.0, se.proc)
            targets[name] = (se.proc.pid, f"http://{hosts[name]}:{l7_port}/")
        if not args.no_haproxy:
            l4_port, l7_port = free_port(dp._HA_L4), free_port(dp._HA_L7)
            conf = tmp / "haproxy.cfg"
            conf.write_text(dp._haproxy_conf(tmp, "default", l4_port, l7_port, backend_ports, dp._engine_logs_requests()))
            ha = children.start(["taskset", "-c", str(proxy_cpu), "haproxy", "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            dp._wait_http(dp._HA_L7, l7_port, 10.0, ha)
            targets["haproxy"] = (ha.pid, f"http://{dp._HA_L7}:{l7_port}/")
        print(f"pids: { {k: v[0] for k, v in targets.items()} }", file=sys.stderr, flush=True)
        names = list(targets)
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                pid, url = targets[name]
                r = _measure(name, pid, url, args.seconds, load_cpu, proxy_cpu, args.connections, args.perf, tmp, {"nginx": nginx.pid})
                runs.append(r)
                print(f"{name:8} {r['rps']:>9} req/s  {r['total_us']:6.2f} us/req = {r['user_us']:5.2f} user + {r['sys_us']:5.2f} sys + {r['softirq_us']:5.2f} softirq  busy {r['busy']} other {r['other']:.2f}  err {r['errors']}",
                      file=sys.stderr, flush=True)  # fmt: skip
                if "perf" in r:
                    print(r["perf"], file=sys.stderr)
        if args.hold:
            print(f"holding {args.hold:g} s: {targets}", file=sys.stderr, flush=True)
            time.sleep(args.hold)
    finally:
        children.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {}
    for name in {r["proxy"] for r in runs}:
        mine = [r for r in runs if r["proxy"] == name]
        best = min(mine, key=lambda r: r["total_us"])
        summary[name] = {k: round(statistics.median(r[k] for r in mine), 2) for k in ("rps", "user_us", "sys_us", "softirq_us", "total_us")}
        summary[name]["min"] = {k: best[k] for k in ("rps", "user_us", "sys_us", "softirq_us", "total_us", "other")}
    for name, s in sorted(summary.items()):
        print(f"median {name:8} {s['rps']:>9} req/s  {s['total_us']:6.2f} us/req = {s['user_us']:5.2f} + {s['sys_us']:5.2f} + {s['softirq_us']:5.2f}", file=sys.stderr)
        m = s["min"]
        print(f"min    {name:8} {m['rps']:>9} req/s  {m['total_us']:6.2f} us/req = {m['user_us']:5.2f} + {m['sys_us']:5.2f} + {m['softirq_us']:5.2f}  (other {m['other']:.2f})", file=sys.stderr)
    if "haproxy" in summary:
        for name in ("se", "base"):
            if name in summary:
                print(f"{name} cpu-efficiency vs haproxy: median {summary['haproxy']['total_us'] / summary[name]['total_us']:.3f}, min {summary['haproxy']['min']['total_us'] / summary[name]['min']['total_us']:.3f}", file=sys.stderr)
    print(json.dumps({"summary": summary, "runs": [{k: v for k, v in r.items() if k != "perf"} for r in runs]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
