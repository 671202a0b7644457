"""tsqr-svd: `da.linalg.svd` of a tall-skinny matrix (TSQR: a QR per block, a QR of the
stacked R factors, then back down); checked by reconstruction, not by signs."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .base import SEED, Case, check_svd, user_data

NAME = "tsqr-svd"
USER_DATA = True  # also `tsqr-svd-data`: build_from_array
SIZES = {
    "quick": {"rows": 50_000, "cols": 50, "chunk_rows": 2_500},
    "core": {"rows": 200_000, "cols": 100, "chunk_rows": 10_000},
    "full": {"rows": 1_000_000, "cols": 100, "chunk_rows": 10_000},
}


def build(params: dict[str, Any]) -> Case:
    if user_data(params):
        return build_from_array(params)
    rows, cols, chunk_rows = params["rows"], params["cols"], params["chunk_rows"]
    x = da.random.default_rng(SEED).random((rows, cols), chunks=(chunk_rows, cols))
    x_np = x.compute(scheduler="threads")
    description = (
        f"da.linalg.svd of {rows:,}x{cols} float64 in {chunk_rows:,}x{cols} chunks "
        "(TSQR); numpy: np.linalg.svd(full_matrices=False) of the materialized x"
    )
    return svd_case(x, x_np, description)


def build_from_array(params: dict[str, Any]) -> Case:
    """The same SVD of the user's data: x drawn in NumPy first and handed to dask with
    `da.from_array`, so the graph carries it (kong uploads it)."""
    rows, cols, chunk_rows = params["rows"], params["cols"], params["chunk_rows"]
    x_np = np.random.default_rng(SEED).random((rows, cols))
    x = da.from_array(x_np, chunks=(chunk_rows, cols))
    description = (
        f"da.linalg.svd of a {rows:,}x{cols} float64 NumPy array via da.from_array in "
        f"{chunk_rows:,}x{cols} chunks (TSQR)"
    )
    return svd_case(x, x_np, description)


def svd_case(x: da.Array, x_np: np.ndarray, description: str) -> Case:
    u, s, v = da.linalg.svd(x)

    def check(results: Any) -> str | None:
        u, s, v = results
        return check_svd(u, s, v, x_np, tol=1e-8)

    return Case(
        collections=(u, s, v),
        check=check,
        numpy_fn=lambda: tuple(np.linalg.svd(x_np, full_matrices=False)),
        description=description,
    )
