"""What signing pickles costs per call (issue #18): `serialize.dumps` and `loads` with
kong.security.sign on and off, for a small object (an event-sized dict) and a large one
(an 8 MB NumPy block, a GEMM chunk of the core suite is 8 MB), and `dumps_spec` /
`loads_spec` of the run spec of a 10,000-task DAG (what each worker process reads once
per run).

    python -m benchmarks.signing_cost [--repeat N]

Prints one JSON object: microseconds per call, signed and unsigned, the signed/unsigned
difference per MB, and the load average (1 min) before and after. The suite-level cost is
measured by `benchmarks.signing_suite` (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import dask.config
import numpy as np

from dask_kong import security, serialize
from dask_kong.dag.translate import to_dag
from dask_kong.invocation.payload import (
    RunSettings,
    RunSpec,
    dumps_spec,
    loads_spec,
    spec_parts,
)
from dask_kong.planning.plan import Plan, TaskPlan

#: The place the measured pickles are signed for (a stored value's, as most are).
WHERE = security.place("value", "a-run-id-of-32-hex-characters-xx", "out:12345")


def best_of(repeat: int, call: Callable[[], Any]) -> float:
    """Fastest of `repeat` timings of `call`, in seconds (the least disturbed by load)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure(obj: Any, repeat: int) -> dict[str, float]:
    """Microseconds per dumps and loads of `obj`, signed and unsigned."""
    result: dict[str, float] = {}
    for sign in (True, False):
        with dask.config.set({"kong.security.sign": sign}):
            blob = serialize.dumps(obj, where=WHERE)
            label = "signed" if sign else "unsigned"
            dumps = partial(serialize.dumps, obj, where=WHERE)
            loads = partial(serialize.loads, blob, where=WHERE)
            result[f"dumps_{label}_us"] = best_of(repeat, dumps) * 1e6
            result[f"loads_{label}_us"] = best_of(repeat, loads) * 1e6
    return result


def measure_spec(tasks: int, repeat: int) -> dict[str, float]:
    """Microseconds per `dumps_spec` and `loads_spec` of a `tasks`-task run spec (a
    chain of additions: small tasks, as a task-bound DAG has), signed and unsigned."""
    graph: dict[Any, Any] = {("x", 0): 1}
    for i in range(1, tasks):
        graph[("x", i)] = (sum, [("x", i - 1), i])
    dag = to_dag(graph, [("x", tasks - 1)])
    plan = Plan("wukong", tuple(TaskPlan() for _ in range(len(dag))))
    spec = RunSpec(dag, plan, RunSettings.from_config(), frozenset({len(dag) - 1}))
    run_id = "a-run-id-of-32-hex-characters-xx"

    def dumps() -> bytes:
        return dumps_spec(spec_parts(spec), run_id)

    result: dict[str, float] = {"bytes": len(dumps())}
    for sign in (True, False):
        with dask.config.set({"kong.security.sign": sign}):
            blob = dumps()
            label = "signed" if sign else "unsigned"
            loads = partial(loads_spec, blob, run_id, what="spec")
            result[f"dumps_{label}_us"] = best_of(repeat, dumps) * 1e6
            result[f"loads_{label}_us"] = best_of(repeat, loads) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    security.ensure_key()
    block = np.random.default_rng(0).random((1024, 1024))  # 8 MB
    small = {"kind": "task-finished", "task": 12, "worker": "w-1", "bytes": 4096}
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {
        "small": measure(small, args.repeat * 20),
        "block_8mb": measure(block, args.repeat),
        "spec_10000_tasks": measure_spec(10_000, max(3, args.repeat // 5)),
    }
    big = report["block_8mb"]
    extra_us = (big["dumps_signed_us"] - big["dumps_unsigned_us"]) + (
        big["loads_signed_us"] - big["loads_unsigned_us"]
    )
    report["signing_us_per_mb"] = {"dumps_plus_loads": extra_us / (block.nbytes / 2**20)}
    report["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
