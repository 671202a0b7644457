"""Values a session keeps in the store beyond one run: its session-lifetime keys.

A run's keys live under the run's prefix and `delete_run` removes them when it ends. Some
values must outlive a run: the data embedded in graphs (`da.from_array` chunks), uploaded
once per session by content token so that computing the same array again uploads nothing
(`runtime.upload`), and results a user keeps in the store (persist). They live in the
session's own scope: a pseudo-run `kong:{<scope>}:...`, opened when first needed (its live
marker lets the stores accept commits to it) and deleted whole when the session closes, so
a run's cleanup never touches them and a closed session leaves no key.

`SessionKeys` is the one owner of that scope. Each key is an `Entry`:

=========  ==========================================================================
field      what it holds
=========  ==========================================================================
nbytes     its size (`dask.sizeof` of the value: what the budget counts)
pins       how many holders need it now: runs reading it, persisted collections
           referring to it; a pinned key is never evicted
cached     True for a cache entry (embedded data: evicted least recently used first
           once unpinned and the cached bytes pass `kong.data.session_bytes`); False for
           a kept key (persisted results: dropped when its last pin goes)
=========  ==========================================================================

How to use it (the client's upload and persist, and any later holder of store data):
`keep(run_id, keys)` moves a run's values into the scope and returns a `StoredValue`
per key, whose garbage collection releases it (`release_collected` then unpins it);
`keep_values(values)` does the same for values the client has (scatter), `read_many(keys)`
reads kept values in one round-trip, `pin_present(keys)` pins the keys the store holds
and returns those it must be given, `add(values, cached=...)` writes and records them
(pinned too), `pin(keys)` adds a hold and `unpin(keys)` releases one (the last may evict
or drop), `close()` deletes the scope.
All methods are thread-safe.
"""

from __future__ import annotations

import collections
import functools
import itertools
import logging
import threading
import uuid
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dask.sizeof import sizeof

from .. import config
from ..dag.model import StoredValue
from ..store.base import Store
from . import data_cache

logger = logging.getLogger("dask_kong.client")


@dataclass
class Entry:
    """One session-lifetime key (see the module docstring's table)."""

    nbytes: int
    pins: int = 0
    cached: bool = True


class SessionKeys:
    """The session's scope in `store` and the keys it holds there."""

    def __init__(self, store: Store, budget_bytes: int | None = None) -> None:
        self.store = store
        #: The pseudo-run id every session-lifetime key lives under.
        self.scope = f"session-{uuid.uuid4().hex}"
        #: Cached bytes above which unpinned cache entries are evicted (LRU first).
        self.budget_bytes = int(config.get("data.session_bytes", budget_bytes))
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._closed = False
        # Whether the scope was ever opened: a session that never kept anything in the
        # store has nothing to delete at close (deleting scans the store's keys).
        self._opened = False
        # Keys whose `StoredValue` was garbage collected, unpinned at the next call: a
        # finalizer may run inside any allocation, even one under `_lock`, so it only
        # appends here (atomic) and takes no lock.
        self._released: collections.deque[str] = collections.deque()
        self._kept = itertools.count()

    def open(self) -> None:
        """Mark the scope live (again: the marker carries the store's key TTL, so a long
        session refreshes it before each use)."""
        self._opened = True
        self.store.open_run(self.scope)

    def pin_present(self, keys: Sequence[str]) -> list[str]:
        """Pin those of `keys` the store holds (they become the most recently used) and
        return the others: never written by this session, or gone (expired, a restarted
        store; checked in one round-trip). Pinned first, so no eviction slips between
        the check and the use."""
        self.release_collected()
        with self._lock:
            known = [k for k in keys if k in self._entries]
            for key in known:
                self._entries[key].pins += 1
                self._entries.move_to_end(key)
        sizes = self.store.sizes(self.scope, known) if known else []
        gone = {k for k, n in zip(known, sizes, strict=True) if n == 0}
        if gone:
            with self._lock:
                for key in gone:
                    self._entries.pop(key, None)
        return [k for k in keys if k not in known or k in gone]

    def add(self, values: Mapping[str, Any], *, cached: bool = True) -> int:
        """Write `values` into the scope (write-once: a key already there keeps its
        value) and record them, pinned once each; the bytes the store wrote."""
        if not values:
            return 0
        written = self.store.commit(self.scope, values).bytes_written
        with self._lock:
            for key, value in values.items():
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = Entry(nbytes=sizeof(value), cached=cached)
                entry.pins += 1
                self._entries.move_to_end(key)
        return written

    def keep(self, run_id: str, run_keys: Sequence[str]) -> list[StoredValue]:
        """Move values of run `run_id` into the scope (`Store.move`), each kept while the
        `StoredValue` returned for it lives (or until the session closes)."""
        self.release_collected()
        self.open()
        new_keys = [f"kept:{next(self._kept)}:{key}" for key in run_keys]
        sizes = self.store.sizes(run_id, run_keys)
        self.store.move(run_id, run_keys, self.scope, new_keys)
        with self._lock:
            for key, nbytes in zip(new_keys, sizes, strict=True):
                self._entries[key] = Entry(nbytes=nbytes, pins=1, cached=False)
        return [self._reference(key) for key in new_keys]

    def keep_values(self, values: Mapping[str, Any]) -> list[StoredValue]:
        """Write `values` (the client's own: a Client's `scatter`) into the scope, each
        kept while the `StoredValue` returned for it lives, as `keep` does for a run's."""
        self.release_collected()
        self.open()
        names = {f"kept:{next(self._kept)}:{name}": value for name, value in values.items()}
        self.add(names, cached=False)
        return [self._reference(key) for key in names]

    def read_many(self, keys: Sequence[str]) -> list[Any]:
        """The values of kept keys, in one round-trip (a Client's `gather`)."""
        if self._closed:
            raise RuntimeError("the session holding these values is closed: they are gone")
        return self.store.get_many(self.scope, keys)[0]

    def _reference(self, key: str) -> StoredValue:
        """A `StoredValue` for `key` whose collection by the garbage collector releases
        the pin `keep` took for it."""
        ref = StoredValue(self.scope, key, functools.partial(self._read, key))
        weakref.finalize(ref, self._released.append, key)
        return ref

    def _read(self, key: str) -> Any:
        """The value of a kept key (`StoredValue.result`)."""
        if self._closed:
            raise RuntimeError(f"the session that persisted {key!r} is closed: its value is gone")
        return self.read_many([key])[0]

    def release_collected(self) -> None:
        """Unpin the keys of `StoredValue`s garbage collected since the last call."""
        released = []
        while self._released:
            released.append(self._released.popleft())
        if released:
            self.unpin(released)

    def pin(self, keys: Iterable[str]) -> None:
        """Hold `keys` (known ones) in the store until as many `unpin`s."""
        with self._lock:
            for key in keys:
                entry = self._entries.get(key)
                if entry is not None:
                    entry.pins += 1

    def unpin(self, keys: Iterable[str]) -> None:
        """Release one hold of each key; a kept key with no pin left is dropped, and
        cache entries beyond the budget are evicted."""
        with self._lock:
            dropped = []
            for key in keys:
                entry = self._entries.get(key)
                if entry is None or entry.pins == 0:
                    continue
                entry.pins -= 1
                if entry.pins == 0 and not entry.cached:
                    dropped.append(key)
                    del self._entries[key]
            dropped += self._over_budget()
        self._drop(dropped)

    def _over_budget(self) -> list[str]:
        """Unpinned cache entries to evict, least recently used first, until the cached
        bytes fit the budget (called with the lock held)."""
        cached = sum(e.nbytes for e in self._entries.values() if e.cached)
        victims = []
        for key, entry in self._entries.items():
            if cached <= self.budget_bytes:
                break
            if entry.cached and entry.pins == 0:
                victims.append(key)
                cached -= entry.nbytes
        for key in victims:
            del self._entries[key]
        return victims

    def _drop(self, keys: list[str]) -> None:
        if not keys or self._closed:
            return
        try:
            self.store.drop(self.scope, keys)
        except Exception as exc:  # they carry the store's key TTL: they expire anyway
            logger.warning("could not drop %d session keys: %s", len(keys), exc)

    @property
    def cached_bytes(self) -> int:
        """Bytes of cache entries (embedded data) the session holds in the store."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values() if e.cached)

    def holds(self, key: str) -> bool:
        """Whether the session recorded `key` (without asking the store)."""
        with self._lock:
            return key in self._entries

    def close(self) -> None:
        """Delete the scope and everything in it; idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._entries.clear()
        self._released.clear()
        data_cache.drop_scope(self.scope)  # what this process's workers kept of it
        if not self._opened:
            return
        try:
            self.store.delete_run(self.scope)
        except Exception as exc:
            logger.warning("could not delete the session's keys %s: %s", self.scope, exc)
