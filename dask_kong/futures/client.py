"""`Client`: distributed's futures API over a Kong session.

    from dask_kong import Client          # instead of: from dask.distributed import Client
    client = Client()
    future = client.submit(inc, 1)
    total = client.submit(sum, client.map(inc, range(100)))
    total.result()

How it runs: `submit` and `map` only record the call and return a Future. A dispatcher
thread takes every call recorded since it last looked (once no call came for
`kong.client.batch_window_s`, at most `kong.client.batch_max_wait_s` after the first, so
a loop of `submit`s lands in one batch) and hands the batch to a pool of
`kong.client.concurrent_runs` threads; each runs its batch as one graph on the session
(`batch.build_graph`), so thousands of small calls cost one run, and independent batches
and `compute`s run at the same time. A batch whose calls take Futures of an earlier batch
waits for those first (earlier batches started before it: the pool is first in, first
out, so this never deadlocks).

Values stay where they were computed, as distributed's stay on its workers: with a store
outside this process (threads on Redis, processes, lambda) a batch's outputs are kept in
the session's store (`Kong.get_keeping`, the session's scope of `runtime.session_keys`,
as `Kong.persist` keeps its results) and only a small status per task is read (which
calls failed). `result()` and `gather` read the values from the store (`gather`: one
round-trip for all); a Future passed to a later call becomes a data node of that call's
graph that the workers read in the store, nothing passing through the client. A key's
store value is deleted once the last Future of the key is released (garbage collected,
`Future.release`) or the key is cancelled, within `_DISPATCH_POLL_S`, and the whole scope
when the session closes. `scatter` writes its values there too. With the in-process
memory store (the embedded mode) the client holds the values, which is where the threads
compute them anyway. `compute` is the exception: its Future holds the finalized result in
the client, since dask's finalize step (joining the chunks) runs in the client.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import logging
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import dask
import dask.config
from dask.base import is_dask_collection, tokenize
from dask.utils import funcname

from .. import config
from ..dag.model import StoredValue
from ..options import SCHEDULING_KEYWORDS, warn_unsupported
from ..serialize import content_token, is_ndarray
from ..session import Kong
from .batch import Submission, TaskFailure, build_graph, find_futures, walk_futures
from .future import Future, FutureState, StoredPart

logger = logging.getLogger("dask_kong.futures")

# Longest single wait of the dispatcher for new calls, so it notices close() promptly.
_DISPATCH_POLL_S = 0.25
# How long a run takes to notice `close(timeout=)` stopped it: one wait on its event
# stream (runtime.client._MAX_EVENT_WAIT_S) and a margin; its cleanup then takes at most
# kong.run.interrupt_cleanup_s.
_STOP_NOTICE_S = 0.5
# Keywords of distributed's submit/map that kong honours or ignores harmlessly; any other
# one goes through `warn_unsupported`.
_SUBMIT_OPTIONS = ("key", "pure", "retries")


class Client:
    """distributed's `Client`, on a Kong session (`Kong(...)` arguments, or `session=`).

    While open, the client is dask's default scheduler, as distributed's is:
    `x.compute()` runs on its session."""

    def __init__(
        self,
        address: Any = None,
        *,
        session: Kong | None = None,
        set_as_default: bool = True,
        **kong_options: Any,
    ) -> None:
        if address is not None:
            raise ValueError(
                f"dask_kong.Client takes no scheduler address ({address!r}): there is no "
                "scheduler to connect to; pass Kong options (backend=, store=, ...) instead"
            )
        self._owns_session = session is None
        self.session = session if session is not None else Kong(**kong_options)
        self.status = "running"
        #: Per key, where it is (`FutureState`); a key leaves when its last Future goes.
        self._states: dict[Any, FutureState] = {}
        #: Per key, how many Futures of it are alive.
        self._refs: Counter[Any] = Counter()
        #: Calls recorded and not yet handed to a run, and the Futures they take.
        self._pending: list[Submission] = []
        self._pending_inputs: list[Future] = []
        # Reentrant: a Future made under the lock retains its key through it.
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._runs = ThreadPoolExecutor(
            int(config.get("client.concurrent_runs")), thread_name_prefix="kong-client-run"
        )
        #: Batches and computes handed to `_runs` and not finished (`close` waits on them).
        self._in_flight: set[concurrent.futures.Future[None]] = set()
        #: Set by `close` when its timeout ran out: runs in flight are abandoned.
        self._stop = threading.Event()
        #: Packed chunks read last, by store key (`_remember_chunks`).
        self._chunks: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="kong-client-dispatch", daemon=True
        )
        self._dispatcher.start()
        #: Impure keys are this client's id and a count: uuid4 per call reads
        #: os.urandom, which took ~0.7 ms a call on this loaded machine.
        self._id = uuid.uuid4().hex
        self._counter = itertools.count()
        #: Tokens of the functions submitted so far (`_func_token`).
        self._func_tokens: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        self._config_ctx: Any = None
        if set_as_default:
            self._config_ctx = dask.config.set(scheduler=self.get)
            self._config_ctx.__enter__()

    # -- submitting ------------------------------------------------------------------

    def submit(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """`func(*args, **kwargs)` on a worker. `key=` names it; `pure=False` makes
        every call a new key (by default equal calls share one, as in distributed)."""
        options, kwargs = split_options(kwargs, "submit")
        key = options.get("key") or self._key_of(func, args, kwargs, options)
        return self._record([Submission(key, func, args, kwargs, retries=retries_of(options))])[0]

    def map(self, func: Callable[..., Any], *iterables: Iterable[Any], **kwargs: Any) -> Any:
        """`submit(func, *items)` for each tuple of items of `iterables` (zipped), as
        one batch; `key=` may be a list of keys or a prefix."""
        options, kwargs = split_options(kwargs, "map")
        rows = list(zip(*iterables, strict=False))
        keys = options.get("key")
        if not isinstance(keys, (list, tuple)):
            prefix = keys or funcname(func)
            keys = [self._key_of(func, row, kwargs, options, prefix) for row in rows]
        retries = retries_of(options)
        return self._record(
            [
                Submission(k, func, row, kwargs, retries=retries)
                for k, row in zip(keys, rows, strict=True)
            ]
        )

    def compute(self, collections: Any, sync: bool = False, **kwargs: Any) -> Any:
        """A Future of each collection's result (a list for a list), computed in a run
        of its own; `sync=True` returns the results instead."""
        single = is_dask_collection(collections)
        colls = [collections] if single else list(collections)
        futures = [self._compute_one(c, kwargs) for c in colls]
        if sync:
            return self.gather(futures[0] if single else futures)
        return futures[0] if single else futures

    def persist(self, collections: Any, **kwargs: Any) -> Any:
        """The collections with their chunks computed and kept in the session's store
        (`Kong.persist`): later computations read them there. Blocks until done."""
        self._check_open()
        return self.session.persist(collections, **kwargs)

    def scatter(self, data: Any, hash: bool = True, **kwargs: Any) -> Any:
        """Futures of values the client already has: a list or dict of Futures for a
        list or dict, else one Future."""
        warn_unsupported(kwargs.keys(), "scatter")
        if isinstance(data, dict):
            return {k: self._scatter_one(v, hash) for k, v in data.items()}
        if isinstance(data, (list, tuple, set)):
            return type(data)(self._scatter_one(v, hash) for v in data)
        return self._scatter_one(data, hash)

    def get(self, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        """Dask scheduler entry point, on the client's session."""
        self._check_open()
        return self.session.get(dsk, keys, **kwargs)

    # -- results ----------------------------------------------------------------------

    def gather(self, futures: Any, errors: str = "raise") -> Any:
        """The values of `futures` (a Future, or lists, tuples, dicts of them), in the
        same shape. `errors="skip"` leaves failed ones out of lists."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        if errors == "skip" and isinstance(futures, list):
            futures = [f for f in futures if f.exception() is None]
        found: dict[Any, Future] = {}
        walk_futures(futures, lambda f: found.setdefault(f.key, f))
        outcomes = {}
        for key, future in found.items():
            future.exception()  # waits
            outcomes[key] = future._state.outcome()
            if outcomes[key][0] != "finished":
                future.result()  # raises its exception
        stored = {k: part for k, (_, _, part) in outcomes.items() if part is not None}
        read = dict(zip(stored, self.read_stored(list(stored.values())), strict=True))
        values = {k: read.get(k, value) for k, (_, value, _) in outcomes.items()}
        return walk_futures(futures, lambda f: values[f.key])

    def read_stored(self, parts: list[StoredPart]) -> list[Any]:
        """The values of keys kept in the session's store, one round-trip for all."""
        session_keys = self.session.session_keys
        if not parts:
            return []
        assert session_keys is not None  # values are kept only where there is a scope
        with self._lock:
            whole = {p.ref.key: self._chunks[p.ref.key] for p in parts if p.ref.key in self._chunks}
        missing = list(dict.fromkeys(p.ref.key for p in parts if p.ref.key not in whole))
        whole.update(zip(missing, session_keys.read_many(missing), strict=True))
        self._remember_chunks({p.ref.key: whole[p.ref.key] for p in parts if p.index is not None})
        return [part.pick(whole[part.ref.key]) for part in parts]

    def _remember_chunks(self, chunks: dict[str, Any]) -> None:
        """Keep the last few packed chunks read: `result()` of each Future of a map, one
        after another (`as_completed`), would otherwise read a whole chunk per call.
        Values are write-once, so a remembered chunk is never stale. A chunk with a failed
        call is not kept: its exception's traceback, rebuilt when read (tblib), holds the
        frames that read it, and with them the Futures being gathered."""
        limit = int(config.get("client.chunks_remembered"))
        with self._lock:
            for key, value in chunks.items():
                if any(isinstance(v, TaskFailure) for v in value):
                    continue
                self._chunks[key] = value
                self._chunks.move_to_end(key)
            while len(self._chunks) > limit:
                self._chunks.popitem(last=False)

    def cancel(self, futures: Any, force: bool = False) -> int:
        """Cancel the keys of `futures` (a Future or an iterable): calls not started do
        not run, values arriving later are dropped. How many keys were cancelled."""
        items = [futures] if isinstance(futures, Future) else list(futures)
        return sum(f._state.cancel() for f in items)

    def who_has(self) -> dict[Any, tuple[str, ...]]:
        """Where the finished keys' values are: "store" (the session's) or "client"."""
        with self._lock:
            return {
                k: ("store",) if s.stored is not None else ("client",)
                for k, s in self._states.items()
                if s.status == "finished"
            }

    # -- reference counting -------------------------------------------------------------

    def retain_key(self, key: Any) -> None:
        with self._lock:
            self._refs[key] += 1

    def release_key(self, key: Any, let_go: bool = False) -> None:
        """One Future fewer of `key`; the last one frees the value (with `let_go`, an
        explicit release, by cancelling the key: a released Future object may live on
        and still hold the state)."""
        state = None
        with self._lock:
            self._refs[key] -= 1
            if self._refs[key] <= 0:
                del self._refs[key]
                state = self._states.pop(key, None)
        if let_go and state is not None:
            state.cancel()

    def held_keys(self) -> list[Any]:
        """Keys a Future still refers to (tests prove release)."""
        with self._lock:
            return list(self._states)

    # -- lifetime -----------------------------------------------------------------------

    def close(self, timeout: float | None = None) -> None:
        """Cancel what has not run, wait for runs in flight, free every value, close the
        session if the client opened it. With `timeout`, runs still in flight after
        `timeout` seconds are cancelled (their workers stopped and their keys deleted,
        as after Ctrl-C) and their Futures with them; without, each run ends within its
        own bounds (`kong.run.stall_timeout_s`, `kong.run.deadline_s`)."""
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        with self._lock:
            if self.status == "closed":
                return
            self.status = "closed"
            pending, self._pending = self._pending, []
            self._pending_inputs = []
            self._wake.notify_all()
        for s in pending:
            s.state.cancel()
        self._dispatcher.join()
        if not self._wait_in_flight(timeout):
            self._stop.set()
            grace_s = float(config.get("run.interrupt_cleanup_s")) + _STOP_NOTICE_S
            if not self._wait_in_flight(grace_s):
                logger.warning("Client.close: runs still ending after %.1f s", grace_s)
        self._runs.shutdown(wait=False, cancel_futures=True)
        self._let_go_of_values()
        if self._config_ctx is not None:
            self._config_ctx.__exit__(None, None, None)
            self._config_ctx = None
        if self._owns_session:
            self.session.close()

    def _let_go_of_values(self) -> None:
        """Cancel every key (a finished one lets its value go) and delete the store
        values now unreferenced."""
        with self._lock:
            states = list(self._states.values())
            self._states.clear()
            self._chunks.clear()
        for state in states:
            state.cancel()
        del states
        self._release_stored()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<dask_kong.Client: {self.session.backend_name}, {self.status}>"

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.status == "closed":
            raise RuntimeError("this Client is closed")

    def _key_of(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: dict[str, Any],
        prefix: str | None = None,
    ) -> str:
        name = prefix or funcname(func)
        if options.get("pure", True):
            return (
                f"{name}-{tokenize(self._func_token(func), by_content(args), by_content(kwargs))}"
            )
        return f"{name}-{self._id}-{next(self._counter)}"

    def _func_token(self, func: Callable[..., Any]) -> str:
        """`func`'s token, computed once per function: a function defined in __main__
        tokenizes by pickling it (~1 ms), once per call would dominate a large map."""
        try:
            return self._func_tokens[func]
        except (KeyError, TypeError):
            token = tokenize(func)
        with contextlib.suppress(TypeError):  # not weak-referenceable: tokenized each call
            self._func_tokens[func] = token
        return token

    def _record(self, submissions: list[Submission]) -> list[Future]:
        """Futures of `submissions`; new keys are queued for the dispatcher, keys already
        held (an equal pure call) share their state."""
        self._check_open()
        futures = []
        with self._lock:
            for s in submissions:
                state = self._states.get(s.key)
                if state is None:
                    state = s.state = self._states[s.key] = FutureState()
                    self._pending_inputs.extend(find_futures(s))
                    self._pending.append(s)
                futures.append(Future(s.key, self, state))
            self._wake.notify_all()
        return futures

    def _dispatch(self) -> None:
        """Hand the calls recorded so far to a run, until the client closes."""
        window_s = float(config.get("client.batch_window_s"))
        while True:
            with self._lock:
                while not self._pending and self.status != "closed":
                    self._wake.wait(_DISPATCH_POLL_S)
                    self._release_stored()
                if self.status == "closed":
                    return
            self._let_calls_settle(window_s, float(config.get("client.batch_max_wait_s")))
            with self._lock:
                batch, self._pending = self._pending, []
                inputs, self._pending_inputs = self._pending_inputs, []
            self._start(self._run_batch, batch, inputs)
            del batch, inputs  # the run holds them now; their Futures must be free to go

    def _let_calls_settle(self, window_s: float, max_wait_s: float) -> None:
        """Wait until no call came for `window_s` (a loop of submits, a tree built level
        by level, lands in one batch), or `max_wait_s` passed since the first: a steady
        stream of calls still starts runs."""
        deadline = time.monotonic() + max_wait_s
        seen = -1
        while time.monotonic() < deadline:
            with self._lock:
                count = len(self._pending)
            if count == seen:
                return
            seen = count
            time.sleep(min(window_s, max(0.0, deadline - time.monotonic())))

    def _start(self, work: Callable[..., None], *args: Any) -> None:
        """Run `work(*args)` in the pool, noted as in flight until it returns."""
        running = self._runs.submit(work, *args)
        with self._lock:
            self._in_flight.add(running)
        running.add_done_callback(self._finished)

    def _finished(self, running: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._in_flight.discard(running)

    def _wait_in_flight(self, timeout: float | None) -> bool:
        """Whether every run in flight ended within `timeout` seconds (None: no bound)."""
        with self._lock:
            running = list(self._in_flight)
        return not concurrent.futures.wait(running, timeout).not_done

    def _tasks_wanted(self) -> int | None:
        """Tasks a batch's independent calls are spread over: kong.client.tasks_per_worker
        per worker that may run at once (None: unbounded, as on Lambda)."""
        workers = self.session.backend.concurrency()
        if workers is None:
            return None
        return workers * int(config.get("client.tasks_per_worker"))

    def _release_stored(self) -> None:
        """Delete the store values of keys released since the last look (a Future's
        garbage collection only notes it: `SessionKeys.release_collected`)."""
        if self.session.session_keys is not None:
            try:
                self.session.session_keys.release_collected()
            except Exception as exc:  # the scope's keys carry a TTL and go at close
                logger.warning("could not release futures' values: %s", exc)

    def _run_batch(self, batch: list[Submission], inputs: list[Future]) -> None:
        """Run one batch as one graph and settle its keys. `inputs` (the Futures its
        calls take) keep those values alive until the run has them."""
        known = {f.key: f._state for f in inputs}
        known.update({s.key: s.state for s in batch})
        runnable = settle_unrunnable(batch, known)
        if not runnable:
            forget_futures(batch, inputs)
            return
        own = {s.key for s in batch}
        for state in {f._state for f in inputs if f.key not in own}:
            state.wait_done()  # an earlier batch's key: its run is under way
        # Each input's status and value read together, before the last check: a cancel
        # or release from another thread cannot hand a call a value already let go.
        outcomes = {k: s.outcome() for k, s in known.items()}
        runnable = settle_unrunnable(runnable, known)
        done_values = {
            k: stored or value
            for k, (status, value, stored) in outcomes.items()
            if status == "finished"
        }
        keeps = self.session.session_keys is not None
        per_task = int(config.get("client.calls_per_task"))
        built = build_graph(runnable, done_values, per_task, keeps, self._tasks_wanted())
        # Their stored parts hold the inputs' store values until the run read them.
        held = [v for v in done_values.values() if isinstance(v, StoredPart)]
        del done_values
        forget_futures(batch, inputs)  # the graph holds what they pointed to now
        try:
            values = self._run_graph(built.graph, list(built.keys), built.status.values(), keeps)
        except Exception as exc:
            for s in runnable:
                known[s.key].fail(exc)
            return
        finally:
            del held
        for s in runnable:
            where, index = built.places[s.key]
            status = values.get(built.status.get(where))
            settle(known[s.key], values[where], index, status)

    def _run_graph(
        self, graph: dict[Any, Any], keys: list[Any], status: Iterable[Any], keeps: bool
    ) -> dict[Any, Any]:
        """Values of `keys` and of the `status` tasks by key; with `keeps`, the calls'
        outputs (`keys`) stay in the store (`StoredValue`s) and only the status tasks
        are read."""
        wanted = [*keys, *status]
        if keeps:
            values = self.session.get_keeping(graph, wanted, keep=keys, stop=self._stop)
        else:
            values = self.session.get(graph, wanted, stop=self._stop)
        return dict(zip(wanted, values, strict=True))

    def _compute_one(self, collection: Any, kwargs: dict[str, Any]) -> Future:
        self._check_open()
        key = f"finalize-{tokenize(collection)}"
        with self._lock:
            state = self._states.get(key)
            new = state is None
            if state is None:
                state = self._states[key] = FutureState()
            future = Future(key, self, state)
        if new:
            self._start(self._run_collection, collection, state, kwargs)
        return future

    def _run_collection(self, collection: Any, state: FutureState, kwargs: dict[str, Any]) -> None:
        if state.status != "pending":
            return  # cancelled before its turn
        try:
            scheduler = functools.partial(self.session.get, stop=self._stop)
            (value,) = dask.compute(collection, scheduler=scheduler, **kwargs)
        except Exception as exc:
            state.fail(exc)
            return
        state.finish(value)

    def _scatter_one(self, value: Any, hash: bool) -> Future:
        """A Future of `value`, written to the session's store when it keeps values
        (workers read it there, as distributed's scatter sends it to a worker)."""
        self._check_open()
        token = tokenize(by_content(value)) if hash else uuid.uuid4().hex
        key = f"{type(value).__name__}-{token}"
        with self._lock:
            new = key not in self._states
            state = self._states.setdefault(key, FutureState())
            future = Future(key, self, state)
        session_keys = self.session.session_keys
        if not new:
            pass
        elif session_keys is None:
            state.finish(value)
        else:
            (ref,) = session_keys.keep_values({key: value})
            state.finish_stored(StoredPart(ref))
        return future


def split_options(kwargs: dict[str, Any], call: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(options of `submit`/`map` itself, the function's own keyword arguments):
    distributed's scheduling keywords kong does not honour warn once, by name."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _SUBMIT_OPTIONS}
    ignored = [k for k in list(kwargs) if k in SCHEDULING_KEYWORDS]
    given = [k for k in ignored if kwargs.pop(k) is not None]
    warn_unsupported(given, call)
    return options, kwargs


def forget_futures(batch: list[Submission], inputs: list[Future]) -> None:
    """Drop a built batch's references to Futures, so a Future the user let go of is
    released at once, not when the thread pool drops the finished batch."""
    inputs.clear()
    for s in batch:
        s.args, s.kwargs = (), {}


def retries_of(options: dict[str, Any]) -> int:
    """How often a call runs again after raising: `retries=`, else kong.run.retries."""
    retries = options.get("retries")
    retries = config.get("run.retries") if retries is None else retries
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a whole number >= 0, not {retries!r}")
    return retries


def settle_unrunnable(batch: list[Submission], known: dict[Any, FutureState]) -> list[Submission]:
    """The calls of `batch` that can run: a cancelled call is dropped, a call whose
    input failed or was cancelled fails with that input's exception without running
    (batch order is submission order, so inputs come first)."""
    runnable = []
    for s in batch:
        state = known[s.key]
        if state.status != "pending":
            continue
        failed = [known[k] for k in s.needs if known[k].status in ("error", "cancelled")]
        if failed:
            assert failed[0].exception is not None
            state.fail(failed[0].exception, failed[0].traceback)
            continue
        runnable.append(s)
    return runnable


def settle(
    state: FutureState,
    value: Any,
    index: int | None = None,
    failures: dict[int | None, TaskFailure] | None = None,
) -> None:
    """Finish a key with its value, or fail it with the task's own exception. `value` is
    its task's (item `index` of it when calls were packed), a `StoredValue` when kept in
    the store: then `failures` (its status task's) says whether the call failed."""
    if isinstance(value, StoredValue):
        failure = (failures or {}).get(index)
        if failure is None:
            state.finish_stored(StoredPart(value, index))
            return
        value = failure
    elif index is not None:
        value = value[index]
    if isinstance(value, TaskFailure):
        note = f"Remote traceback:\n{value.traceback}"
        if note not in getattr(value.error, "__notes__", ()):
            value.error.add_note(note)
        state.fail(value.error, value.traceback)
    else:
        state.finish(value)


def by_content(obj: Any) -> Any:
    """`obj` with the NumPy arrays in it (itself, or the items of a tuple, list or dict at
    its top) replaced by their content token (`serialize.content_token`): dask's
    `tokenize` hashes an array's elements in memory order, so a square array and its
    transpose, both passed as `submit(f, x)`, would name one Future."""
    if isinstance(obj, tuple | list):
        return type(obj)(by_content(item) for item in obj) if any(map(is_ndarray, obj)) else obj
    if isinstance(obj, dict):
        return (
            {k: by_content(v) for k, v in obj.items()}
            if any(map(is_ndarray, obj.values()))
            else obj
        )
    return ("ndarray", content_token(obj)) if is_ndarray(obj) else obj
