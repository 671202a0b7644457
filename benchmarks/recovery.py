"""Recovery under injected faults (issue #13): GEMM, TSQR-SVD and a tree reduction with
0%, 1% and 3% of invocations killed partway through their branches, on generated data
and on the user's data (`da.from_array` of NumPy arrays), side by side in one run.

    python -m benchmarks.recovery [--size quick] [--repeat 3] [--levels 0 0.01 0.03]
                                  [--workloads ...] [--backend processes|lambda]
                                  [--baseline DIR] [--json PATH]

Processes backend (or `--backend lambda`: the lambda backend through a local gateway
serving kong's handler as a Lambda function, two at a time, with Lambda's asynchronous
retries off, so that a lost worker is seen by its lease running out:
`dask_kong/runtime/leases.py`), private Redis, two workers, the wukong planner. Kills use the
documented switch (`kong.faults`, every kill point; only first attempts). Per run:
makespan, kills (from `kong.faults.log`), re-invocations, recomputed tasks (completion
events of tasks already done) and detection time: from a kill (the dying worker's clock)
to the client's re-invocation, kills and re-invocations paired in time order. Every
result is checked against NumPy.

`--baseline DIR` also times the fault-free runs with the dask_kong package found in DIR
(e.g. `git archive <commit> dask_kong | tar -x -C DIR`), in a subprocess of the same
run, so the fault-free speed before and after a change is compared on the same machine
at the same time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from dask_kong import Kong, last_run
from dask_kong.backends.processes.auth import AccessKey
from dask_kong.backends.processes.backend import HANDLER
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.backends.processes.settings import GatewaySettings
from dask_kong.security import KEY_ENV
from dask_kong.store.server import RedisServer

SEED = 2019

SIZES: dict[str, dict[str, Any]] = {
    "quick": {"gemm": (1024, 256), "tsqr": (40_000, 50, 2_500), "tree": (2**20, 256)},
    "core": {"gemm": (2048, 512), "tsqr": (200_000, 100, 10_000), "tree": (2**23, 1024)},
}

Workload = tuple[str, Callable[[], tuple[Any, ...]], Callable[[tuple[Any, ...]], bool]]


def workloads(size: str, data: str) -> list[Workload]:
    """(name, collections, check) for the three workloads on `data`: "generated" (dask
    draws or ranges the input itself) or "user" (da.from_array of a NumPy array)."""
    rng = np.random.default_rng(SEED)
    n, chunk = SIZES[size]["gemm"]
    rows, cols, chunk_rows = SIZES[size]["tsqr"]
    length, chunks = SIZES[size]["tree"]
    if data == "generated":
        drng = da.random.default_rng(SEED)
        x, y = drng.random((n, n), chunks=chunk), drng.random((n, n), chunks=chunk)
        tall = drng.random((rows, cols), chunks=(chunk_rows, cols))
        vector = da.arange(length, dtype=np.float64, chunks=length // chunks)
    else:
        x = da.from_array(rng.random((n, n)), chunks=chunk)
        y = da.from_array(rng.random((n, n)), chunks=chunk)
        tall = da.from_array(rng.random((rows, cols)), chunks=(chunk_rows, cols))
        vector = da.from_array(np.arange(length, dtype=np.float64), chunks=length // chunks)
    x_np, y_np, tall_np = dask.compute(x, y, tall, scheduler="threads")
    product = x_np @ y_np
    total = float(length * (length - 1) // 2)

    def svd_ok(r: tuple[Any, ...]) -> bool:
        u, s, v = r
        return bool(np.allclose((u * s) @ v, tall_np, atol=1e-8))

    return [
        ("gemm", lambda: (x @ y,), lambda r: bool(np.allclose(r[0], product, rtol=1e-10))),
        ("tsqr-svd", lambda: da.linalg.svd(tall), svd_ok),
        ("tree-reduction", lambda: (vector.sum(split_every=2),), lambda r: float(r[0]) == total),
    ]


def pair_detections(kills: list[float], reinvoked: list[float]) -> list[float]:
    """Seconds from each kill to the re-invocation paired with it (both in time order)."""
    return [r - k for k, r in zip(sorted(kills), sorted(reinvoked), strict=False) if r >= k]


def one_run(kong: Kong, workload: Workload, level: float, seed: int) -> dict[str, Any]:
    _, collections, check = workload
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp, "kills.jsonl")
        faults = {
            "kong.faults.kill_fraction": level,
            "kong.faults.seed": seed,
            "kong.faults.log": str(log) if level else None,
        }
        with dask.config.set(faults):
            started = time.perf_counter()
            results = dask.compute(*collections(), scheduler=kong.get)
            seconds = time.perf_counter() - started
        kills = (
            [json.loads(line)["time"] for line in log.read_text().splitlines()]
            if log.exists()
            else []
        )
    summary = last_run()
    assert summary is not None
    reinvoked = list(getattr(summary, "reinvoked_at", []))
    return {
        "makespan_s": seconds,
        "correct": check(results),
        "kills": len(kills),
        "reinvocations": getattr(summary, "reinvocations", 0),
        "recomputed_tasks": getattr(summary, "recomputed_tasks", 0),
        "detection_s": pair_detections(kills, reinvoked),
        "tasks": summary.tasks,
    }


@contextlib.contextmanager
def session(backend: str) -> Iterator[Kong]:
    """A session of two workers on `backend` (see the module docstring)."""
    if backend == "processes":
        with Kong(backend="processes", store="redis", workers=2) as kong:
            yield kong
        return
    os.environ.update(AccessKey.generate().environment())  # what aiobotocore signs with
    key = secrets.token_hex(32)
    with RedisServer() as server, dask.config.set({"kong.security.key": key}):
        env = {"DASK_KONG__STORE__URL": server.url, KEY_ENV: key}
        settings = GatewaySettings.from_config(HANDLER, env=env, concurrency=2, async_retries=0)
        with (
            Gateway(settings) as gateway,
            Kong(
                backend="lambda",
                store=server.url,
                endpoint_url=gateway.url,
                function=gateway.default_function,
            ) as kong,
        ):
            yield kong


def measure(
    size: str,
    levels: list[float],
    repeat: int,
    datas: list[str],
    names: list[str] | None = None,
    backend: str = "processes",
) -> list[dict[str, Any]]:
    rows = []
    with session(backend) as kong:
        for data in datas:
            for workload in workloads(size, data):
                if names and workload[0] not in names:
                    continue
                dask.compute(*workload[1](), scheduler=kong.get)  # warm workers, history
                for level in levels:
                    runs = [one_run(kong, workload, level, seed) for seed in range(repeat)]
                    rows.append(
                        {
                            "workload": workload[0],
                            "data": data,
                            "level": level,
                            "backend": backend,
                            "runs": runs,
                        }
                    )
                    print(describe(rows[-1]), flush=True)
    return rows


def describe(row: dict[str, Any]) -> str:
    runs = row["runs"]
    detections = [d for r in runs for d in r["detection_s"]]
    detection = f"{statistics.median(detections):.3f}" if detections else "-"
    return (
        f"{row['workload']:15} {row['data']:9} {row['level']:>5.0%}  makespan median "
        f"{statistics.median(r['makespan_s'] for r in runs):7.2f} s  kills "
        f"{sum(r['kills'] for r in runs):3}  "
        f"reinvocations {sum(r['reinvocations'] for r in runs):3}"
        f"  recomputed {sum(r['recomputed_tasks'] for r in runs):4}  detection median {detection} s"
        f"  correct {all(r['correct'] for r in runs)}"
    )


def baseline(
    directory: str,
    size: str,
    repeat: int,
    datas: list[str],
    names: list[str] | None,
    backend: str,
) -> list[dict[str, Any]]:
    """The fault-free runs with the dask_kong in `directory`, in a subprocess."""
    env = dict(os.environ, PYTHONPATH=f"{directory}{os.pathsep}{Path(__file__).parent.parent}")
    argv = [sys.executable, "-m", "benchmarks.recovery", "--size", size, "--repeat", str(repeat)]
    argv += ["--levels", "0", "--data", *datas, "--backend", backend, "--print-json"]
    if names:
        argv += ["--workloads", *names]
    out = subprocess.run(argv, env=env, check=True, capture_output=True, text=True).stdout
    rows: list[dict[str, Any]] = json.loads(out.strip().splitlines()[-1])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="quick", choices=sorted(SIZES))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--levels", nargs="+", type=float, default=[0.0, 0.01, 0.03])
    parser.add_argument("--data", nargs="+", default=["generated", "user"])
    parser.add_argument("--workloads", nargs="+", help="gemm, tsqr-svd, tree-reduction")
    parser.add_argument("--backend", default="processes", choices=["processes", "lambda"])
    parser.add_argument("--baseline", help="a directory holding the dask_kong to compare")
    parser.add_argument("--json", help="write every sample here")
    parser.add_argument("--print-json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import dask_kong

    print(f"dask_kong from {Path(dask_kong.__file__).parent}", file=sys.stderr)
    rows = measure(args.size, args.levels, args.repeat, args.data, args.workloads, args.backend)
    if args.print_json:
        print(json.dumps(rows))
        return 0
    if args.baseline:
        print(f"baseline (fault-free) with the dask_kong of {args.baseline}:")
        base = baseline(
            args.baseline, args.size, args.repeat, args.data, args.workloads, args.backend
        )
        for row in base:
            print(describe(row))
        rows += [{**row, "baseline": args.baseline} for row in base]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
