"""The right shuffle for the backend: dask's disk shuffle becomes the task shuffle where
workers share no disk.

Without a distributed client, dask lowers a dataframe shuffle (merge, groupby with
`split_out`, `shuffle`, `set_index`) to its disk shuffle: a `partd` directory on the local
disk that every task appends to. Worker processes on one machine share that disk
(`dask_kong.values` keeps it correct there); AWS Lambda functions do not. By the time a
scheduler sees the graph, dask has already lowered it, so where workers share no disk the
lowered expression is rewritten: every `DiskShuffle` becomes a `TaskShuffle` of the same
operands, as distributed would have chosen. Bags build their shuffle as a graph, which
cannot be rewritten: they are refused by name (`runtime.shippable.check_shippable`).
"""

from __future__ import annotations

import warnings
from typing import Any

import dask.config
from dask.core import flatten


def without_disk_shuffle(dsk: Any, keys: list[Any]) -> tuple[Any, dict[Any, Any]]:
    """`dsk` with every dataframe disk shuffle replaced by a task shuffle, and a map from
    the rewritten graph's keys to `keys` (empty when nothing was rewritten). Only an
    expression whose keys are `keys` can be rewritten: the result keys are renamed."""
    disk, tasks = _shuffle_classes()
    find = getattr(dsk, "find_operations", None)
    if disk is None or tasks is None or find is None:
        return dsk, {}
    found = list(find(disk))
    if not found or list(flatten(dsk.__dask_keys__())) != keys:
        return dsk, {}
    if dask.config.get("dataframe.shuffle.method", None) == "disk":
        warnings.warn(
            "dataframe.shuffle.method='disk' needs workers on one machine: dask-kong runs "
            "the task-based shuffle on this backend instead",
            UserWarning,
            stacklevel=3,
        )
    rewritten = dsk
    for node in found:
        rewritten = rewritten.substitute(node, tasks(*node.operands))
    new_keys = list(flatten(rewritten.__dask_keys__()))
    return rewritten, dict(zip(new_keys, keys, strict=True))


def _shuffle_classes() -> tuple[type | None, type | None]:
    """dask's DiskShuffle and TaskShuffle expressions (None without dask.dataframe)."""
    try:
        from dask.dataframe.dask_expr._shuffle import DiskShuffle, TaskShuffle
    except ImportError:
        return None, None
    return DiskShuffle, TaskShuffle
