"""tree-reduction: `x.sum(split_every=2)`: a binary tree of tiny tasks over many chunks,
so scheduling and data movement, not arithmetic, decide the makespan."""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

from .base import Case, check_equal, user_data

NAME = "tree-reduction"
USER_DATA = True
SIZES = {
    "quick": {"n": 2**20, "chunks": 256},
    "core": {"n": 2**25, "chunks": 1024},
    "full": {"n": 2**27, "chunks": 1024},
}


def build(params: dict[str, Any]) -> Case:
    n, chunks = params["n"], params["chunks"]
    # arange, not random: the sum is known exactly (every partial sum is an integer below
    # 2**53, so float64 adds it without rounding), and NumPy can do the very same work.
    if user_data(params):
        x = da.from_array(np.arange(n, dtype=np.float64), chunks=n // chunks)
    else:
        x = da.arange(n, dtype=np.float64, chunks=n // chunks)
    expected = float(n * (n - 1) // 2)

    def check(results: Any) -> str | None:
        return check_equal(float(results[0]), expected, "sum")

    return Case(
        collections=(x.sum(split_every=2),),
        check=check,
        numpy_fn=lambda: (np.arange(n, dtype=np.float64).sum(),),
        description=(
            ("da.from_array(np.arange" if user_data(params) else "da.arange")
            + f"(2**{n.bit_length() - 1}, float64) in {chunks} chunks, "
            ".sum(split_every=2); numpy: np.arange(...).sum(), the same work in one call"
        ),
    )
