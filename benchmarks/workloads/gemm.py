"""gemm: z = x @ y for two square random matrices; compute-bound, an all-to-all exchange
of blocks between the block products and their sums."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da

from .base import SEED, Case, compare_arrays

NAME = "gemm"
SIZES = {
    "quick": {"n": 1024, "chunk": 256},
    "core": {"n": 4096, "chunk": 1024},
    "full": {"n": 8192, "chunk": 2048},
}


def build(params: dict[str, Any]) -> Case:
    n, chunk = params["n"], params["chunk"]
    rng = da.random.default_rng(SEED)
    x = rng.random((n, n), chunks=chunk)
    y = rng.random((n, n), chunks=chunk)
    x_np, y_np = dask.compute(x, y, scheduler="threads")
    expected = x_np @ y_np

    def check(results: Any) -> str | None:
        return compare_arrays(results[0], expected, "x @ y", rtol=1e-10)

    return Case(
        collections=(x @ y,),
        check=check,
        numpy_fn=lambda: (x_np @ y_np,),
        description=(
            f"x @ y, {n}x{n} float64 in {chunk}x{chunk} chunks; the dask graph also "
            "draws x and y (O(n^2) next to the O(n^3) product); numpy multiplies the "
            "materialized x and y"
        ),
    )
