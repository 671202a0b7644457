"""`Kong`, a session: a backend, a store and a planner, and `get`, a Dask scheduler.

`kong_get` is the module-level scheduler: it runs on a default session built from
`dask.config` (`kong.backend`, `kong.store`, `kong.planner`, `kong.workers`), created on
first use and closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import logging
import threading
import time
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any

import dask.config
from dask.base import collections_to_expr
from dask.core import flatten

from . import config, security
from .annotations import (
    annotations_of,
    task_annotations,
    warn_unhonoured,
    with_priorities,
    with_resources,
)
from .dag import DAG
from .dag.translate import translate
from .diagnostics import observers
from .errors import StoreUnavailableError
from .gc_pause import paused_gc
from .invocation.payload import RunSettings
from .metrics.records import RunSummary
from .planning import Plan, PlanningContext, get_planner
from .planning.history import History, MemoryHistory, RedisHistory, record_run
from .runtime.backend import Backend
from .runtime.client import RunServices, execute_run, new_run_id
from .runtime.heartbeat import Heartbeater
from .runtime.session_keys import SessionKeys
from .store.base import Store

logger = logging.getLogger("dask_kong.session")

_last_run: RunSummary | None = None

BACKENDS = ("threads", "processes", "lambda")


def last_run() -> RunSummary | None:
    """Summary of the last run finished in this process (None before the first)."""
    return _last_run


class Kong:
    """A dask-kong session. Use `.get` as a Dask scheduler, or the session as a context
    manager that makes itself Dask's scheduler while open.

    >>> with Kong(backend="threads", store="memory") as kong:   # doctest: +SKIP
    ...     x.sum().compute()
    """

    def __init__(
        self,
        backend: str | None = None,
        store: str | None = None,
        planner: str | None = None,
        workers: int | None = None,
        dashboard: bool | None = None,
        **backend_options: Any,
    ) -> None:
        config.validate({"workers": workers})
        self.backend_name = str(config.get("backend", backend))
        self.store_spec = default_store(self.backend_name, store)
        self.planner_name = str(config.get("planner", planner))
        get_planner(self.planner_name)  # fail fast on an unknown name
        if self.backend_name not in BACKENDS:
            raise ValueError(
                f"unknown backend {self.backend_name!r}: use one of {', '.join(BACKENDS)}"
            )
        if security.signing_enabled():
            security.ensure_key()  # before any pickle is written (kong.security.key)
        self.store: Store = open_store(self.store_spec, self.backend_name)
        #: What the store is, for summaries, reports and the dashboard: its URL without
        #: the password (the store itself holds the full URL).
        self.store_spec = security.redact_url(self.store_spec)
        try:
            self.backend: Backend = open_backend(
                self.backend_name, self.store, workers, backend_options
            )
        except BaseException:
            self.store.close()  # never leak a private redis-server started just above
            raise
        self.heartbeater = Heartbeater(self.store)
        #: Values kept in the store beyond a run: uploaded data, persisted results (not
        #: in the embedded mode, whose workers read the caller's objects in place).
        self.session_keys = None if self.store.in_process else SessionKeys(self.store)
        #: Metrics of earlier runs, for predictive planners: in the session's store.
        self.history: History = open_history(self.store)
        self._config_ctx: Any = None
        self._closed = False
        #: Run id of the latest run started by this session, failed or not.
        self.last_run_id: str | None = None
        try:  # the live dashboard (kong.dashboard): told of each run, see diagnostics
            self.run_observers = observers.open_for(self, dashboard)
        except BaseException:
            self.close()
            raise

    def get(self, dsk: Any, keys: Any, stop: threading.Event | None = None, **kwargs: Any) -> Any:
        """Dask scheduler entry point: compute `keys` of `dsk`, nested like `keys`. Once
        `stop` is set, the run is abandoned as after Ctrl-C (its workers stopped, its keys
        deleted) and `RunCancelledError` raised."""
        return self._run(dsk, keys, keep_outputs=False, stop=stop, **kwargs)

    def persist(self, collections: Any, optimize_graph: bool = True, **kwargs: Any) -> Any:
        """Compute `collections` (one, or a list or tuple of them) and return the same
        collections with their results kept in the store: computing them again makes the
        workers read the results there, nothing passes through this process. Results are
        freed when the returned collections are garbage collected (at the session's next
        run) or the session closes. `dask.persist(x)` inside the session comes here.

        With the in-process memory store the results are kept in this process, as
        dask's own schedulers do: that is where the workers are."""
        single = not isinstance(collections, list | tuple)
        wanted = [collections] if single else list(collections)
        expr = collections_to_expr(wanted, optimize_graph).optimize()
        keys_of = [list(flatten(k)) for k in expr.__dask_keys__()]
        every_key = [k for keys in keys_of for k in keys]
        values = self._run(expr, every_key, keep_outputs=self.session_keys is not None, **kwargs)
        found = dict(zip(every_key, values, strict=True))
        kept = []
        for collection, keys in zip(wanted, keys_of, strict=True):
            rebuild, state = collection.__dask_postpersist__()
            kept.append(rebuild({k: found[k] for k in keys}, *state))
        return kept[0] if single else kept

    def get_keeping(self, dsk: Any, keys: list[Any], keep: Collection[Any], **kwargs: Any) -> Any:
        """`get` of the flat list `keys`, except that the values of those in `keep` stay
        in the session's store: each comes back as a `StoredValue` that holds it there
        until garbage collected, which later runs read in place (a Client's futures).
        With the in-process memory store every value comes back as `get` returns it."""
        kept = frozenset(keep) if self.session_keys is not None else frozenset()
        return self._run(dsk, keys, keep_outputs=kept, **kwargs)

    def _run(
        self,
        dsk: Any,
        keys: Any,
        *,
        keep_outputs: bool | frozenset[Any],
        stop: threading.Event | None = None,
        **kwargs: Any,
    ) -> Any:
        """One run: computed values nested like `keys`, or with `keep_outputs` (True:
        all, else those keys) the task outputs kept in the session's scope as
        `StoredValue`s (`persist`, `get_keeping`)."""
        if self._closed:
            raise RuntimeError("this Kong session is closed")
        started = time.perf_counter()
        config.validate()  # settings may have changed since the session opened
        translation = translate(dsk, keys, shares_disk=self.workers_share_machine)
        # finalize tasks run in this process on the values: nothing to keep in the store
        if translation.finals:
            keep_outputs = False
        dag, plan, settings = self._plan(dsk, translation.dag, kwargs)
        translate_s = time.perf_counter() - started
        run = functools.partial(
            self._execute,
            dag,
            plan,
            kwargs.pop("callbacks", None),
            dsk,
            keep_outputs,
            settings,
            stop=stop,
        )
        # Runs may go on concurrently (a Client's futures): each keeps its own id.
        run_id = new_run_id()
        try:
            try:
                values, summary = run(run_id)
            except StoreUnavailableError as exc:
                if not self._restart_private_store(exc):
                    raise
                self._record(self.failed_summary(dag, plan, started, exc, run_id))
                run_id = new_run_id()
                values, summary = run(run_id)  # once, on the restarted server
        except BaseException as exc:
            self._record(self.failed_summary(dag, plan, started, exc, run_id))
            raise
        summary.translate_s = translate_s
        record_run(self.history, dag, plan, summary)
        self._record(summary)
        if self.session_keys is not None:  # the previous summary held its DAG's values
            self.session_keys.release_collected()
        return nest(keys, translation.results(values))

    def _plan(self, dsk: Any, dag: DAG, kwargs: dict[str, Any]) -> tuple[DAG, Plan, RunSettings]:
        """The DAG with the graph's priorities, its plan (resources honoured) and the
        run's settings; takes the planning keywords out of `kwargs` and warns about
        annotations and keywords it cannot honour."""
        notes = annotations_of(dsk)
        warn_unhonoured(notes, kwargs)
        dag = with_priorities(dag, notes.get("priority"))
        settings = run_settings(dag, notes.get("retries"), kwargs.pop("retries", None))
        planner = get_planner(kwargs.pop("planner", None) or self.planner_name)
        context = self.planning_context()
        with paused_gc():  # a plan per task: objects that all stay alive
            plan = planner(dag, context)
        return dag, with_resources(dag, plan, notes.get("resources"), context.resources), settings

    def _execute(  # noqa: PLR0913 - one run: what translation and planning made, and its id
        self,
        dag: DAG,
        plan: Plan,
        callbacks: Any,
        dsk: Any,
        keep_outputs: bool | frozenset[Any],
        settings: RunSettings,
        run_id: str,
        stop: threading.Event | None = None,
    ) -> tuple[dict[Any, Any], RunSummary]:
        """One run of `dag` under `run_id`."""
        self.last_run_id = run_id
        observers.run_started(self, run_id, dag, plan)
        services = RunServices(
            self.store,
            self.backend,
            self.heartbeater,
            self.store_spec,
            self.session_keys,
            uploads_data=self.backend_name != "threads",
        )
        return execute_run(
            dag,
            plan,
            services,
            run_id=run_id,
            callbacks=callbacks,
            dsk=dsk,
            keep_outputs=keep_outputs,
            settings=settings,
            stop=stop,
        )

    def _restart_private_store(self, exc: StoreUnavailableError) -> bool:
        """A run lost its store: restart the session's private redis-server if it died
        (whether it did). The run's data went with it, so the run is submitted again,
        once; an external Redis is never restarted: its error stands."""
        restart = getattr(self.store, "restart_if_died", None)
        if restart is None or not restart():
            return False
        logger.warning("the private redis-server died (%s): restarted, running again", exc)
        return True

    def _record(self, summary: RunSummary) -> None:
        """Make `summary` what `last_run()` returns."""
        global _last_run
        _last_run = summary
        observers.run_finished(self, summary)

    def failed_summary(
        self, dag: DAG, plan: Plan, started: float, exc: BaseException, run_id: str
    ) -> RunSummary:
        """What `last_run()` says of a run that raised: its size, time and error."""
        return RunSummary(
            run_id=run_id,
            tasks=len(dag),
            workers=0,
            invocations=0,
            makespan_s=time.perf_counter() - started,
            bytes_written=0,
            bytes_read=0,
            planner=plan.planner,
            backend=self.backend_name,
            store=self.store_spec,
            succeeded=False,
            shape_hash=dag.shape_hash,
            error=f"{type(exc).__name__}: {describe(exc)}",
            plan=plan,
            dag=dag,
        )

    @property
    def dashboard_link(self) -> str | None:
        """Address of this session's live dashboard (`Kong(dashboard=True)`), else None."""
        return observers.dashboard_link(self)

    @property
    def workers_share_machine(self) -> bool:
        """Whether every worker reaches this machine's disk (not so on AWS Lambda)."""
        return self.backend_name != "lambda"

    def planning_context(self) -> PlanningContext:
        """What planners may consult: history of earlier runs, the backend's sizes."""
        return PlanningContext(
            history=self.history,
            resources=self.backend.resources(),
            sla=str(config.get("planning.sla")),
            concurrency=self.backend.concurrency(),
            shared_store=not self.store.in_process,
        )

    def __enter__(self) -> Kong:
        settings: dict[str, Any] = {"scheduler": self.get}
        if not self.workers_share_machine:
            # Bags pick their shuffle when they are built, not when computed: inside the
            # block they get the task shuffle (dask_kong.dag.shuffle).
            settings["dataframe.shuffle.method"] = "tasks"
        self._config_ctx = dask.config.set(settings)
        self._config_ctx.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._config_ctx is not None:
            self._config_ctx.__exit__(exc_type, exc, tb)
            self._config_ctx = None
        self.close()

    def close(self) -> None:
        """Stop workers, helper threads and any private server; idempotent."""
        if self._closed:
            return
        self._closed = True
        observers.close_for(self)
        self.backend.close()
        if self.session_keys is not None:
            self.session_keys.close()
        self.heartbeater.close()
        self.history.close()
        self.store.close()


def describe(exc: BaseException) -> str:
    """The exception's message; a task's exception rebuilt from its pickle may lack what
    its `__str__` reads (numpy's AxisError): then its arguments."""
    try:
        return str(exc)
    except Exception:
        return repr(exc.args)


def nest(keys: Any, values: dict[Any, Any]) -> Any:
    """Values arranged like `keys`: lists of keys become tuples, as in dask's own `get`."""
    if isinstance(keys, list):
        return tuple(nest(k, values) for k in keys)
    return values[keys]


def open_store(spec: str, backend: str) -> Store:
    """The store named by `spec`: "memory", "redis" (private server) or a Redis URL."""
    if spec == "memory":
        if backend != "threads":
            raise ValueError(f"store='memory' only works with backend='threads', not {backend!r}")
        from .store.memory import MemoryStore

        return MemoryStore()
    if spec == "redis" or spec.startswith(("redis://", "rediss://", "unix://")):
        from .store.redis import open_store as open_redis

        return open_redis(spec)
    raise ValueError(f"unknown store {spec!r}: use 'memory', 'redis' or a redis:// URL")


def default_store(backend: str, store: str | None) -> str:
    """The store spec: as given, else from config; workers outside this process cannot
    reach a memory store, so for them the configured "memory" default means "redis"."""
    spec = str(config.get("store.kind", store))
    if store is None and spec == "memory" and backend != "threads":
        return "redis"
    return spec


def open_history(store: Store) -> History:
    """The metrics history next to the store: memory for the embedded store, the same
    Redis otherwise (keys under kong:history:, not tied to a run)."""
    url = getattr(store, "url", None)
    if store.in_process or not url:
        return MemoryHistory()
    return RedisHistory(url)


def open_backend(name: str, store: Store, workers: int | None, options: dict[str, Any]) -> Backend:
    """The backend called `name`."""
    if name == "threads":
        from .backends.threads import ThreadBackend

        return ThreadBackend(workers=workers, **options)
    if name == "processes":
        from .backends.processes.backend import ProcessBackend

        return ProcessBackend(store, workers=workers, **options)
    if name == "lambda":
        from .backends.aws_lambda.backend import LambdaBackend

        return LambdaBackend(store, **options)
    raise ValueError(f"unknown backend {name!r}: use 'threads', 'processes' or 'lambda'")


_default_sessions: dict[tuple[Any, ...], Kong] = {}
_default_lock = threading.Lock()


def default_session() -> Kong:
    """The session `kong_get` uses for the current `kong.*` configuration."""
    spec = (
        config.get("backend"),
        config.get("store.kind"),
        config.get("planner"),
        config.get("workers"),
    )
    with _default_lock:
        session = _default_sessions.get(spec)
        if session is None or session._closed:
            session = _default_sessions[spec] = Kong()
        return session


def run_settings(dag: DAG, annotated: Mapping[Any, Any] | None, retries: Any) -> RunSettings:
    """The run's settings from config, with task retries from the call (`retries=`,
    else kong.run.retries) and from `dask.annotate(retries=)`, which wins per task."""
    settings = RunSettings.from_config()
    default = settings.retries if retries is None else check_retries(retries, "retries=")
    by_task = {
        task: check_retries(n, f"dask.annotate(retries=) of {key!r}")
        for task, key, n in task_annotations(dag, annotated)
    }
    return dataclasses.replace(settings, retries=default, task_retries=by_task)


def check_retries(value: Any, where: str) -> int:
    """`value` as a number of retries; a ValueError naming `where` if it is not one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{where} must be a whole number >= 0, not {value!r}")
    return value


def kong_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """Dask scheduler: `dask.compute(x, scheduler=kong_get)`."""
    return default_session().get(dsk, keys, **kwargs)


@atexit.register
def _close_default_sessions() -> None:
    with _default_lock:
        for session in _default_sessions.values():
            session.close()
        _default_sessions.clear()
