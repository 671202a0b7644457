"""Session data a worker process keeps between tasks, invocations and runs.

The user's data (`da.from_array` chunks, `dd.from_pandas` partitions) and persisted
values live in the session's scope of the store (`runtime.session_keys`) under keys that
never change meaning there: an uploaded chunk is named by its content token, a persisted
or scattered value by a name unique to its `keep`. So a worker process (a gateway's
worker process, a warm Lambda container) that has read one may use it again in any later
task, invocation or run, as distributed's workers keep the data they hold. Without it a
GEMM on the user's data reads each block of A and B once per output block, and every
repeat of a computation reads its input again (docs/benchmarks.md, "The user's own
data").

What it holds, field by field (`DataCache`):

==========  ==========================================================================
field       what it holds
==========  ==========================================================================
budget      bytes (`dask.sizeof` of the values) it may hold: `kong.data.worker_cache_
            bytes` as the run's client set it (`RunSettings.worker_cache_bytes`), at most
            `kong.data.worker_cache_fraction` of the process's memory limit (a Lambda
            function's memory size, the gateway's RLIMIT_DATA); 0 keeps nothing
entries     (scope, key) -> (value, its size), least recently used first
nbytes      the sum of the sizes held
==========  ==========================================================================

A value larger than the budget is not kept; adding one evicts the least recently used
until the rest fits. A session that closes drops its entries from its own process's cache
(`drop_scope`: the threads backend's workers are the client's threads); a worker in
another process does not learn of it, so there a closed session's entries are the first
pushed out, and the budget bounds them.

Values are shared among the tasks that read them, as dask's threaded scheduler shares a
`from_array` chunk among its tasks: a task must not change its inputs in place (dask's
own rule: its chunk functions copy before they assign). While a process shares session
values (its budget is above 0) every NumPy array it reads of them is made read-only, so a
task that breaks the rule fails ("assignment destination is read-only") instead of
changing what later tasks and runs read; a pandas object (a partition) is handed to each
task as a shallow copy (`handed_out`), which pandas' copy-on-write keeps apart from the
shared one. One cache per process (`process_cache`): it bounds that process's memory,
and every thread of it uses it (the threads backend's pool, the
processes backend's worker).
"""

from __future__ import annotations

import collections
import functools
import os
import resource
import sys
import threading
from typing import Any, Final

from dask.sizeof import sizeof

from ..serialize import is_ndarray

#: A lookup that found nothing (a cached value may be None).
MISSING: Final = object()


class DataCache:
    """Values of session keys, bounded by `budget` bytes, least recently used out first.
    Thread-safe."""

    def __init__(self, budget: int = 0) -> None:
        self.budget = budget
        self.entries: collections.OrderedDict[tuple[str, str], tuple[Any, int]] = (
            collections.OrderedDict()
        )
        self.nbytes = 0
        self._lock = threading.Lock()

    def get(self, scope: str, key: str) -> tuple[Any, int]:
        """(value, its size) of `key` in `scope`, marked as just used; (`MISSING`, 0)
        when not held."""
        with self._lock:
            entry = self.entries.get((scope, key))
            if entry is None:
                return MISSING, 0
            self.entries.move_to_end((scope, key))
            return entry

    def put(self, scope: str, key: str, value: Any) -> None:
        """Keep `value` of `key` in `scope` if it fits in the budget, evicting the least
        recently used entries to make room."""
        size = sizeof(value)
        with self._lock:
            if size > self.budget or (scope, key) in self.entries:
                return
            self._evict(self.budget - size)
            self.entries[(scope, key)] = (value, size)
            self.nbytes += size

    def scopes(self) -> set[str]:
        """The scopes (sessions) it holds values of."""
        with self._lock:
            return {scope for scope, _ in self.entries}

    def drop_scope(self, scope: str) -> None:
        """Forget every entry of `scope` (its session closed)."""
        with self._lock:
            for entry_key in [k for k in self.entries if k[0] == scope]:
                _, size = self.entries.pop(entry_key)
                self.nbytes -= size

    def resize(self, budget: int) -> None:
        """Take the budget of the run at hand (a client may set another), evicting down
        to it."""
        with self._lock:
            self.budget = budget
            self._evict(budget)

    def clear(self) -> None:
        """Drop everything (tests; a worker process that is told to forget)."""
        self.resize(0)

    def _evict(self, room: int) -> None:
        """Evict least recently used entries until at most `room` bytes are held."""
        while self.entries and self.nbytes > room:
            _, (_, size) = self.entries.popitem(last=False)
            self.nbytes -= size


def handed_out(value: Any) -> Any:
    """What a task gets of a session value while this process shares such values (its
    cache has a budget), whether or not this one is kept: a NumPy array read-only (a
    write fails at once), a pandas object as a shallow copy (with pandas' copy-on-write,
    a column assigned or a value set in it leaves the shared one as it was), anything
    else as it is. Every value a shared read hands a task passes here (kept or not), so
    the cache itself stores values as they are."""
    if is_ndarray(value):
        value.flags.writeable = False
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame | pandas.Series):
        return value.copy(deep=False)
    return value


#: Bytes per MB in AWS Lambda's memory size (MiB).
_MB = 1 << 20


@functools.cache
def memory_limit() -> int | None:
    """This process's memory limit in bytes, if it has one: a Lambda function's memory
    size (`AWS_LAMBDA_FUNCTION_MEMORY_SIZE`, MB), else the soft RLIMIT_DATA the gateway
    sets for a resource config (worker_main); None when neither is set."""
    lambda_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "")
    if lambda_mb.isdigit():
        return int(lambda_mb) * _MB
    soft, _ = resource.getrlimit(resource.RLIMIT_DATA)
    return None if soft == resource.RLIM_INFINITY else soft


def capped(budget: int, fraction: float) -> int:
    """`budget`, at most `fraction` of this process's memory limit (if it has one)."""
    limit = memory_limit()
    return budget if limit is None else min(budget, int(fraction * limit))


# The cache of this process (see `process_cache`).
_process_cache = DataCache()


def process_cache(budget: int, fraction: float) -> DataCache:
    """This process's cache, at the budget of the run asking (`RunSettings`), capped by
    this process's memory limit."""
    wanted = capped(budget, fraction)
    if _process_cache.budget != wanted:
        _process_cache.resize(wanted)
    return _process_cache


def drop_scope(scope: str) -> None:
    """Forget what this process keeps of `scope` (a session that closed)."""
    _process_cache.drop_scope(scope)


def scopes() -> set[str]:
    """The scopes (sessions) this process keeps data of."""
    return _process_cache.scopes()
