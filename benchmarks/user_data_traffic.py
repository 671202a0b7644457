"""What WUKONG's techniques save on the user's own data: store traffic of each planner.

    python -m benchmarks.user_data_traffic --size core --planners naive,wukong

Runs each workload's `-data` variant (inputs from `da.from_array` of NumPy arrays: see
`workloads`) on `Kong(backend="processes", store="redis")` once per planner, in a fresh
session each, and reports from `last_run()`: the input the client uploaded, what the
workers wrote and read, and the *intermediate* traffic, everything but the one
necessary read of the input and the results' one write (and the client's read of them):
``(bytes_written - client_bytes_read) + (bytes_read - client_bytes_read - input bytes)``,
with its ratio to naive's. A planner can cut what tasks pass to each other (clustering, delayed I/O,
subtree batching keep outputs in the worker); it cannot make the user's data cheaper
to read than once, and recipes (recompute instead of move) do not apply to it.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import dask

from dask_kong import Kong, last_run

from .workloads import resolve

WORKLOADS = ("gemm-data", "tsqr-svd-data", "svd-compressed-data")


def measure(workload: str, size: str, planner: str) -> dict[str, Any]:
    """One checked run of `workload` under `planner` in a session of its own."""
    (spec,) = resolve([workload], size)
    case = spec.module.build(spec.params)
    with Kong(backend="processes", store="redis", planner=planner) as kong:
        started = time.perf_counter()
        results = dask.compute(*case.collections, scheduler=kong.get)
        seconds = time.perf_counter() - started
    wrong = case.check(results)
    if wrong:
        raise RuntimeError(f"{workload} under {planner}: {wrong}")
    summary = last_run()
    assert summary is not None
    data = summary.data_bytes_uploaded + summary.data_bytes_reused
    workers_read = summary.bytes_read - summary.client_bytes_read
    # the results were written once and read by the client: necessary too
    passed_on = max(0, summary.bytes_written - summary.client_bytes_read)
    return {
        "workload": workload,
        "planner": planner,
        "seconds": round(seconds, 3),
        "uploaded": summary.data_bytes_uploaded,
        "written": summary.bytes_written,
        "workers_read": workers_read,
        "intermediate": passed_on + max(0, workers_read - data),
        "invocations": summary.invocations,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per workload and planner, intermediate traffic against naive's."""
    naive = {r["workload"]: r["intermediate"] for r in rows if r["planner"] == "naive"}
    lines = [
        "| workload | planner | uploaded | written | workers read | intermediate | vs naive "
        "| invocations | time |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        base = naive.get(r["workload"])
        ratio = f"{r['intermediate'] / base:.2f}" if base else "-"
        lines.append(
            f"| {r['workload']} | {r['planner']} | {r['uploaded'] / 1e6:.1f} MB "
            f"| {r['written'] / 1e6:.1f} MB | {r['workers_read'] / 1e6:.1f} MB "
            f"| {r['intermediate'] / 1e6:.1f} MB | {ratio} | {r['invocations']} "
            f"| {r['seconds']:.2f} s |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="quick")
    parser.add_argument("--planners", default="naive,wukong")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    rows = [
        measure(workload, args.size, planner)
        for workload in args.workloads.split(",")
        for planner in args.planners.split(",")
    ]
    if args.json:
        with open(args.json, "w") as out:
            json.dump(rows, out, indent=1)
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
