"""Plain data and handles to state: which task outputs may be computed more than once.

dask assumes tasks are pure, and dask-kong leans on that to save traffic: a cheap output is
published as a recipe and recomputed by its readers (`runtime.recompute`), a root may run
in every batched subtree that reads it (`planning.subtrees`), a worker may recompute a slow
parent (task-dup). But dask's own graphs hold tasks that are not pure: the disk shuffle of
bags and dataframes creates a `partd` store (a temporary directory) in one task, appends
to it in others and reads it back in a third group. Running the creating task twice makes
two directories and splits the records between them: a silently wrong result.

The rule, at the depth where it can be decided, the values themselves:

* An output is **plain data** when it is made of values that mean the same thing wherever
  they are unpickled: numbers, strings, bytes, NumPy and pandas objects, containers of
  those (`is_plain_data`). Anything else that holds an external resource (a file, a lock,
  a partd store, an object with a finaliser) or is used up as it is read (an iterator, a
  generator: a bag's lazy `map`) is a **handle to state**.
* A task may run more than once only when its output and every input it read are plain
  data. A task whose output is a handle, or that received a handle (and so may act on the
  state behind it, as partd's appends do), is **stateful**: it is never published as a
  recipe, its history marks it so that no planner duplicates it, and task-dup skips it.
* A handle lives as long as its run, in the process that made it (`RunContext.handles`),
  as a task's result lives in dask's schedulers until its last reader is done: its
  finaliser (partd removes its temporary directory) must not run while others still use
  the state. Every worker in that process uses this one object, as dask's threaded
  scheduler does; workers in other processes use what its pickle says, as dask's
  multiprocessing scheduler does.

Unknown user objects (records in a bag) count as plain data unless they carry a
finaliser: counting them as handles would stop no wrong result and cost a pickle each.
"""

from __future__ import annotations

import datetime
import decimal
import fractions
import io
import mmap
import socket
import threading
import types
from collections.abc import Iterator, Mapping
from typing import Any

#: Types whose values are data by construction (subclasses included).
_PLAIN_TYPES: tuple[type, ...] = (
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    range,
    slice,
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    fractions.Fraction,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
)

#: Types that hold a resource outside the value: never plain, whatever they contain.
_HANDLE_TYPES: tuple[type, ...] = (
    Iterator,  # consumed as it is read: a second reader sees nothing (bags' lazy maps)
    io.IOBase,
    types.GeneratorType,
    types.AsyncGeneratorType,
    types.CoroutineType,
    mmap.mmap,
    socket.socket,
    type(threading.Lock()),
    type(threading.RLock()),
    threading.Condition,
    threading.Event,
    threading.Semaphore,
    threading.Thread,
)

#: Top-level packages whose objects are data (arrays, frames, their scalars and dtypes).
_PLAIN_MODULES = frozenset({"numpy", "pandas", "pyarrow", "scipy", "sparse", "cupy", "xarray"})

#: Top-level packages whose objects are handles to state on a local disk or in memory.
_HANDLE_MODULES = frozenset({"partd", "locket", "tempfile", "sqlite3", "h5py", "zarr"})

_CONTAINERS = (list, tuple, set, frozenset)


def is_plain_data(value: Any, inspect_items: int = 64) -> bool:
    """Whether `value` is plain data (see the module docstring). Containers are looked
    into, up to `inspect_items` elements in all (`kong.values.inspect_items`): a bag
    partition of a million records is judged by its first elements, which keeps the check
    far cheaper than the pickle it may save."""
    budget = [max(inspect_items, 1)]
    return _plain(value, budget)


def _plain(value: Any, budget: list[int]) -> bool:
    """`is_plain_data` with a shared budget of elements still to inspect."""
    if isinstance(value, _PLAIN_TYPES):
        return True
    if isinstance(value, _HANDLE_TYPES):
        return False
    module = type(value).__module__.partition(".")[0]
    if module in _PLAIN_MODULES:
        return True
    if module in _HANDLE_MODULES:
        return False
    if isinstance(value, _CONTAINERS):
        return _plain_items(iter(value), budget)
    if isinstance(value, Mapping):
        return _plain_items(iter(value.values()), budget)
    # An object of a user class: data unless it cleans something up when it dies.
    return getattr(type(value), "__del__", None) is None


def _plain_items(items: Any, budget: list[int]) -> bool:
    """Whether the next elements of `items`, within the budget, are all plain data."""
    for item in items:
        if budget[0] <= 0:
            return True
        budget[0] -= 1
        if not _plain(item, budget):
            return False
    return True


def all_plain(values: Mapping[Any, Any], inspect_items: int = 64) -> bool:
    """Whether every value of `values` (a task's inputs) is plain data."""
    return all(is_plain_data(v, inspect_items) for v in values.values())
