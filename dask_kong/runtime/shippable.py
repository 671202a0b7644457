"""Graphs that cannot run where the workers are, refused by name before a run starts.

dask's graphs may share state through the caller's machine or the caller's memory; a
worker in another process, or on another machine, would act on its own copy and the
result would be silently wrong. dask's own multiprocessing scheduler gives those wrong
results; dask-kong refuses them with an error that says what to do instead:

* a disk shuffle (`partd`: a temporary directory that one task makes and others append
  to) where workers do not share a machine (AWS Lambda);
* `da.store` into a NumPy array of the caller's process, on any backend whose workers run
  in other processes: each worker would write into its own copy of the array.
"""

from __future__ import annotations

from typing import Any

from dask._task_spec import Task

from ..dag import DAG
from ..dag.walk import Scope, argument_value, inner_tasks, plain_function
from ..errors import KongError

#: dask.array's functions that write a chunk into a `da.store` target (`out`, the second
#: argument) in place.
_STORE_FUNCTIONS = frozenset({"load_store_chunk", "store_chunk"})


def check_shippable(dag: DAG, shares_machine: bool) -> None:
    """Raise `KongError` naming the first task that cannot run in a worker process
    (`shares_machine`: the workers are processes of the caller's machine). A graph calls
    few distinct functions: each is judged once (`_suspect`), then a task costs a lookup."""
    verdicts: dict[int, bool] = {}
    for key, node in zip(dag.keys, dag.nodes, strict=True):
        for task, scope in inner_tasks(node):
            func = task.func
            suspect = verdicts.get(id(func))
            if suspect is None:
                suspect = verdicts[id(func)] = _suspect(task)
            if suspect:
                _check_task(key, task, scope, dag, shares_machine)


def _suspect(task: Task) -> bool:
    """Whether tasks calling this task's function need `_check_task`'s closer look."""
    return uses_local_disk(task) or _is_store(plain_function(task))


def _check_task(key: Any, task: Task, scope: Scope | None, dag: DAG, shares_machine: bool) -> None:
    """Raise for a disk shuffle off one machine, or a store into the caller's memory."""
    if not shares_machine and uses_local_disk(task):
        raise KongError(
            f"task {key!r} belongs to dask's disk shuffle, which needs every worker "
            "on one machine; on AWS Lambda use the task-based shuffle: "
            "dask.config.set({'dataframe.shuffle.method': 'tasks'}), or "
            "bag.groupby(..., shuffle='tasks')"
        )
    target = store_target(task, scope, dag.data)
    if target is not None and _in_caller_memory(target):
        raise KongError(
            f"task {key!r} stores into a {type(target).__name__} of the calling "
            "process (da.store): workers run in other processes and would write "
            "into their own copies of it. Store into a target every worker "
            "reaches (zarr, HDF5 or TileDB on a shared file system), or compute "
            "the array and assign it (target[...] = x.compute()), or use "
            "Kong(backend='threads')"
        )


def uses_local_disk(task: Task) -> bool:
    """Whether a task calls into `partd` or dask's `maybe_buffered_partd`: state on the
    local disk."""
    func = plain_function(task)
    owner = func if isinstance(func, type) else type(func)
    if owner.__name__ == "maybe_buffered_partd" or owner.__module__.startswith("partd"):
        return True
    return (getattr(func, "__module__", None) or "").startswith("partd")


def store_target(task: Task, scope: Scope | None, data: Any) -> Any:
    """The array a `da.store` task writes into, or None for any other task."""
    if not _is_store(plain_function(task)):
        return None
    out = task.kwargs.get("out", task.args[1] if len(task.args) > 1 else None)
    return argument_value(out, scope, data)


def _is_store(func: Any) -> bool:
    """Whether `func` is one of dask.array's chunk-storing functions."""
    return getattr(func, "__name__", "") in _STORE_FUNCTIONS and (
        getattr(func, "__module__", None) or ""
    ).startswith("dask.array")


def _in_caller_memory(target: Any) -> bool:
    """A NumPy array (a memmap too: pickled, it is a copy of the file's bytes)."""
    return type(target).__module__.partition(".")[0] == "numpy" and hasattr(target, "__array__")
