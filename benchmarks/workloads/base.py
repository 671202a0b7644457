"""What every workload module returns, and the correctness checks they share.

A workload module has `NAME`, `SIZES` (size name -> parameters) and `build(params) -> Case`;
some also `build_from_array(params) -> Case`, the same computation on NumPy arrays handed
to dask with `da.from_array` (the user's own data) instead of inputs drawn in the graph;
`build` goes there when `user_data(params)` (the suite's `NAME-data` workloads).
`build` makes the dask collections once and materializes whatever the check needs (the
inputs, a NumPy reference) with dask's threaded scheduler, outside any timing. The runner
then computes `Case.collections` under each scheduler, and `Case.check` decides whether the
result counts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Every random input is drawn from generators seeded with this, so every scheduler (and the
# NumPy reference, which materializes the same dask arrays) sees the same numbers.
SEED = 2019

Check = Callable[[Sequence[Any]], str | None]


def user_data(params: dict[str, Any]) -> bool:
    """Whether the workload runs on the user's own data (`NAME-data`: inputs made in the
    client with NumPy and handed to dask with `da.from_array`), not on inputs the graph
    draws itself."""
    return params.get("input") == "data"


@dataclass(frozen=True)
class Case:
    """One workload at one size, built and ready to compute.

    collections: what the runner passes to `dask.compute(*collections)`.
    check: the computed results -> None when correct, else the reason they are wrong.
    numpy_fn: the same computation in NumPy on materialized inputs, returning results in
        the same order (the `numpy` column), or None when there is no NumPy equivalent.
    description: one line for the README, the JSON and the report.
    """

    collections: tuple[Any, ...]
    check: Check
    numpy_fn: Callable[[], tuple[Any, ...]] | None
    description: str


def compare_arrays(got: Any, expected: np.ndarray, what: str, rtol: float) -> str | None:
    """None when `got` matches `expected` to `rtol` (relative to the largest entry)."""
    got = np.asarray(got)
    if got.shape != expected.shape:
        return f"{what}: shape {got.shape}, expected {expected.shape}"
    scale = float(np.max(np.abs(expected))) or 1.0
    error = float(np.max(np.abs(got - expected))) / scale
    if not np.isfinite(error) or error > rtol:
        return f"{what}: relative difference {error:.3g} > {rtol:g}"
    return None


def check_svd(u: Any, s: Any, v: Any, x: np.ndarray, tol: float) -> str | None:
    """None when u, s, v is a thin SVD of `x`, checked without caring about signs or
    rotations: u has orthonormal columns, v orthonormal rows, s is sorted and
    non-negative, and u * s @ v reconstructs x (relative Frobenius error below `tol`).
    Together these pin down the singular values.
    """
    u, s, v = np.asarray(u), np.asarray(s), np.asarray(v)
    k = s.shape[0]
    if u.shape != (x.shape[0], k) or v.shape != (k, x.shape[1]):
        return f"shapes u {u.shape}, s {s.shape}, v {v.shape} do not fit x {x.shape}"
    if np.any(s < 0) or np.any(np.diff(s) > tol * s[0]):
        return "singular values are not sorted and non-negative"
    identity = np.eye(k)
    for name, gram in (("u columns", u.T @ u), ("v rows", v @ v.T)):
        error = float(np.max(np.abs(gram - identity)))
        if error > tol:
            return f"{name} not orthonormal: max |gram - I| {error:.3g} > {tol:g}"
    error = float(np.linalg.norm((u * s) @ v - x) / np.linalg.norm(x))
    if error > tol:
        return f"u * s @ v does not reconstruct x: relative error {error:.3g} > {tol:g}"
    return None


def check_equal(got: Any, expected: Any, what: str) -> str | None:
    """None when `got == expected` exactly (integer-valued results)."""
    if got != expected:
        return f"{what}: got {got!r}, expected {expected!r}"
    return None


def summed_tree_case(root: Any, expected: int, description: str) -> Case:
    """A Case for a tree of delayed tasks whose root must equal `expected`."""

    def check(results: Any) -> str | None:
        return check_equal(results[0], expected, "sum")

    return Case(collections=(root,), check=check, numpy_fn=None, description=description)
