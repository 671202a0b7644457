"""What kong costs per task, commit against commit: wall and CPU seconds of the client and
its worker processes for small-task workloads on the processes backend.

    python benchmarks/per_task_cost.py --checkouts /tmp/old,/work/main [--rounds 3]

Each checkout is a directory holding a dask-kong source tree (a `git worktree` of the
commit to measure); each round runs every checkout once, in a fresh process whose
`PYTHONPATH` is that checkout (its workers inherit it), alternating so that neither
always runs first on a machine whose load drifts. A run opens a processes session (two
workers), computes the workload once untimed, then `--repeat` times, and closes it. It
reports the median wall time of the timed computes and the CPU seconds of the client
(`RUSAGE_SELF`) and of its workers (`RUSAGE_CHILDREN` once the session closed and reaped
them: their start-up is included, the same in every run) over the whole session. CPU
seconds are far less disturbed by other programs than wall seconds: compare those.

Run as a file, not with `-m`, so that the measured checkout's `benchmarks.workloads`
(and dask_kong) are the ones imported. The workloads' `build` is the only API used, so
any commit with `benchmarks/workloads/` can be measured.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Workload module and its parameters: small tasks, where per-task overhead decides.
WORKLOADS = {
    "trivial": ("trivial", {"leaves": 5000}),
    "tree-reduction": ("tree_reduction", {"n": 2**25, "chunks": 1024}),
}


def measure(workload: str, repeat: int) -> dict[str, Any]:
    """One session in this process: the figures of one run (see the module docstring)."""
    import importlib

    import dask

    from dask_kong import Kong

    module, params = WORKLOADS[workload]
    case = importlib.import_module(f"benchmarks.workloads.{module}").build(params)
    started = resource.getrusage(resource.RUSAGE_SELF)
    kong = Kong(backend="processes", workers=2)
    walls = []
    try:
        dask.compute(*case.collections, scheduler=kong.get)
        for _ in range(repeat):
            t = time.perf_counter()
            dask.compute(*case.collections, scheduler=kong.get)
            walls.append(time.perf_counter() - t)
    finally:
        kong.close()
    ended = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "workload": workload,
        "wall_s": statistics.median(walls),
        "client_cpu_s": (ended.ru_utime + ended.ru_stime) - (started.ru_utime + started.ru_stime),
        "workers_cpu_s": children.ru_utime + children.ru_stime,
        "load": os.getloadavg()[0],
    }


def run_checkout(checkout: str, workload: str, repeat: int) -> dict[str, Any]:
    """`measure` in a fresh process importing `checkout`'s code."""
    env = {**os.environ, "PYTHONPATH": checkout}
    argv = [sys.executable, __file__, "--measure", workload, "--repeat", str(repeat)]
    out = subprocess.run(argv, env=env, cwd=checkout, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{checkout}: {out.stderr[-2000:]}")
    return {"checkout": checkout, **json.loads(out.stdout.strip().splitlines()[-1])}


def commit_of(checkout: str) -> str:
    git = ["git", "-C", checkout, "rev-parse", "--short", "HEAD"]
    return subprocess.run(git, capture_output=True, text=True, check=False).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkouts", help="comma-separated source trees to compare")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeat)))
        return
    checkouts = args.checkouts.split(",")
    samples = []
    for round_ in range(args.rounds):
        order = checkouts if round_ % 2 == 0 else checkouts[::-1]
        for workload in args.workloads.split(","):
            for checkout in order:
                sample = run_checkout(checkout, workload, args.repeat)
                samples.append(sample)
                print(json.dumps(sample), flush=True)
    report(samples, checkouts)
    if args.json:
        args.json.write_text(json.dumps(samples, indent=1))


def report(samples: list[dict[str, Any]], checkouts: list[str]) -> None:
    """Medians per checkout and workload, as a markdown table."""
    print("\n| workload | commit | wall (median) | client CPU | workers CPU | load |")
    print("|---|---|---:|---:|---:|---:|")
    for workload in dict.fromkeys(s["workload"] for s in samples):
        for checkout in checkouts:
            mine = [s for s in samples if s["workload"] == workload and s["checkout"] == checkout]
            med = {k: statistics.median(s[k] for s in mine) for k in mine[0] if k.endswith("_s")}
            loads = [s["load"] for s in mine]
            print(
                f"| {workload} | {commit_of(checkout)} | {med['wall_s']:.2f} s | "
                f"{med['client_cpu_s']:.2f} s | {med['workers_cpu_s']:.2f} s | "
                f"{min(loads):.1f}-{max(loads):.1f} |"
            )


if __name__ == "__main__":
    main()
