"""`Future`: a value a `Client` is computing or holds, and the waits over many of them.

Every Future of one key shares one `FutureState`, as in distributed: two `submit` calls
of the same pure function and arguments give two Futures of one computation. The state
says where the key is (pending, finished, error, cancelled), holds the value (or, with a
store outside this process, where it is in the session's store: `StoredPart`) or the
exception once known, and calls the done-callbacks exactly once, when the key leaves
pending. The client counts the Futures alive per key and releases the value when the
last one is garbage collected or released (`Client.release_key`), or it is cancelled.

Waiting never blocks forever by accident: a pending key always ends, because the run
computing it ends (finished, failed, or stalled: `kong.run.stall_timeout_s`); a caller
may still pass its own `timeout`.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

from ..dag.model import StoredValue
from ..errors import KongError

if TYPE_CHECKING:
    from .client import Client

logger = logging.getLogger("dask_kong.futures")

FIRST_COMPLETED = "FIRST_COMPLETED"
ALL_COMPLETED = "ALL_COMPLETED"
# Longest single wait of `as_completed` and `wait` between looks at their deadline.
_POLL_S = 0.25


class FutureCancelledError(CancelledError):
    """The key was cancelled (`Future.cancel`, `Client.cancel`) before it finished."""


@dataclass(frozen=True)
class StoredPart:
    """Where a finished key's value is in the session's store: the kept output `ref` of
    the task that computed it, whole (`index` None) or item `index` of it (calls packed
    several to a task return a list). The store key lives while `ref` does."""

    ref: StoredValue
    index: int | None = None

    def pick(self, whole: Any) -> Any:
        """This key's value out of the value of `ref`."""
        return whole if self.index is None else whole[self.index]


class FutureState:
    """Where one key is, shared by every `Future` of the key.

    status: "pending" until the run computing the key reports it, then "finished"
        (value or stored set), "error" (exception and traceback set) or "cancelled"
        (a finished key cancelled lets its value go).
    value: the key's value once finished, when the client holds it.
    stored: where the value is in the session's store, when it stayed there (the
        client reads it at `result()` and `gather`).
    exception / traceback: the task's exception and the worker's traceback text;
    error_traceback: the exception's own traceback when it was set.
    callbacks: called once each with the Future they were added through, on leaving
        pending; added later, called at once.
    """

    def __init__(self) -> None:
        self.status = "pending"
        self.value: Any = None
        self.stored: StoredPart | None = None
        self.exception: BaseException | None = None
        self.traceback = ""
        #: The exception's own traceback when it was set: each `result()` raises it
        #: from there again, so frames of earlier raises (holding Futures) are dropped.
        self.error_traceback: TracebackType | None = None
        #: Set once the key leaves pending; made by the first waiter (`wait_done`): most
        #: keys of a large map are settled before anyone waits on them.
        self._event: threading.Event | None = None
        self.callbacks: list[tuple[Callable[[Future], Any], Future]] = []
        self._lock = threading.Lock()
        #: Whether the key left pending and its callbacks ran.
        self._done = False
        #: The thread that settled the key (its callbacks run there): it never waits.
        self._settler: int | None = None

    def finish(self, value: Any) -> None:
        self._settle("finished", value=value)

    def fail(self, exception: BaseException, traceback: str = "") -> None:
        self._settle(
            "error",
            exception=exception,
            traceback=traceback,
            error_traceback=exception.__traceback__,
        )

    def finish_stored(self, part: StoredPart) -> None:
        self._settle("finished", stored=part)

    def cancel(self) -> bool:
        """Cancel the key: a pending one does not run (or its late result is dropped), a
        settled one lets its value go, as distributed's `cancel` releases it; True once
        the key is cancelled."""
        with self._lock:
            if self.status not in ("pending", "cancelled"):
                self.status = "cancelled"
                self.value = self.stored = None
                self.exception, self.traceback = FutureCancelledError(), ""
                self.error_traceback = None
                return True
        self._settle("cancelled", exception=FutureCancelledError())
        return self.status == "cancelled"

    def outcome(self) -> tuple[str, Any, StoredPart | None]:
        """(status, value, stored) read together: a cancel in between cannot pair a
        "finished" status with a value already let go."""
        with self._lock:
            return self.status, self.value, self.stored

    def _settle(self, status: str, **fields: Any) -> None:
        with self._lock:
            if self.status != "pending":
                return  # first outcome wins: a late result of a cancelled key is dropped
            for name, value in fields.items():
                setattr(self, name, value)
            self.status = status
            self._settler = threading.get_ident()
            callbacks, self.callbacks = self.callbacks, []
        # Callbacks before waking the waiters: once `result()` returned, the callbacks
        # added before it have run (a callback's own `result()` sees the status).
        for callback, future in callbacks:
            run_callback(callback, future)
        with self._lock:
            self._done = True
            event = self._event
        if event is not None:
            event.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the key left pending and its callbacks ran; whether it did within
        `timeout` seconds (None: no bound)."""
        with self._lock:
            if self._done or self._settler == threading.get_ident():
                return True  # done, or asked by a callback running in the settling thread
            if self._event is None:
                self._event = threading.Event()
            event = self._event
        return event.wait(timeout)

    def add_callback(self, callback: Callable[[Future], Any], future: Future) -> None:
        with self._lock:
            if self.status == "pending":
                self.callbacks.append((callback, future))
                return
        run_callback(callback, future)


def run_callback(callback: Callable[[Future], Any], future: Future) -> None:
    """A done-callback's error is logged, never raised into the thread that settled the
    key (the run's thread): one bad callback must not fail other keys."""
    try:
        callback(future)
    except Exception:
        logger.exception("done-callback %r of %r failed", callback, future.key)


class Future:
    """A remotely computed value, as in `distributed.Future`: `result()`, `done()`,
    `cancel()`, `add_done_callback()`, `exception()`, `key`. Pass it to a later `submit`
    (or inside a list or dict there) and the task gets its value."""

    def __init__(self, key: Any, client: Client, state: FutureState) -> None:
        self.key = key
        self.client = client
        self._state = state
        self._released = False
        client.retain_key(key)

    @property
    def status(self) -> str:
        return self._state.status

    def done(self) -> bool:
        """Whether the key finished, failed or was cancelled."""
        return self._state.status != "pending"

    def cancelled(self) -> bool:
        return self._state.status == "cancelled"

    def result(self, timeout: float | None = None) -> Any:
        """The value; raises the task's exception (with the worker's traceback as a
        note), `FutureCancelledError`, or `TimeoutError` after `timeout` seconds."""
        self._wait(timeout)
        state = self._state
        status, value, stored = state.outcome()
        if status == "finished":
            return value if stored is None else self.client.read_stored([stored])[0]
        error = state.exception
        assert error is not None
        try:
            raise error.with_traceback(state.error_traceback)
        finally:
            # The traceback keeps this frame: without these, the state's exception
            # would hold this Future, and the key would never be released.
            self = None  # type: ignore[assignment]
            state = error = None  # type: ignore[assignment]

    def exception(self, timeout: float | None = None) -> BaseException | None:
        """The task's exception, None when it finished."""
        self._wait(timeout)
        return self._state.exception if self._state.status != "finished" else None

    def traceback(self, timeout: float | None = None) -> str:
        """The worker's traceback text of a failed task ("" otherwise)."""
        self._wait(timeout)
        return self._state.traceback

    def cancel(self) -> bool:
        """Cancel the key: a task not started yet does not run; a running one's value
        is dropped when it arrives. Whether the key is cancelled now."""
        return self.client.cancel([self]) > 0

    def add_done_callback(self, fn: Callable[[Future], Any]) -> None:
        """Call `fn(future)` once the key is done (at once if it is)."""
        self._state.add_callback(fn, self)

    def release(self) -> None:
        """Give up this Future's hold on the value: the last hold frees it, and the key
        is then cancelled (this Future no longer gives its result, as in distributed)."""
        self._release(let_go=True)

    def _release(self, let_go: bool) -> None:
        if not self._released:
            self._released = True
            self.client.release_key(self.key, let_go)

    def _wait(self, timeout: float | None) -> None:
        if not self._state.wait_done(timeout):
            raise TimeoutError(f"future {self.key!r} not done after {timeout} s")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit the client may be gone
            # No cancel here: the state dies with its last Future, and a finalizer must
            # not take the state's lock (it may run while this thread holds it).
            self._release(let_go=False)

    def __repr__(self) -> str:
        return f"<Future: {self.status}, key: {self.key!r}>"

    def __dask_tokenize__(self) -> Any:
        """A Future tokenizes as its key: calls taking it are named by what it is."""
        return ("dask_kong.Future", self.key)

    def __await__(self) -> Any:
        raise KongError("dask_kong futures are synchronous: call .result()")


class DoneAndNotDoneFutures(NamedTuple):
    done: set[Future]
    not_done: set[Future]


def wait(
    fs: Future | Iterable[Future],
    timeout: float | None = None,
    return_when: str = ALL_COMPLETED,
) -> DoneAndNotDoneFutures:
    """Wait until all (or, with FIRST_COMPLETED, any) of `fs` are done; `TimeoutError`
    after `timeout` seconds, as distributed's `wait`."""
    if return_when not in (ALL_COMPLETED, FIRST_COMPLETED):
        raise ValueError(f"return_when must be {ALL_COMPLETED} or {FIRST_COMPLETED}")
    futures = {fs} if isinstance(fs, Future) else set(fs)
    deadline = None if timeout is None else time.monotonic() + timeout
    changed = threading.Event()
    for f in futures:
        f.add_done_callback(lambda _f: changed.set())
    while not _satisfied(futures, return_when):
        left = _POLL_S if deadline is None else min(_POLL_S, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError(f"{len(futures)} futures not done after {timeout} s")
        changed.wait(left)
        changed.clear()
    done = {f for f in futures if f.done()}
    return DoneAndNotDoneFutures(done, futures - done)


def _satisfied(futures: set[Future], return_when: str) -> bool:
    if not futures:
        return True
    if return_when == FIRST_COMPLETED:
        return any(f.done() for f in futures)
    return all(f.done() for f in futures)


class as_completed:  # distributed's name
    """Iterate over futures in the order they finish, as distributed's `as_completed`.

    `with_results=True` yields (future, result) pairs (raising a failed task's exception
    unless `raise_errors=False`, which yields the exception in its place); `add` and
    `update` bring more futures in while iterating; `timeout` bounds the whole
    iteration (`TimeoutError`)."""

    def __init__(
        self,
        futures: Iterable[Future] = (),
        with_results: bool = False,
        raise_errors: bool = True,
        timeout: float | None = None,
    ) -> None:
        self.with_results = with_results
        self.raise_errors = raise_errors
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self._done: queue.SimpleQueue[Future] = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self.update(futures)

    def add(self, future: Future) -> None:
        with self._lock:
            self._pending += 1
        future.add_done_callback(self._done.put)

    def update(self, futures: Iterable[Future]) -> None:
        for future in futures:
            self.add(future)

    def count(self) -> int:
        """Futures not yet yielded."""
        with self._lock:
            return self._pending

    def is_empty(self) -> bool:
        return self.count() == 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.is_empty():
            raise StopIteration
        future = self._next_done()
        with self._lock:
            self._pending -= 1
        if not self.with_results:
            return future
        error = future.exception()
        if error is None:
            return future, future.result()
        if not self.raise_errors:
            return future, error
        try:
            raise error
        finally:
            future = error = None  # type: ignore[assignment]  # see Future.result

    def next_batch(self, block: bool = True) -> list[Any]:
        """Every future done by now (at least one when `block`)."""
        batch = [next(self)] if block and not self.is_empty() else []
        while not self._done.empty():
            batch.append(next(self))
        return batch

    def batches(self) -> Iterator[list[Any]]:
        while not self.is_empty():
            yield self.next_batch()

    def _next_done(self) -> Future:
        while True:
            left = _POLL_S
            if self.deadline is not None:
                left = min(left, self.deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError(f"as_completed: not done after {self.timeout} s")
            try:
                return self._done.get(timeout=left)
            except queue.Empty:
                continue
