"""Session data a worker process keeps between tasks, invocations and runs.

The user's data (`da.from_array` chunks, `dd.from_pandas` partitions) and persisted
values live in the session's scope of the store (`runtime.session_keys`) under keys that
never change meaning there: an uploaded chunk is named by its content token, a persisted
or scattered value by a name unique to its `keep`. So a worker process (a gateway's
worker process, a warm Lambda container) that has read one may use it again in any later
task, invocation or run, as distributed's workers keep the data they hold. Without it a
GEMM on the user's data reads each block of A and B once per output block (1.2 GB for the
core size's 268 MB of input, `benchmarks.user_data_traffic`), and every repeat of a
computation reads its input again.

What it holds, field by field (`DataCache`):

==========  ==========================================================================
field       what it holds
==========  ==========================================================================
budget      bytes (`dask.sizeof` of the values) it may hold: `kong.data.worker_cache_
            bytes` as the run's client set it (`RunSettings.worker_cache_bytes`); 0 keeps
            nothing
entries     (scope, key) -> (value, its size), least recently used first
nbytes      the sum of the sizes held
==========  ==========================================================================

A value larger than the budget is not kept; adding one evicts the least recently used
until the rest fits. Entries of a closed session are not dropped when it closes (a worker
does not learn of it): they are the first pushed out, and the budget bounds them.

Values are shared among the tasks that read them, as dask's threaded scheduler shares a
`from_array` chunk (a view of the user's array) among its tasks: a task must not change
its inputs in place (dask's own rule). One cache per process (`process_cache`), used by
every thread of it (the threads backend's pool, the processes backend's worker).
"""

from __future__ import annotations

import collections
import threading
from typing import Any, Final

from dask.sizeof import sizeof

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


_process_cache = DataCache()


def process_cache(budget: int) -> DataCache:
    """This process's cache, at the budget of the run asking (`RunSettings`)."""
    if _process_cache.budget != budget:
        _process_cache.resize(budget)
    return _process_cache
