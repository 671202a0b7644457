"""`python -m dask_kong.demo`: GEMM, an SVD and a tree reduction with `kong_get`.

Each workload runs once on dask's threaded scheduler and once on dask-kong (embedded
mode unless `--backend`/`--store` say otherwise); the demo checks the results agree and
prints both times and what dask-kong did (workers, invocations, bytes through the store).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import dask
import dask.array as da
import numpy as np

from . import Kong, last_run

# Timed computes per scheduler; the best counts, as in the benchmark suite.
REPEATS = 2


def workloads(scale: int) -> dict[str, tuple[Any, Callable[[Any, Any], bool]]]:
    """name -> (collection, check(kong_result, threads_result))."""
    rng = da.random.default_rng(0)
    n = 1024 * scale
    a = rng.random((n, n), chunks=n // 4)
    tall = rng.random((50_000 * scale, 100), chunks=(5_000 * scale, 100))
    vec = rng.random(2**22 * scale, chunks=2**22 * scale // 512)
    close = np.allclose
    return {
        f"GEMM {n}x{n} @ {n}x{n}": (a @ a, close),
        f"TSQR-SVD {tall.shape[0]}x100 (singular values)": (da.linalg.svd(tall)[1], close),
        f"tree reduction sum(split_every=2) of {vec.size:,}": (vec.sum(split_every=2), close),
    }


def run(backend: str | None, store: str | None, scale: int) -> int:
    failures = 0
    with Kong(backend=backend, store=store) as kong:
        print(
            f"dask-kong demo: backend={kong.backend_name} store={kong.store_spec} "
            f"planner={kong.planner_name}\n"
        )
        for name, (collection, check) in workloads(scale).items():
            expected, threads_s = best_of(REPEATS, collection, "threads")
            got, kong_s = best_of(REPEATS, collection, kong.get)
            ok = check(got, expected)
            failures += not ok
            summary = last_run()
            assert summary is not None
            print(f"{name}")
            print(f"  result matches dask threads: {ok}   value: {summarize_value(got)}")
            print(
                f"  dask threads {threads_s:7.3f} s | dask-kong {kong_s:7.3f} s "
                f"(ratio {kong_s / threads_s:.2f})"
            )
            print(
                f"  tasks {summary.tasks}, workers {summary.workers}, invocations "
                f"{summary.invocations}, store written {summary.bytes_written / 1e6:.1f} MB, "
                f"read {summary.bytes_read / 1e6:.1f} MB\n"
            )
    return failures


def best_of(repeats: int, collection: Any, scheduler: Any) -> tuple[Any, float]:
    """The result and the fastest of `repeats` timed computes (the first warms caches)."""
    best = float("inf")
    result = None
    for _ in range(repeats):
        started = time.perf_counter()
        (result,) = dask.compute(collection, scheduler=scheduler)
        best = min(best, time.perf_counter() - started)
    return result, best


def summarize_value(value: Any) -> str:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return f"{arr.item():.6g}"
    return f"array {arr.shape}, first {np.ravel(arr)[:3].round(4).tolist()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default=None, help="threads (default) or processes")
    parser.add_argument("--store", default=None, help="memory (default), redis or a URL")
    parser.add_argument("--scale", type=int, default=1, help="problem size multiplier")
    args = parser.parse_args(argv)
    return 1 if run(args.backend, args.store, args.scale) else 0


if __name__ == "__main__":
    raise SystemExit(main())
