"""How well predictive planners predict: run one computation several times under a
planner (the history fills up), and report predicted against observed makespan.

    python -m benchmarks.prediction --backend processes --planner non_uniform --runs 4

Each run after the first is planned from the history of the earlier ones; the table shows
the makespan predicted before each run, the one observed, and the relative error.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import dask

from dask_kong import Kong, last_run

from .workloads import MODULES


def measure(
    backend: str, planner: str, workload: str, size: str, runs: int
) -> list[dict[str, Any]]:
    module = next(m for m in MODULES if workload == m.NAME)
    case = module.build(module.SIZES[size])
    rows = []
    with Kong(backend=backend, planner=planner) as kong:
        for run in range(1, runs + 1):
            started = time.perf_counter()
            results = dask.compute(*case.collections, scheduler=kong.get)
            wall = time.perf_counter() - started
            problem = case.check(results)
            summary = last_run()
            assert summary is not None
            predicted = summary.plan.predicted_makespan_s
            observed = summary.makespan_s
            error = None if predicted is None else abs(predicted - observed) / observed
            rows.append(
                {
                    "run": run,
                    "predicted_s": predicted,
                    "observed_s": observed,
                    "wall_s": wall,
                    "error": error,
                    "check": problem or "ok",
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="processes")
    parser.add_argument("--planner", default="non_uniform")
    parser.add_argument("--workload", default="tsqr-svd")
    parser.add_argument("--size", default="quick")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = measure(args.backend, args.planner, args.workload, args.size, args.runs)
    print(
        f"`python -m benchmarks.prediction --backend {args.backend} --planner {args.planner} "
        f"--workload {args.workload} --size {args.size} --runs {args.runs}`\n"
    )
    print("| run | predicted makespan | observed makespan | error | check |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        pred = "-" if r["predicted_s"] is None else f"{r['predicted_s']:.3f} s"
        err = "-" if r["error"] is None else f"{100 * r['error']:.0f}%"
        print(f"| {r['run']} | {pred} | {r['observed_s']:.3f} s | {err} | {r['check']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": vars(args), "runs": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
