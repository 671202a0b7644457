"""gemm: z = x @ y for two square random matrices; compute-bound, an all-to-all exchange
of blocks between the block products and their sums."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from .base import SEED, Case, compare_arrays, user_data

NAME = "gemm"
USER_DATA = True  # also `gemm-data`: build_from_array
SIZES = {
    "quick": {"n": 1024, "chunk": 256},
    "core": {"n": 4096, "chunk": 1024},
    "full": {"n": 8192, "chunk": 2048},
}


def build(params: dict[str, Any]) -> Case:
    if user_data(params):
        return build_from_array(params)
    n, chunk = params["n"], params["chunk"]
    rng = da.random.default_rng(SEED)
    x = rng.random((n, n), chunks=chunk)
    y = rng.random((n, n), chunks=chunk)
    x_np, y_np = dask.compute(x, y, scheduler="threads")
    description = (
        f"x @ y, {n}x{n} float64 in {chunk}x{chunk} chunks; the dask graph also "
        "draws x and y (O(n^2) next to the O(n^3) product); numpy multiplies the "
        "materialized x and y"
    )
    return product_case(x, y, x_np, y_np, description)


def build_from_array(params: dict[str, Any]) -> Case:
    """The same product on the user's data: x and y drawn in NumPy first and handed to
    dask with `da.from_array`, so the graph carries them (kong uploads them)."""
    n, chunk = params["n"], params["chunk"]
    rng = np.random.default_rng(SEED)
    x_np, y_np = rng.random((n, n)), rng.random((n, n))
    x, y = da.from_array(x_np, chunks=chunk), da.from_array(y_np, chunks=chunk)
    description = f"x @ y, {n}x{n} float64 NumPy arrays via da.from_array in {chunk}x{chunk} chunks"
    return product_case(x, y, x_np, y_np, description)


def product_case(x: da.Array, y: da.Array, x_np: Any, y_np: Any, description: str) -> Case:
    expected = x_np @ y_np

    def check(results: Any) -> str | None:
        return compare_arrays(results[0], expected, "x @ y", rtol=1e-10)

    return Case(
        collections=(x @ y,),
        check=check,
        numpy_fn=lambda: (x_np @ y_np,),
        description=description,
    )
