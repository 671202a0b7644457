"""Pre-warm, pre-load and task-dup, each measured on a workload where it should help.

    python -m benchmarks.optimizations --repeat 5

Each experiment runs one small DAG on `Kong(backend="processes")` (a private Redis, the
local gateway with its default concurrency) with the optimization switched on for the
tasks it targets and with plain wukong, alternating, each repeat in a fresh session (so
that worker pools start cold, as a new Lambda deployment would). It reports the median
makespan of each and their ratio. The planners switch these optimizations on from
predictions; here the flags are set directly, so that each one is measured alone.

* pre-warm: a 2 s root fans out to two 8 MB children and a join. Without pre-warm, the
  child that does not continue in the root's worker waits for a cold start (a worker
  process importing dask and NumPy); with it, an empty invocation sent when the run
  starts has warmed a second worker by then.
* pre-load: a 64 MB output waits (delayed I/O) at a join for four 48 MB parents that
  finish about 0.2 s apart. With pre-load the waiting worker reads each as it appears;
  without, it reads all four (192 MB) after the last one.
* task-dup: two 8 MB children of one root meet at a join. One runs in the root's worker
  at once; the other waits for a cold start. With task-dup the first, waiting at the
  join, recomputes the second (50 ms) instead of waiting for it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dask
import numpy as np

from dask_kong import Kong, last_run
from dask_kong.dag import DAG
from dask_kong.planning import PLANNERS, Optimization, Plan, PlanningContext
from dask_kong.planning.planners import plan_wukong

# -- the tasks (module level: workers import them by reference) ----------------------------


def slow_seed(seconds: float) -> int:
    time.sleep(seconds)
    return 7


def block(seed: int, mb: int, seconds: float) -> np.ndarray:
    """An `mb` MB block that takes `seconds` to make (too slow to publish as a recipe)."""
    time.sleep(seconds)
    return np.full(mb * 2**17, float(seed))


def join(*blocks: np.ndarray) -> float:
    return float(sum(b.sum() for b in blocks))


# -- the graphs ----------------------------------------------------------------------------


def prewarm_graph() -> tuple[dict[str, Any], str]:
    return {
        "root": (slow_seed, 2.0),
        "left": (block, "root", 8, 0.05),
        "right": (block, "root", 8, 0.05),
        "join": (join, "left", "right"),
    }, "join"


def preload_graph() -> tuple[dict[str, Any], str]:
    dsk: dict[str, Any] = {"big": (block, 1, 64, 0.0)}
    for i in range(4):
        dsk[f"part-{i}"] = (block, i, 48, 0.2 * (i + 1))
    dsk["join"] = (join, "big", *(f"part-{i}" for i in range(4)))
    return dsk, "join"


def taskdup_graph() -> tuple[dict[str, Any], str]:
    return {
        "root": (slow_seed, 0.0),
        "left": (block, "root", 8, 0.05),
        "right": (block, "root", 8, 0.05),
        "join": (join, "left", "right"),
    }, "join"


# -- planners: wukong plus one flag where the experiment needs it -----------------------------


def flagging(optimization: Optimization, where: Callable[[DAG, int], bool]) -> Any:
    """A planner: wukong's plan with `optimization` on the tasks `where` selects (a
    pre-warm fires when the run starts: its predicted start is 0)."""

    def planner(dag: DAG, context: PlanningContext) -> Plan:
        plan = plan_wukong(dag, context)
        tasks = tuple(
            replace(t, optimizations=t.optimizations | {optimization}, predicted_start_s=0.0)
            if where(dag, i)
            else t
            for i, t in enumerate(plan.tasks)
        )
        return replace(plan, planner=f"wukong+{optimization}", tasks=tasks)

    return planner


def is_fan_in(dag: DAG, task: int) -> bool:
    return len(dag.parents[task]) > 1


def is_child_of_root(dag: DAG, task: int) -> bool:
    return any(not dag.parents[p] for p in dag.parents[task])


EXPERIMENTS: dict[str, tuple[Callable[[], tuple[dict[str, Any], str]], Any, dict[str, Any]]] = {
    "pre-warm": (prewarm_graph, flagging(Optimization.PREWARM, is_child_of_root), {}),
    # delayed I/O waits long enough for the staggered parents (they share one slot, the
    # waiting worker holds the other), with or without pre-load
    "pre-load": (
        preload_graph,
        flagging(Optimization.PRELOAD, is_fan_in),
        {"kong.wukong.delay_io_wait_s": 10.0},
    ),
    "task-dup": (
        taskdup_graph,
        flagging(Optimization.TASK_DUP, is_fan_in),
        {"kong.wukong.delay_io_wait_s": 3.0},
    ),
}


def run_once(dsk: dict[str, Any], key: str, planner: str) -> dict[str, float]:
    """One fresh session (cold pools), one run: its makespan and store traffic."""
    with Kong(backend="processes", planner=planner) as kong:
        started = time.perf_counter()
        kong.get(dsk, key)
        wall = time.perf_counter() - started
        summary = last_run()
        assert summary is not None
        return {
            "makespan_s": summary.makespan_s,
            "wall_s": wall,
            "read_mb": summary.bytes_read / 1e6,
            "written_mb": summary.bytes_written / 1e6,
        }


def measure(name: str, repeat: int) -> dict[str, Any]:
    build, planner, settings = EXPERIMENTS[name]
    dsk, key = build()
    PLANNERS[f"bench-{name}"] = planner
    runs: dict[str, list[dict[str, float]]] = {"wukong": [], name: []}
    with dask.config.set(settings):
        for _ in range(repeat):
            runs["wukong"].append(run_once(dsk, key, "wukong"))
            runs[name].append(run_once(dsk, key, f"bench-{name}"))
    median = {label: statistics.median(r["makespan_s"] for r in rs) for label, rs in runs.items()}
    return {"experiment": name, "median_makespan_s": median, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=sorted(EXPERIMENTS), action="append")
    parser.add_argument("--json", help="write the measurements here")
    args = parser.parse_args(argv)
    results = [measure(name, args.repeat) for name in args.only or EXPERIMENTS]
    print("| optimization | wukong (median) | with it (median) | with / without |")
    print("|---|---:|---:|---:|")
    for r in results:
        base, on = r["median_makespan_s"]["wukong"], r["median_makespan_s"][r["experiment"]]
        print(f"| {r['experiment']} | {base:.3f} s | {on:.3f} s | {on / base:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": vars(args), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
