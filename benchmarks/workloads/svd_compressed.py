"""svd-compressed: `da.linalg.svd_compressed` (randomized SVD) of a square matrix of exact
rank k, built in the graph as A @ B, so the rank-k answer is exact and checkable."""

from __future__ import annotations

from typing import Any

import dask
import dask.array as da
import numpy as np

from .base import SEED, Case, check_svd, user_data

NAME = "svd-compressed"
USER_DATA = True  # also `svd-compressed-data`: build_from_array
SIZES = {
    "quick": {"n": 1024, "chunk": 256, "rank": 10},
    "core": {"n": 4096, "chunk": 1024, "rank": 20},
    "full": {"n": 16384, "chunk": 2048, "rank": 100},
}
# da.linalg.svd_compressed's defaults, repeated for the NumPy version of the algorithm.
OVERSAMPLES = 10


def build(params: dict[str, Any]) -> Case:
    if user_data(params):
        return build_from_array(params)
    n, chunk, rank = params["n"], params["chunk"], params["rank"]
    rng = da.random.default_rng(SEED)
    a = rng.random((n, rank), chunks=(chunk, rank))
    b = rng.random((rank, n), chunks=(rank, chunk))
    a_np, b_np = dask.compute(a, b, scheduler="threads")
    description = (
        f"da.linalg.svd_compressed(A @ B, k={rank}) of a {n}x{n} rank-{rank} matrix "
        f"in {chunk}x{chunk} chunks (A, B drawn in the graph); numpy: the same "
        "randomized algorithm (one pass, 10 oversamples) on the materialized A, B"
    )
    return compressed_case(a, b, a_np, b_np, rank, description)


def build_from_array(params: dict[str, Any]) -> Case:
    """The same SVD of the user's data: A and B drawn in NumPy first and handed to dask
    with `da.from_array`, so the graph carries them (kong uploads them)."""
    n, chunk, rank = params["n"], params["chunk"], params["rank"]
    rng = np.random.default_rng(SEED)
    a_np, b_np = rng.random((n, rank)), rng.random((rank, n))
    a = da.from_array(a_np, chunks=(chunk, rank))
    b = da.from_array(b_np, chunks=(rank, chunk))
    description = (
        f"da.linalg.svd_compressed(A @ B, k={rank}) of a {n}x{n} rank-{rank} matrix "
        f"in {chunk}x{chunk} chunks, A and B NumPy arrays via da.from_array"
    )
    return compressed_case(a, b, a_np, b_np, rank, description)


def compressed_case(
    a: da.Array, b: da.Array, a_np: np.ndarray, b_np: np.ndarray, rank: int, description: str
) -> Case:
    u, s, v = da.linalg.svd_compressed(a @ b, rank, seed=SEED)
    x_np = a_np @ b_np

    def check(results: Any) -> str | None:
        u, s, v = results
        return check_svd(u, s, v, x_np, tol=1e-7)

    return Case(
        collections=(u, s, v),
        check=check,
        numpy_fn=lambda: randomized_svd(a_np @ b_np, rank),
        description=description,
    )


def randomized_svd(x: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The algorithm of `da.linalg.svd_compressed` (no power iterations), in NumPy."""
    omega = np.random.default_rng(SEED).standard_normal((x.shape[1], rank + OVERSAMPLES))
    q, _ = np.linalg.qr(x @ omega)
    u, s, v = np.linalg.svd(q.T @ x, full_matrices=False)
    return (q @ u)[:, :rank], s[:rank], v[:rank]
