"""The client side of a run: submit the root branches, then only follow events.

There is no ready queue here. The client invokes one worker per root task (or per
batched subtree, see `planning.subtrees`) and then reads the run's event stream until
every requested output is reported, a task fails, or the run stops making progress (no
event and no live worker heartbeat within the stall timeout). Whatever happens, the
run's keys are deleted before `execute_run` returns.

An interrupt (Ctrl-C: KeyboardInterrupt, or any BaseException that is not an Exception)
returns at once instead: the run is cancelled, the backend stops the workers running it
and frees their slots, and its keys are deleted; the client waits for that at most
`kong.run.interrupt_cleanup_s` and lets the rest finish in the background.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

from dask.callbacks import local_callbacks, unpack_callbacks

from .. import config, security, serialize
from ..constants import output_key
from ..dag import DAG
from ..dag.model import StoredValue
from ..errors import RemoteTaskError, RunCancelledError, StuckRunError, WorkerLostError
from ..invocation.model import Invocation
from ..invocation.payload import RunSettings, decode_invocation
from ..metrics.records import CapturedWarning, RunSummary, TaskMetrics
from ..options import warn_once
from ..planning import Optimization, Plan
from ..store.base import Event, EventKind, Store
from ..waits import poll_until
from . import leases
from .backend import Backend
from .context import RunContext
from .heartbeat import Heartbeater
from .prefetch import OutputPrefetch
from .session_keys import SessionKeys
from .upload import Upload, plan_upload, upload_and_invoke

logger = logging.getLogger("dask_kong.client")
#: Parent of the per-worker loggers what tasks print or log is forwarded to.
WORKER_LOGGER = "dask_kong.worker"

#: Said once when a `posttask` callback gets None for a task's result.
POSTTASK_RESULT = (
    "dask posttask callbacks get None as the result of a task the client does not have: "
    "one computed in a worker process (backends 'processes' and 'lambda'), where "
    "dask-kong keeps values, so a CacheProfiler's metric sees None there; on the "
    "threads backend posttask gets each task's value"
)
# posttask callbacks (module, qualified name) that never read the result they are given.
_IGNORE_RESULT = {("dask.diagnostics.profile", "Profiler._posttask")}
# Stands for "no value handed over" (a task's value may itself be None).
_NO_VALUE = object()
# How many unfinished tasks a stall error names before "... and N more".
_STUCK_TASKS_SHOWN = 10
# Longest single wait on the event stream, so deadlines and stalls are checked often.
_MAX_EVENT_WAIT_S = 0.25
# Longest pause between two looks at a draining run's heartbeats (a store round-trip).
_DRAIN_MAX_PAUSE_S = 0.1


@dataclass
class RunProgress:
    """What the client has learned from events so far."""

    dag: DAG
    pending_outputs: set[int]
    done: set[int] = field(default_factory=set)
    # Per task, children not yet done: at zero nobody reads its output again.
    unread: list[int] = field(default_factory=list)
    metrics: dict[int, TaskMetrics] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.monotonic)
    callback_state: dict[str, Any] = field(default_factory=dict)
    # Recovery: lost invocations seen, as (start task, attempt), so a loss reported twice
    # is acted on once; branches invoked again; completion events of tasks already done.
    lost: set[tuple[int, int]] = field(default_factory=set)
    reinvoked_at: list[float] = field(default_factory=list)
    recomputed: int = 0
    # Leases (runtime.leases, on Lambda): those found run out (invocation ids), and when
    # the heartbeats were last looked at.
    expired: set[str] = field(default_factory=set)
    leases_checked: float = field(default_factory=time.monotonic)


def new_run_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class RunServices:
    """What a run uses of its session: the store and the backend it runs on, the
    session's heartbeater, and the store's name for the summary."""

    store: Store
    backend: Backend
    heartbeater: Heartbeater
    store_name: str
    #: The session's keys in the store: its uploaded data and persisted values (None
    #: for an in-process store, where nothing needs to outlive a run in the store).
    session_keys: SessionKeys | None = None
    #: Whether the workers are in other processes: a run's large data entries are then
    #: uploaded to the session's scope (`runtime.upload`); threads read them in place.
    uploads_data: bool = False


def execute_run(  # noqa: PLR0913 - keyword-only options of one run, each defaulted
    dag: DAG,
    plan: Plan,
    services: RunServices,
    *,
    run_id: str,
    callbacks: Any = None,
    dsk: Any = None,
    keep_outputs: bool | frozenset[Any] = False,
    settings: RunSettings | None = None,
    stop: threading.Event | None = None,
) -> tuple[dict[Any, Any], RunSummary]:
    """Run `dag` to completion; returns the requested values by key and the summary.
    With `keep_outputs` (persist: True, every requested key; a Client's futures: the
    keys in the set) those task outputs stay in the store, moved into the session's
    scope, and the values returned for them are their `StoredValue`s.
    `settings`: the run's (task retries from the call), else from config. Once `stop` is
    set the run is abandoned as after an interrupt (`RunCancelledError`)."""
    backend = services.backend
    ctx = RunContext(
        run_id=run_id,
        dag=dag,
        plan=plan,
        store=services.store,
        invoker=backend,
        heartbeater=services.heartbeater,
        settings=settings or RunSettings.from_config(),
        output_tasks=dag.output_tasks,
    )
    progress = RunProgress(dag, set(dag.output_tasks))
    started = time.perf_counter()
    succeeded = interrupted = False
    with local_callbacks(callbacks) as cbs:
        hooks = CallbackHooks(cbs, dag, progress)
        hooks.configure(ctx)
        prewarms = schedule_prewarms(ctx, backend)
        keeper = services.session_keys if keep_outputs else None
        prefetch = OutputPrefetch(ctx, enabled=keeper is None)
        upload: Upload | None = None
        try:
            upload = submit_roots(ctx, backend, services.session_keys, services.uploads_data)
            submit_s = time.perf_counter() - started
            follow_events(ctx, progress, hooks, prefetch, stop)
            prefetch.stop(float(config.get("run.drain_timeout_s")))
            values, client_read = results_of(ctx, prefetch, keeper, keep_outputs)
            succeeded = True
        except BaseException as exc:
            interrupted = not isinstance(exc, Exception) or isinstance(exc, RunCancelledError)
            raise
        finally:
            prefetch.stop(0.0)
            for timer in prewarms:
                timer.cancel()
            hooks.finish(errored=not succeeded)
            end_run(ctx, backend, succeeded, interrupted, upload)
    makespan = time.perf_counter() - started
    summary = summarize(ctx, progress, makespan, submit_s, backend.name, services.store_name)
    count_uploads(summary, ctx, upload)
    summary.client_bytes_read = client_read
    summary.outputs_prefetched = len(prefetch.values)
    summary.bytes_read += client_read
    return values, summary


def end_run(
    ctx: RunContext, backend: Backend, succeeded: bool, interrupted: bool, upload: Upload | None
) -> None:
    """Clean up after the run however it ended, then release its hold on the session's
    uploaded data (which its cleanup never deletes)."""
    if interrupted:
        abandon_run(ctx, backend)
    else:
        cleanup_run(ctx, succeeded)
    if upload is not None:
        upload.release()


def schedule_prewarms(ctx: RunContext, backend: Backend) -> list[threading.Timer]:
    """Pre-warm: for each task the plan flags, an empty invocation of its resource config
    fired so that a worker has started by the task's predicted start. Timers are
    cancelled when the run ends; a task without a predicted start is warmed at once."""
    lead_s = float(config.get("planning.prewarm_lead_s"))
    timers = []
    for task_plan in ctx.plan.tasks:
        if Optimization.PREWARM not in task_plan.optimizations:
            continue
        delay = max(0.0, (task_plan.predicted_start_s or 0.0) - lead_s)
        timer = threading.Timer(delay, prewarm_quietly, (backend, task_plan.resource))
        timer.daemon = True
        timer.start()
        timers.append(timer)
    return timers


def prewarm_quietly(backend: Backend, resource: str) -> None:
    """Pre-warming is an optimization: a failure is logged, never fatal."""
    try:
        backend.prewarm(resource)
    except Exception as exc:
        logger.warning("pre-warm of %s failed: %s", resource, exc)


def submit_roots(
    ctx: RunContext,
    backend: Backend,
    session_keys: SessionKeys | None = None,
    uploads_data: bool = False,
) -> Upload | None:
    """Open the run and make it reachable, then invoke one worker per root task (one per
    subtree where the plan batches roots into subtrees). With `session_keys`, persisted
    values the run reads are found in the session's scope, and with `uploads_data` the
    run's large data entries are uploaded there, each start invoked once the data it
    reads first is in (`runtime.upload`); returns that upload, to release its pins when
    the run ends."""
    ctx.store.open_run(ctx.run_id)
    starts = ctx.dag.longest_chains_first(ctx.plan.start_tasks(ctx.dag.roots))
    upload = None
    if session_keys is not None:
        inline_bytes = ctx.settings.inline_input_bytes
        upload = plan_upload(
            ctx.dag, ctx.plan, starts, session_keys, inline_bytes, upload_large=uploads_data
        )
        ctx.data_refs = None if upload is None else upload.refs
    try:
        backend.prepare_run(ctx)

        def invoke(tasks: list[int]) -> None:
            backend.invoke(ctx, [Invocation(ctx.run_id, r) for r in tasks])

        if upload is not None:
            upload_and_invoke(upload, starts, invoke)
        elif starts:
            invoke(starts)
    except BaseException:
        if upload is not None:  # the caller never sees it: release its pins here
            upload.release()
        raise
    return upload


def count_uploads(summary: RunSummary, ctx: RunContext, upload: Upload | None) -> None:
    """What the client uploaded for the run, apart from what its workers moved."""
    shipment = ctx.shipment
    spec_bytes = 0 if shipment is None else shipment.spec_bytes
    summary.data_bytes_uploaded = 0 if shipment is None else shipment.data_bytes
    if upload is not None:
        summary.data_bytes_uploaded += upload.bytes
        summary.data_bytes_reused = upload.reused_bytes
        summary.upload_s = upload.seconds
    summary.client_bytes_uploaded = summary.data_bytes_uploaded + spec_bytes


def follow_events(
    ctx: RunContext,
    progress: RunProgress,
    hooks: CallbackHooks,
    prefetch: OutputPrefetch,
    stop: threading.Event | None = None,
) -> None:
    """Read events until every requested output is done; raise on failure or stall, or
    `RunCancelledError` once `stop` is set."""
    stall_s = float(config.get("run.stall_timeout_s"))
    deadline_s = config.get("run.deadline_s")
    deadline = None if deadline_s is None else time.monotonic() + float(deadline_s)
    batch_s = float(config.get("run.event_batch_s"))
    cursor = "0"
    while progress.pending_outputs:
        if stop is not None and stop.is_set():
            raise RunCancelledError(f"run {ctx.run_id} was cancelled by its caller")
        cursor, events = ctx.store.events(ctx.run_id, cursor, _MAX_EVENT_WAIT_S)
        for event in events:
            apply_event(ctx, progress, hooks, prefetch, event)
        if ctx.holds_leases:
            check_leases(ctx, progress)
        if not events:
            check_stalled(ctx, progress, stall_s)
        elif progress.pending_outputs and not any(e.wake for e in events):
            time.sleep(batch_s)  # only progress news: let more accumulate per read
        if deadline is not None and time.monotonic() > deadline:
            raise StuckRunError(
                f"run {ctx.run_id} passed its deadline of {deadline_s} s; "
                + describe_unfinished(ctx.dag, progress)
            )
    collect_stragglers(ctx, progress, hooks, prefetch, cursor)


def collect_stragglers(
    ctx: RunContext,
    progress: RunProgress,
    hooks: CallbackHooks,
    prefetch: OutputPrefetch,
    cursor: str,
) -> None:
    """Read the batched events of tasks that finished before the outputs did, so the
    summary counts every task. Bounded: they are flushed when their branches end."""
    grace_s = max(1.0, 5 * ctx.settings.progress_interval_s)
    deadline = time.monotonic() + grace_s
    while len(progress.done) < len(ctx.dag) and time.monotonic() < deadline:
        cursor, events = ctx.store.events(ctx.run_id, cursor, _MAX_EVENT_WAIT_S / 5)
        for event in events:
            apply_event(ctx, progress, hooks, prefetch, event)


def apply_event(
    ctx: RunContext,
    progress: RunProgress,
    hooks: CallbackHooks,
    prefetch: OutputPrefetch,
    event: Event,
) -> None:
    """Record one event (duplicates from retried writes are ignored)."""
    if event.kind is EventKind.TASK_STARTED:
        progress.last_progress = time.monotonic()
        hooks.task_started(event.task)
    elif event.kind is EventKind.TASK_DONE:
        if event.task in progress.done:
            progress.recomputed += 1
            return
        progress.done.add(event.task)
        prefetch.task_done(event.task)
        progress.pending_outputs.discard(event.task)
        release_read_outputs(ctx, progress, event.task)
        progress.last_progress = time.monotonic()
        if event.metrics is not None:
            progress.metrics[event.task] = event.metrics
            reraise_warnings(event.metrics.warnings)
            forward_logs(ctx.dag.keys[event.task], event.metrics)
        hooks.task_done(event.task, event.worker)
    elif event.kind is EventKind.WORKER_FAILED:
        reinvoke_lost(ctx, progress, event)
    else:
        raise_task_failure(ctx.dag, event)


def reinvoke_lost(ctx: RunContext, progress: RunProgress, event: Event) -> None:
    """A worker was lost mid-branch, its platform says (the gateway's WORKER_FAILED
    event, naming the lost delivery): invoke its branch again (`reinvoke`)."""
    if event.payload is None:  # a platform that cannot say what was lost
        raise WorkerLostError(
            f"a worker of run {ctx.run_id} died ({event.message}); it started at task "
            f"{ctx.dag.keys[event.task]!r} and was running it or one of the unfinished "
            f"tasks it may have run or continued with: "
            f"{unfinished_of_branch(ctx, progress, event.task)}"
        )
    lost = decode_invocation(json.loads(event.payload)).invocation.with_delivery(event.worker)
    if lost.run_id == ctx.run_id:
        reinvoke(ctx, progress, lost, event.message)


def check_leases(ctx: RunContext, progress: RunProgress) -> None:
    """On Lambda, every `kong.heartbeat.interval_s`: invoke again the branches whose
    lease ran out (`runtime.leases`), their worker lost without a word."""
    now = time.monotonic()
    if now - progress.leases_checked < float(config.get("heartbeat.interval_s")):
        return
    progress.leases_checked = now
    ttl_s = float(config.get("heartbeat.ttl_s"))
    expired = leases.expired(ctx.store, ctx.run_id, ttl_s, progress.expired, len(ctx.dag))
    for lost, age, task in expired:
        cause = f"its lease ran out: no heartbeat for {age:.1f} s"
        reinvoke(ctx, progress, lost, cause, running=task)


def reinvoke(
    ctx: RunContext, progress: RunProgress, lost: Invocation, cause: str, running: int = -1
) -> None:
    """Invoke the branch of a lost delivery again with the next attempt (the same start
    task; what it carried inline is in its payload, or in the store: `runtime.leases`),
    or, after kong.run.max_attempts, fail naming the task it was running (`running`, or
    its last heartbeat's), its attempts and the last cause. The new attempt reads what
    the lost one published and recomputes what it held only in memory
    (`worker.resume_published`).

    Every lost delivery frees its own claims (a shared root it was to run), never a
    live duplicate's; a branch attempt is invoked again once, however many of its
    deliveries were lost (or a loss reported twice: a retried event write)."""
    ctx.store.release_claims(ctx.run_id, lost.id)
    if (lost.start, lost.attempt) in progress.lost:
        return
    progress.lost.add((lost.start, lost.attempt))
    max_attempts = int(config.get("run.max_attempts"))
    if lost.attempt >= max_attempts:
        raise WorkerLostError(describe_loss(ctx, progress, lost, cause, running, max_attempts))
    logger.warning(
        "run %s: a worker was lost (%s) in the branch at task %r, attempt %d; invoking it again",
        ctx.run_id,
        cause,
        ctx.dag.keys[lost.start],
        lost.attempt,
    )
    again = Invocation(ctx.run_id, lost.start, lost.inputs, attempt=lost.attempt + 1, resumed=True)
    progress.reinvoked_at.append(time.time())
    progress.last_progress = time.monotonic()
    ctx.invoker.invoke(ctx, [again])


def describe_loss(
    ctx: RunContext,
    progress: RunProgress,
    lost: Invocation,
    cause: str,
    running: int,
    max_attempts: int,
) -> str:
    """The error of a branch lost `max_attempts` times: the task its last worker was
    running (its last heartbeat: a resumed branch beats each task at once, see
    `worker.beat`), its attempts and the last cause; when no heartbeat names the task,
    the unfinished tasks the branch may have been running."""
    dag = ctx.dag
    if running < 0:
        running = ctx.store.heartbeats(ctx.run_id).get(lost.id, (0.0, -1))[1]
    attempts = f"lost its worker {lost.attempt} times (kong.run.max_attempts={max_attempts})"
    branch = f"the branch of run {ctx.run_id} that starts at task {dag.keys[lost.start]!r}"
    if 0 <= running < len(dag):
        return (
            f"task {dag.keys[running]!r} {attempts}: {branch} was running it; last cause: {cause}"
        )
    return (
        f"{branch} {attempts}; last cause: {cause}. It was running one of these "
        f"unfinished tasks (it runs them in this order): "
        f"{unfinished_of_branch(ctx, progress, lost.start)}"
    )


def reraise_warnings(captured: tuple[CapturedWarning, ...]) -> None:
    """Raise in the client the warnings a task raised in a worker process, where they
    would have been raised under dask's local schedulers: the caller's filters decide
    whether each shows once, always, or becomes an error."""
    for w in captured:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def forward_logs(key: Any, metrics: TaskMetrics) -> None:
    """Log in the client what a task printed or logged in a worker process, on the
    logger of the worker that ran it (dask_kong.worker.<worker>)."""
    if not metrics.logs:
        return
    show_worker_logs_by_default()
    level = logging.getLevelName(str(config.get("logs.level")))
    worker_logger = logging.getLogger(f"{WORKER_LOGGER}.{metrics.container or metrics.worker}")
    worker_logger.log(level, "task %r:\n%s", key, metrics.logs.rstrip("\n"))


def show_worker_logs_by_default() -> None:
    """When logging is not configured at all, give dask_kong.worker a stderr handler at
    kong.logs.level (once), so what tasks print is seen, as with distributed."""
    worker_logger = logging.getLogger(WORKER_LOGGER)
    if worker_logger.handlers or logging.getLogger().handlers:
        return
    if not config.get("logs.show_by_default"):
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    worker_logger.addHandler(handler)
    worker_logger.setLevel(logging.getLevelName(str(config.get("logs.level"))))
    worker_logger.propagate = False


def release_read_outputs(ctx: RunContext, progress: RunProgress, task: int) -> None:
    """Once every child of a parent is done, its output is never read again: let an
    in-process store drop it, so memory stays bounded as with dask's own schedulers."""
    if not ctx.store.in_process:
        return
    dag = ctx.dag
    if not progress.unread:
        progress.unread = [len(children) for children in dag.children]
    released = []
    for parent in dag.parents[task]:
        progress.unread[parent] -= 1
        if progress.unread[parent] == 0 and parent not in ctx.output_tasks:
            released.append(output_key(parent))
    if released:
        ctx.store.forget(ctx.run_id, released)


def raise_task_failure(dag: DAG, event: Event) -> None:
    """Raise the task's own exception, with the worker's traceback attached as a note."""
    key = dag.keys[event.task] if 0 <= event.task < len(dag) else event.task
    error = event.error
    if isinstance(error, bytes):
        try:
            where = security.place("error", event.task)
            error = serialize.loads(error, where=where, what=f"the exception of task {key!r}")
        except Exception:
            error = None
    if not isinstance(error, BaseException):
        error = RemoteTaskError(f"task {key!r} failed: {event.message}")
    error.add_note(f"dask-kong: task {key!r} failed on worker {event.worker}")
    if event.traceback and error.__traceback__ is None:
        error.add_note(f"Remote traceback:\n{event.traceback}")
    raise error


def check_stalled(ctx: RunContext, progress: RunProgress, stall_s: float) -> None:
    """Fail when nothing finished for `stall_s` and no worker of the run is alive."""
    if time.monotonic() - progress.last_progress < stall_s:
        return
    ttl = float(config.get("heartbeat.ttl_s"))
    if ctx.active > 0 or ctx.store.live_workers(ctx.run_id, ttl):
        progress.last_progress = time.monotonic()  # slow, not stuck: a worker is alive
        return
    raise StuckRunError(
        f"run {ctx.run_id} made no progress for {stall_s:.0f} s and no worker is alive; "
        + describe_unfinished(ctx.dag, progress)
    )


def describe_unfinished(dag: DAG, progress: RunProgress) -> str:
    """Name the unfinished tasks whose parents all finished: where the run is stuck."""
    frontier = [
        i
        for i in range(len(dag))
        if i not in progress.done and all(p in progress.done for p in dag.parents[i])
    ]
    shown = ", ".join(repr(dag.keys[i]) for i in frontier[:_STUCK_TASKS_SHOWN])
    more = len(frontier) - _STUCK_TASKS_SHOWN
    suffix = f" and {more} more" if more > 0 else ""
    return f"stuck tasks (ready but never finished): {shown}{suffix}"


def unfinished_of_branch(ctx: RunContext, progress: RunProgress, start: int) -> str:
    """What a branch started at `start` may have been running, unfinished tasks only, in
    topological order: the members of the subtree it runs first (if any), `start` and
    its descendants."""
    dag = ctx.dag
    seen = {start, *ctx.plan.subtrees.get(start, ())}
    stack = [start]
    while stack:
        for child in dag.children[stack.pop()]:
            if child not in seen:
                seen.add(child)
                stack.append(child)
    unfinished = sorted(t for t in seen if t not in progress.done)
    shown = ", ".join(repr(dag.keys[t]) for t in unfinished[:_STUCK_TASKS_SHOWN])
    more = len(unfinished) - _STUCK_TASKS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def results_of(
    ctx: RunContext,
    prefetch: OutputPrefetch,
    keeper: SessionKeys | None,
    keep: bool | frozenset[Any] = True,
) -> tuple[dict[Any, Any], int]:
    """The requested values and the bytes the client read for them: read from the store
    (or prefetched), or, with a `keeper`, those of `keep` (True: all) kept in the
    session's scope and the others read."""
    if keeper is None:
        prefetched, prefetched_bytes = prefetch.taken()
        return collect_outputs(ctx, prefetched, prefetched_bytes)
    dag = ctx.dag
    chosen = keep if isinstance(keep, frozenset) else frozenset(o.key for o in dag.outputs)
    tasks = {o.task for o in dag.outputs if o.task is not None and o.key in chosen}
    if keep is True:
        return keep_outputs_in(ctx, keeper, tasks), 0
    kept = keep_outputs_in(ctx, keeper, tasks, with_data=False)
    values, nbytes = collect_outputs(ctx, {}, 0, skip=frozenset(tasks))
    return {**values, **kept}, nbytes


def keep_outputs_in(
    ctx: RunContext, keeper: SessionKeys, tasks: set[int], with_data: bool = True
) -> dict[Any, Any]:
    """Move the outputs of `tasks` into the session's scope before the run's cleanup
    deletes its keys; a `StoredValue` for each of their keys (and, `with_data`, the
    requested data entries as they are)."""
    dag = ctx.dag
    order = sorted(tasks)
    kept = dict(zip(order, keeper.keep(ctx.run_id, [output_key(t) for t in order]), strict=True))
    values: dict[Any, Any] = {o.key: kept[o.task] for o in dag.outputs if o.task in kept}
    if with_data:
        values.update({o.key: dag.data[o.data] for o in dag.outputs if o.data is not None})
    return values


def collect_outputs(
    ctx: RunContext,
    prefetched: dict[int, Any],
    prefetched_bytes: int,
    skip: frozenset[int] = frozenset(),
) -> tuple[dict[Any, Any], int]:
    """Every requested value but those of `skip` (task outputs: `prefetched` ones, the
    rest read from the store now; data from the DAG, persisted ones read from the
    session's scope), and how many bytes the client read from the store."""
    dag = ctx.dag
    unread = sorted(dag.output_tasks - prefetched.keys() - skip)
    fetched, nbytes = ctx.store.get_many(ctx.run_id, [output_key(t) for t in unread])
    by_task = {**prefetched, **dict(zip(unread, fetched, strict=True))}
    data, data_bytes = requested_data(ctx)
    values = {
        o.key: by_task[o.task] if o.task is not None else data[o.data]  # type: ignore[index]
        for o in dag.outputs
        if o.task not in skip
    }
    return values, nbytes + prefetched_bytes + data_bytes


def requested_data(ctx: RunContext) -> tuple[dict[str, Any], int]:
    """The requested data entries by name: as the DAG holds them, except values persisted
    in the session's scope (`StoredValue`), read from there; and the bytes read."""
    dag = ctx.dag
    names = [o.data for o in dag.outputs if o.data is not None]
    data = {name: dag.data[name] for name in names}
    stored = {n: v for n, v in data.items() if isinstance(v, StoredValue)}
    if not stored:
        return data, 0
    scope = next(iter(stored.values())).scope  # one session's: upload.check_stored
    fetched, nbytes = ctx.store.get_many(scope, [v.key for v in stored.values()])
    data.update(zip(stored, fetched, strict=True))
    return data, nbytes


def cleanup_run(ctx: RunContext, succeeded: bool) -> None:
    """Delete the run's keys after its workers stopped: a failed run is cancelled first;
    a finished one may still have branches in this process (e.g. the original of a
    duplicated task), waited for so none writes into a deleted run. Remote stragglers
    can only write keys that expire with the run's TTL."""
    try:
        if not succeeded:
            ctx.store.cancel(ctx.run_id)
        if not succeeded or ctx.active > 0:
            drain(ctx, float(config.get("run.drain_timeout_s")))
    except Exception as exc:
        logger.warning("could not cancel run %s: %s", ctx.run_id, exc)
    try:
        ctx.store.delete_run(ctx.run_id)
    except Exception as exc:  # keys carry a TTL, so they expire anyway
        logger.warning("could not delete the keys of run %s: %s", ctx.run_id, exc)


def drain(ctx: RunContext, timeout_s: float) -> None:
    """Wait (bounded, with backoff) until no worker of the run is running."""
    ttl = float(config.get("heartbeat.ttl_s"))

    def stopped() -> bool:
        if ctx.active > 0:
            return False
        return ctx.store.in_process or not ctx.store.live_workers(ctx.run_id, ttl)

    if not poll_until(stopped, timeout_s, max_s=_DRAIN_MAX_PAUSE_S):
        logger.warning("run %s: workers still running after %.1f s", ctx.run_id, timeout_s)


def abandon_run(ctx: RunContext, backend: Backend) -> None:
    """An interrupted run: stop it and give control back at once. Its cancel flag, the
    backend's `cancel_run` (kill its worker processes, free their slots) and deleting its
    keys run in a thread the client waits for at most `kong.run.interrupt_cleanup_s`;
    what is left then goes on in the background (the keys carry a TTL in any case).
    Nothing here waits for a task: a Ctrl-C must not wait 20 s for one to end, and the
    stores drop what a worker of a deleted run still commits."""
    cleanup = threading.Thread(
        target=stop_and_delete_run, args=(ctx, backend), name="kong-interrupted-run", daemon=True
    )
    cleanup.start()
    cleanup.join(float(config.get("run.interrupt_cleanup_s")))
    if cleanup.is_alive():
        logger.info("run %s interrupted: its cleanup goes on in the background", ctx.run_id)


def stop_and_delete_run(ctx: RunContext, backend: Backend) -> None:
    """Cancel the run everywhere, then delete its keys; failures are logged, not raised
    (nobody is left to catch them)."""
    try:
        ctx.store.cancel(ctx.run_id)
        if ctx.cancel_probe is not None:  # this process's branches see the flag at once
            ctx.cancel_probe.interval_s = 0.0
        backend.cancel_run(ctx)
    except Exception as exc:
        logger.warning("could not cancel interrupted run %s: %s", ctx.run_id, exc)
    try:
        ctx.store.delete_run(ctx.run_id)
    except Exception as exc:  # keys carry a TTL, so they expire anyway
        logger.warning("could not delete the keys of run %s: %s", ctx.run_id, exc)


def summarize(
    ctx: RunContext,
    progress: RunProgress,
    makespan_s: float,
    submit_s: float,
    backend: str,
    store: str,
) -> RunSummary:
    metrics = progress.metrics
    return RunSummary(
        run_id=ctx.run_id,
        tasks=len(ctx.dag),
        workers=len({m.container for m in metrics.values()}),
        branches=len({m.worker for m in metrics.values()}),
        invocations=len(ctx.plan.start_tasks(ctx.dag.roots))
        + sum(m.invocations for m in metrics.values()),
        makespan_s=makespan_s,
        bytes_written=sum(m.written_bytes for m in metrics.values()),
        bytes_read=sum(m.read_bytes for m in metrics.values()),
        bytes_cached=sum(m.cached_bytes for m in metrics.values()),
        planner=ctx.plan.planner,
        backend=backend,
        store=store,
        submit_s=submit_s,
        shape_hash=ctx.dag.shape_hash,
        plan=ctx.plan,
        dag=ctx.dag,
        task_metrics=metrics,
        reinvocations=len(progress.reinvoked_at),
        reinvoked_at=list(progress.reinvoked_at),
        recomputed_tasks=progress.recomputed,
    )


class CallbackHooks:
    """Feeds dask's Callback protocol (Profiler, CacheProfiler, ProgressBar, ...) from
    the run's events: `pretask` when a worker reports a task's start (workers report
    starts only while a `pretask` callback watches: `RunSettings.report_starts`),
    `posttask` when it reports the finish, so a Profiler measures each task's real
    duration (plus the event's trip to the client). Callbacks see the graph as a dict of
    the DAG's tasks. `posttask` gets the task's result, as under dask's local schedulers,
    where the worker that computed it is a thread of this process (the threads backend:
    `RunContext.task_values`); a worker process keeps its values (moving every value to
    the client would cost what the run saves), so there `posttask` gets None and a
    warning says so once (`POSTTASK_RESULT`)."""

    def __init__(self, callbacks: Any, dag: DAG, progress: RunProgress) -> None:
        self.start, self.start_state, self.pretask, self.posttask, self.finish_cbs = (
            unpack_callbacks(callbacks)
        )
        self.dag = dag
        #: Values the run's in-process workers computed, until passed to `posttask`.
        self.values: dict[int, Any] = {}
        #: Whether a `posttask` callback may read the result (a missing one is warned of).
        self.reads_results = not all(map(ignores_result, self.posttask))
        # Only callbacks read the state: a set per task is not built for nobody (10,000
        # trivial tasks spent about 50 ms here).
        watched = self.start_state or self.pretask or self.posttask or self.finish_cbs
        self.dsk: dict[Any, Any] = dict(zip(dag.keys, dag.nodes, strict=True)) if watched else {}
        self.started: set[int] = set()
        self.state: dict[str, Any] = {
            "finished": set(),
            "ready": [],
            "running": set(),
            "released": set(),  # values stay in the workers: nothing is released here
            "waiting": {k: set() for k in dag.keys} if watched else {},
            "cache": {},
        }
        for cb in self.start:
            cb(self.dsk)
        for cb2 in self.start_state:
            cb2(self.dsk, self.state)

    @property
    def active(self) -> bool:
        return bool(self.pretask or self.posttask)

    def configure(self, ctx: RunContext) -> None:
        """Have the run's workers report task starts when a `pretask` callback (a
        Profiler timing tasks) watches, and those in this process hand their values to
        `posttask` callbacks; before the run is submitted."""
        if self.pretask:
            ctx.settings = replace(ctx.settings, report_starts=True)
        if self.reads_results:  # a Profiler's posttask ignores the value: none kept for it
            ctx.task_values = self.values = {}

    def task_started(self, task: int) -> None:
        if task in self.started or not self.active:
            return  # a duplicate delivery starts a task twice: the first start counts
        self.started.add(task)
        key = self.dag.keys[task]
        self.state["waiting"].pop(key, None)
        self.state["running"].add(key)
        for cb in self.pretask:
            cb(key, self.dsk, self.state)

    def task_done(self, task: int, worker: str) -> None:
        if not self.active:
            return
        self.task_started(task)  # no start seen (a duplicated parent's recomputation)
        key = self.dag.keys[task]
        self.state["running"].discard(key)
        self.state["finished"].add(key)
        value = self.values.pop(task, _NO_VALUE)
        if value is _NO_VALUE:
            if self.reads_results:
                warn_once("posttask-result", POSTTASK_RESULT)
            value = None
        for cb2 in self.posttask:
            cb2(key, value, self.dsk, self.state, worker)

    def finish(self, errored: bool) -> None:
        for cb in self.finish_cbs:
            cb(self.dsk, self.state, errored)


def ignores_result(posttask: Any) -> bool:
    """Whether `posttask` is one known not to read the task's result (the Profiler's:
    it records the finish time only), so a missing result is not worth a warning."""
    func = getattr(posttask, "__func__", posttask)
    name = (getattr(func, "__module__", None), getattr(func, "__qualname__", None))
    return name in _IGNORE_RESULT
