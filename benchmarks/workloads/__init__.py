"""The workloads, one module each, and how names on the command line map to them.

A module may define `variants(params)` (one workload per parameter value, e.g.
tree-sleep-0, tree-sleep-100) and `variant(name, params)` (parse a variant name that the
size does not list, e.g. tree-sleep-50); otherwise it is one workload named `NAME`.

A module with `USER_DATA = True` also runs on the user's own data: `NAME-data` builds the
same computation on inputs made with NumPy (pandas) in the client and handed to dask with
`da.from_array` (`dd.from_pandas`), so the data rides in the graph, as most users bring
it (`build` gets `input="data"` in its parameters). Naming a module runs both.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import (
    dataframe_groupby,
    gemm,
    svd_compressed,
    tree_reduction,
    tree_sleep,
    trivial,
    tsqr_svd,
)

MODULES: tuple[ModuleType, ...] = (
    gemm,
    tsqr_svd,
    svd_compressed,
    tree_reduction,
    dataframe_groupby,
    trivial,
    tree_sleep,
)
# Suffix of a workload's variant on the user's own data (`USER_DATA` modules).
DATA_SUFFIX = "-data"
SIZES = ("quick", "core", "full")


@dataclass(frozen=True)
class WorkloadSpec:
    """One workload to build: its name, its module and its parameters at the chosen size."""

    name: str
    module: ModuleType
    params: dict[str, Any]


def workloads_of(module: ModuleType, size: str) -> list[WorkloadSpec]:
    """The workloads `module` runs at `size` (none when it has no such size)."""
    if size not in module.SIZES:
        return []
    params = module.SIZES[size]
    if hasattr(module, "variants"):
        return [WorkloadSpec(n, module, p) for n, p in module.variants(params).items()]
    specs = [WorkloadSpec(module.NAME, module, params)]
    if getattr(module, "USER_DATA", False):
        specs.append(user_data_spec(module, params))
    return specs


def user_data_spec(module: ModuleType, params: dict[str, Any]) -> WorkloadSpec:
    """The module's workload on the user's own data (`NAME-data`)."""
    return WorkloadSpec(module.NAME + DATA_SUFFIX, module, {**params, "input": "data"})


def resolve(names: list[str] | None, size: str) -> list[WorkloadSpec]:
    """The workloads for `names` (a module name runs all its variants; None means every
    workload defined at `size`), in the order given. Unknown names raise ValueError."""
    if not names:
        return [spec for module in MODULES for spec in workloads_of(module, size)]
    chosen: dict[str, WorkloadSpec] = {}
    for name in names:  # "gemm,gemm-data" names gemm-data twice: it runs once
        chosen.update((spec.name, spec) for spec in _resolve_one(name, size))
    return list(chosen.values())


def _resolve_one(name: str, size: str) -> list[WorkloadSpec]:
    for module in MODULES:
        if name == module.NAME:
            specs = workloads_of(module, size)
            if not specs:
                raise ValueError(f"workload {name!r} has no size {size!r}: it has {_sizes(module)}")
            return specs
        if name == module.NAME + DATA_SUFFIX and getattr(module, "USER_DATA", False):
            if size not in module.SIZES:
                raise ValueError(f"workload {name!r} has no size {size!r}: it has {_sizes(module)}")
            return [user_data_spec(module, module.SIZES[size])]
        if hasattr(module, "variant") and size in module.SIZES:
            params = module.variant(name, module.SIZES[size])
            if params is not None:
                return [WorkloadSpec(name, module, params)]
    known = ", ".join(module.NAME for module in MODULES)
    raise ValueError(
        f"unknown workload {name!r}; known: {known} (and tree-sleep-<ms>, <name>{DATA_SUFFIX})"
    )


def _sizes(module: ModuleType) -> str:
    return ", ".join(module.SIZES)
