"""The WUKONG worker: run a branch of the DAG, from one task onward, with no scheduler.

Policy (WUKONG, SoCC 2020), one task at a time:

* gather inputs: from this worker's memory, then the invocation payload, then the store;
* execute the task;
* route its dependents. A dependent with a single parent is ready at once. A dependent
  with several parents is a fan-in: this worker writes its output first, then marks the
  parent done in the store; only the mark that completes the set makes it ready here.
* continue ("become") with the ready dependent whose inputs this worker holds most of,
  and invoke a new worker for every other ready dependent, passing inputs inline.

An output goes to the store only when another worker will read it (a fan-in, or an
invoked dependent whose input is too large to travel inline) or when it was requested.
Linear chains therefore never leave the worker's memory. The plan can switch `become`
off and force every output to the store (the naive baseline).

Two WUKONG optimizations, switched per task by the plan and triggered by output size:

* task clustering (`Optimization.CLUSTER`, output >= `kong.wukong.cluster_bytes`): every
  ready dependent runs here, one after the other, instead of shipping the output;
* delayed I/O (`Optimization.DELAY_IO`, output >= `kong.wukong.delay_io_bytes`): at a
  fan-in the output stays in memory while the worker waits (bounded, with backoff) for
  the other parents. If they all finish, this worker completes the fan-in and runs the
  dependent here without ever writing the output; on timeout it writes, then marks.

A third saves traffic by spending compute (`Optimization.RECOMPUTE`, see `recompute`): a
large output that took less time to compute than it would take to move, from small
inputs, is published as a recipe (those inputs); readers run the task again.

Where the plan batches an exclusive subtree (`planning.subtrees`), the invocation starts
at its top and runs the members first, in topological order, keeping their outputs in
memory (`keep_for_subtree`); only the top's dependents are routed.

`run_branch` reads top to bottom like dask/local.py: it only calls `gather_inputs`,
`execute`, `route_dependents`, `flush_events` and `report_failure`.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import threading
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from dask.sizeof import sizeof

from .. import config, faults, security, serialize
from ..constants import (
    data_key,
    delay_io_claim,
    output_key,
    shared_root_claim,
    stateful_claim,
)
from ..errors import MissingOutputError, SerializationError, StateLostError
from ..invocation.model import Invocation
from ..metrics.records import CapturedWarning, TaskMetrics
from ..planning import Optimization
from ..store.base import Event, EventKind, FanIn, MissingKeyError
from ..values import all_plain, is_plain_data
from ..waits import pauses, poll_until
from . import leases
from .context import RunContext
from .data_cache import MISSING, DataCache, handed_out, process_cache
from .recompute import Recipe, rebuild, recipe_for
from .recorder import Phase, Recorder
from .task_logs import BranchCapture

logger = logging.getLogger("dask_kong.runtime")

_worker_ids = itertools.count()


# A task that warns in a loop (a reduction over NaNs, per element) would otherwise ship
# thousands of copies of one warning; the client shows each distinct one once anyway.
_MAX_WARNINGS_PER_TASK = 100

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_refresh_pid)


def container_id() -> str:
    """The process and thread running this code: what a warm serverless container is
    here (a worker process of the gateway, a thread of the embedded pool)."""
    return f"{_pid}:{threading.get_native_id()}"


def new_worker_id(run_id: str) -> str:
    """A short id for one invocation of one run, unique across the run's processes."""
    return f"{run_id[:8]}-{_pid}-{next(_worker_ids)}"


@dataclass
class Branch:
    """State of one worker running one branch, as dask/local.py documents its `state`:

    ============  ===================================================================
    field         what it holds
    ============  ===================================================================
    ctx           the run: DAG, plan, store, invoker, settings (`RunContext`)
    worker_id     this invocation's id in events and heartbeats (`new_worker_id`)
    local         task -> output (or `Recipe`) this worker holds: inline inputs of the
                  invocation, outputs it computed or read; pruned to what the tasks it
                  runs next read (`keep_only_inputs_of`)
    data          data-node name -> value read from the store (lifted constants)
    pending       completion events not sent yet (`flush_if_due` batches them)
    last_flush    monotonic time of the last round-trip that carried events
    written       tasks whose output this branch wrote (a task is written once)
    duplicated    parents this branch ran again for task-dup (never twice)
    recipes       task -> the recipe its output was published as or read from, so
                  invoked workers get the recipe, not the value (`runtime.recompute`)
    failed        a task raised: the branch stops, the run fails
    unread        batched subtree: per member, how many tasks of the subtree have yet
                  to read its output (dropped at 0: `keep_for_subtree`)
    carried       what taking a shared root from its claimant cost (`share_root`): it
                  has no event of its own, so the next task's metrics carry it
    recorder      measurements of the task being run (`runtime.recorder`)
    resumed       the branch may redo work of a lost worker (`Invocation.resumed`): it
                  reads what was published (`resume_published`), takes back fan-ins
                  its tasks completed, and passes the flag on to what it invokes
    holder        this delivery's id (`Invocation.id`): the name its claims are held
                  in (released by the client if it is lost) and its heartbeats carry
    kill_at       where fault injection ends this process (`dask_kong.faults`), or None
    container     the process and thread running the branch (`container_id`)
    capture       what its tasks print, log and warn, in a worker process
                  (`task_logs.BranchCapture`); None where tasks write to the client's
                  own streams (the threads backend)
    ============  ===================================================================
    """

    ctx: RunContext
    worker_id: str
    local: dict[int, Any]
    data: dict[str, Any] = field(default_factory=dict)
    pending: list[Event] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    written: set[int] = field(default_factory=set)
    duplicated: set[int] = field(default_factory=set)
    recipes: dict[int, Recipe] = field(default_factory=dict)
    failed: bool = False
    unread: collections.Counter[int] = field(default_factory=collections.Counter)
    carried: TaskMetrics | None = None
    recorder: Recorder = field(default_factory=lambda: Recorder(TaskMetrics(worker="")))
    resumed: bool = False
    holder: str = ""
    kill_at: faults.KillPoint | None = None
    container: str = field(default_factory=container_id)
    capture: BranchCapture | None = None

    @property
    def metrics(self) -> TaskMetrics:
        """The measurements of the task being run."""
        return self.recorder.metrics

    @contextlib.contextmanager
    def measuring(self, metrics: TaskMetrics) -> Iterator[None]:
        """Record into `metrics` for the block (a task run aside: task-dup's duplicate)."""
        outer, self.recorder = self.recorder, Recorder(metrics)
        try:
            yield
        finally:
            self.recorder = outer


def run_branch(ctx: RunContext, invocation: Invocation, worker_id: str | None = None) -> None:
    """Run tasks from `invocation.start` until this branch has nothing left to run here."""
    if not invocation.delivery:  # the embedded backend's threads: no platform names it
        invocation = invocation.with_delivery()
    branch = open_branch(ctx, invocation, worker_id)
    # A batched subtree's members run first, in topological order (see planning.subtrees).
    subtree = [*ctx.plan.subtrees.get(invocation.start, ()), invocation.start]
    branch.unread.update(p for t in subtree for p in ctx.dag.parents[t])
    todo = collections.deque(subtree)
    if ctx.holds_leases:
        # Outside the try: a branch that could not take its lease must not give one back
        # (its end marker would tell the client it finished); the invocation fails, and
        # the platform delivers it again.
        leases.take(ctx, invocation)
    try:
        with capturing(branch):
            run_tasks(branch, todo, invocation)
        flush_events(branch)
    except Exception as exc:  # store unreachable while flushing: the client's stall check
        logger.error("worker %s lost contact with the store: %s", branch.worker_id, exc)
    finally:
        close_branch(branch)


def open_branch(ctx: RunContext, invocation: Invocation, worker_id: str | None) -> Branch:
    """The state of a branch about to run `invocation` (delivered: its id is set)."""
    branch = Branch(ctx, worker_id or new_worker_id(ctx.run_id), dict(invocation.inputs))
    branch.resumed = invocation.resumed
    branch.holder = invocation.id
    if ctx.fault_injection:
        branch.kill_at = ctx.settings.faults.kill_point(
            ctx.run_id, invocation.start, invocation.attempt
        )
    return branch


def close_branch(branch: Branch) -> None:
    """The branch ended, however: stop its heartbeats, and give its lease back."""
    ctx = branch.ctx
    if ctx.holds_leases:
        leases.give_back(ctx, branch.holder)
    else:
        ctx.heartbeater.done(ctx.run_id, branch.holder)


def run_tasks(branch: Branch, todo: collections.deque[int], invocation: Invocation) -> None:
    """Run tasks from `todo` (and those each one adds) until none is left, one fails, or
    the run is cancelled."""
    ctx = branch.ctx
    first: Invocation | None = invocation
    members = ctx.plan.subtree_members
    while todo and not branch.failed and not ctx.cancelled():
        task = todo.popleft()
        beat(branch, task)
        todo.extend(run_task(branch, task, first))
        first = None
        if task not in members:  # a member drops its own inputs (keep_for_subtree)
            keep_only_inputs_of(branch, todo)


@contextlib.contextmanager
def capturing(branch: Branch) -> Iterator[None]:
    """Capture what the branch's tasks print, log and warn where nobody reads the
    worker's streams (`RunContext.captures_warnings`), for the whole branch."""
    if not branch.ctx.captures_warnings:
        yield
        return
    with BranchCapture(branch.ctx.settings.max_task_log_bytes) as capture:
        branch.capture = capture
        try:
            yield
        finally:
            branch.capture = None


def beat(branch: Branch, task: int) -> None:
    """Note the task this branch runs now, for its heartbeats. A resumed branch (one that
    lost a worker already) pushes it at once: if it is lost too, the client's error
    names the task it was running (`client.reinvoke`), not only its branch."""
    ctx = branch.ctx
    if branch.resumed and not ctx.store.in_process:
        ctx.heartbeater.beat_now(ctx.run_id, branch.holder, task)
    else:
        ctx.heartbeater.beat(ctx.run_id, branch.holder, task)


def run_task(branch: Branch, task: int, invocation: Invocation | None = None) -> list[int]:
    """Run one task; the tasks this worker runs next (none when the branch ends).
    `invocation` is given for the branch's first task: its start-up is measured."""
    resource = branch.ctx.plan.tasks[task].resource
    metrics = TaskMetrics(
        worker=branch.worker_id, resource=resource, start=time.time(), container=branch.container
    )
    branch.recorder = Recorder(metrics)
    if branch.ctx.settings.report_starts:
        branch.pending.append(Event(EventKind.TASK_STARTED, task, branch.worker_id))
        flush_events(branch)
    if invocation is not None and invocation.sent_at > 0:
        waited = metrics.start - invocation.sent_at - invocation.queued_s
        metrics.startup_s = max(waited, 1e-6)
        metrics.cold_start = invocation.cold
    if branch.carried is not None:
        carry_over(branch.carried, metrics)
        branch.carried = None
    try:
        if task in branch.ctx.plan.shared_roots:
            return share_root(branch, task)
        return run_and_route(branch, task)
    except RunElsewhere:
        return []  # a duplicate delivery of a stateful task: the first one goes on
    except RanElsewhere:  # a resumed branch: go on from the output the claimant published
        return resume_published(branch, task) or []
    except Exception as exc:
        branch.failed = True  # the run fails: nothing after this task is worth running
        report_failure(branch, task, exc)
        return []


def run_and_route(branch: Branch, task: int) -> list[int]:
    """Gather, execute, then keep the output for the subtree or route the dependents; a
    re-invoked branch first looks for the output the lost worker published."""
    member = task in branch.ctx.plan.subtree_members
    if branch.resumed and not member:
        resumed = resume_published(branch, task)
        if resumed is not None:
            return resumed
    values = gather_inputs(branch, task)
    value = execute(branch, task, values)
    fault_point(branch, faults.KillPoint.TASK)
    recipe = publishable(branch, task, value, values)
    if member:
        return keep_for_subtree(branch, task, value)
    return route_dependents(branch, task, value, recipe)


def fault_point(branch: Branch, point: faults.KillPoint) -> None:
    """Fault injection: end this process here if its invocation was doomed to die here."""
    if branch.kill_at is point:
        ctx = branch.ctx
        faults.kill(ctx.settings.faults, ctx.run_id, branch.holder, point)


def resume_published(branch: Branch, task: int) -> list[int] | None:
    """A resumed branch (`Invocation.resumed`) reads what the lost worker published instead
    of running it again, then routes the dependents as that worker would have (marks
    and invocations are idempotent, and a fan-in it completed is taken back: see
    `fan_in`). None when `task` was not published: it runs."""
    if not outputs_in_store(branch, [task]):
        return None
    fetch_outputs(branch, [task])
    value = local_value(branch, task)
    branch.written.add(task)  # the store has it: routing writes nothing
    branch.metrics.output_bytes = sizeof(value)
    return route_dependents(branch, task, value, branch.recipes.get(task))


def fan_in(branch: Branch, child: int, parent: int) -> FanIn:
    """The mark of `parent` at `child`'s fan-in. A resumed branch marks with `retake`: if
    the lost worker's mark of this same parent completed the fan-in, this branch
    continues with the child, which the lost worker would have run (or invoked)."""
    degree = len(branch.ctx.dag.parents[child])
    return FanIn(child, parent, degree, retake=branch.resumed)


def gather_inputs(branch: Branch, task: int) -> dict[Any, Any]:
    """Input values of `task` keyed as its node expects: handles this process made and
    local memory and the payload first, the DAG's in-process data next, the store last
    (one round-trip for all)."""
    values: dict[Any, Any] = {}
    remote: list[RemoteInput] = []
    for inp in branch.ctx.dag.inputs[task]:
        source = inp.task if inp.task is not None else inp.data or ""
        if holds(branch, source):
            values[inp.key] = held_value(branch, source)
        else:
            remote.append(remote_input(branch.ctx, inp.key, source))
    if remote:
        fetch_remote(branch, task, remote, values)
    return values


def remote_input(ctx: RunContext, key: Any, source: int | str) -> RemoteInput:
    """Where in the store an input lives: a task's output or a data entry in the run,
    or a data entry the client uploaded into the session's scope (`ctx.data_refs`)."""
    if isinstance(source, int):
        return RemoteInput(key, output_key(source), source, ctx.run_id)
    refs = ctx.data_refs
    if refs is not None and source in refs.keys:
        return RemoteInput(key, refs.keys[source], source, refs.scope)
    return RemoteInput(key, data_key(source), source, ctx.run_id)


def holds(branch: Branch, source: int | str) -> bool:
    """Whether this process has the output of task `source` (a handle it made, or in
    local memory), or the data node named `source` (in the DAG or the payload)."""
    if isinstance(source, int):
        return source in branch.ctx.handles or source in branch.local
    refs = branch.ctx.data_refs
    in_dag = source in branch.ctx.dag.data and (refs is None or source not in refs.keys)
    return in_dag or source in branch.data


def held_value(branch: Branch, source: int | str) -> Any:
    """The value of an input `holds` says this process has."""
    if isinstance(source, int):
        if source in branch.ctx.handles:  # the one object of this process
            return branch.ctx.handles[source]
        return local_value(branch, source)
    return branch.data[source] if source in branch.data else branch.ctx.dag.data[source]


@dataclass(frozen=True)
class RemoteInput:
    """An input to read from the store: the key the task's node expects, the store key,
    and its source (a parent task's index, or a data node's name)."""

    key: Any
    store_key: str
    source: int | str
    scope: str  # the run id, or the session's scope for uploaded data


def fetch_remote(
    branch: Branch, task: int, remote: list[RemoteInput], values: dict[Any, Any]
) -> None:
    """Read inputs this worker does not hold from the store (one round-trip per scope:
    the run's, and the session's for uploaded data), and keep them. Session data this
    process read before comes from its cache (`runtime.data_cache`), and what it reads
    of the session's goes there."""
    cache = session_cache(branch.ctx)
    if cache is not None:
        remote = take_cached(branch, cache, remote, values)
    by_scope: dict[str, list[RemoteInput]] = {}
    for r in remote:
        by_scope.setdefault(r.scope, []).append(r)
    for scope, group in by_scope.items():
        fetched = read_inputs(branch, task, scope, group)
        if cache is not None and scope != branch.ctx.run_id:
            for r, value in zip(group, fetched, strict=True):
                cache.put(scope, r.store_key, value)
            fetched = [handed_out(value) for value in fetched]
        keep_fetched(branch, group, fetched, values)


def session_cache(ctx: RunContext) -> DataCache | None:
    """This process's cache of session data, when it has a budget and the store is
    not in this process (an in-process store hands out its objects already)."""
    settings = ctx.settings
    if settings.worker_cache_bytes <= 0 or ctx.store.in_process:
        return None
    return process_cache(settings.worker_cache_bytes, settings.worker_cache_fraction)


def take_cached(
    branch: Branch, cache: DataCache, remote: list[RemoteInput], values: dict[Any, Any]
) -> list[RemoteInput]:
    """Give the task the session data of `remote` this process's cache holds (counted as
    cached, not read); the inputs left to read."""
    left: list[RemoteInput] = []
    for r in remote:
        if r.scope == branch.ctx.run_id or not isinstance(r.source, str):
            left.append(r)
            continue
        value, nbytes = cache.get(r.scope, r.store_key)
        if value is MISSING:
            left.append(r)
            continue
        branch.data[r.source] = values[r.key] = handed_out(value)
        branch.recorder.cached(nbytes)
    return left


def read_inputs(branch: Branch, task: int, scope: str, remote: list[RemoteInput]) -> list[Any]:
    """The values of `remote`, all in `scope`, read in one call and counted."""
    try:
        with branch.recorder.timing(Phase.READ):
            keys = [r.store_key for r in remote]
            fetched, nbytes = branch.ctx.store.get_many(scope, keys)
    except MissingKeyError as exc:
        key = branch.ctx.dag.keys[task]
        raise MissingOutputError(f"input of task {key!r} is missing: {exc}") from exc
    branch.recorder.read(nbytes)
    return fetched


def keep_fetched(
    branch: Branch, remote: list[RemoteInput], fetched: list[Any], values: dict[Any, Any]
) -> None:
    """Keep what was read in the branch's memory and give the task its values."""
    for r, value in zip(remote, fetched, strict=True):
        if isinstance(r.source, int):
            branch.local[r.source] = value
            value = local_value(branch, r.source)
        else:
            branch.data[r.source] = value
        values[r.key] = value


def local_value(branch: Branch, task: int) -> Any:
    """The output of `task` this worker holds, recomputed first when what it holds is a
    recipe (kept, so that workers this one invokes get the recipe, not the value)."""
    value = branch.local[task]
    if isinstance(value, Recipe):
        branch.recipes[task] = value
        value = branch.local[task] = rebuild(branch.ctx, task, value, branch.recorder)
    return value


class RunElsewhere(Exception):
    """A stateful task this worker may not run: another delivery of it claimed it first
    (a duplicate invocation, or task-dup). That one routes its dependents."""


class RanElsewhere(Exception):
    """A resumed branch reached a stateful task another worker claimed and, since,
    published (`publish_stateful`): the branch goes on from that output."""


def execute(branch: Branch, task: int, values: dict[Any, Any]) -> Any:
    """Run the task's node on its inputs. A stateful task (one that reads or makes a handle
    to state: `dask_kong.values`) runs for the run only in the worker that claims it
    first; elsewhere `RunElsewhere` is raised. A task that reads a handle claims before it
    runs (it may act on the state); one that makes a handle, as soon as it sees it. Its
    output is published at once (`publish_stateful`)."""
    ctx = branch.ctx
    plain_inputs = all_plain(values, ctx.settings.inspect_items)
    if not plain_inputs:
        claim_stateful(branch, task)
    with branch.recorder.timing(Phase.EXECUTE):
        # a task that reads a handle to state is not retried: its state may have changed
        retries = ctx.settings.retries_of(task) if plain_inputs else 0
        value = run_with_retries(branch, task, values, retries)
    if is_plain_data(value, ctx.settings.inspect_items):
        branch.metrics.stateful = not plain_inputs
        if not plain_inputs:
            publish_stateful(branch, task, value)
        return value
    branch.metrics.stateful = True
    if plain_inputs:
        claim_stateful(branch, task)
    ctx.handles[task] = value  # lives as long as the run in this process
    publish_stateful(branch, task, value)
    return value


def publish_stateful(branch: Branch, task: int, value: Any) -> None:
    """Write a stateful task's output as soon as it ran, before anything else can happen
    to this worker: the store then says that the task ran, and with what result. A
    stateful task never runs twice, so if this worker is lost, the branch invoked again
    goes on from this output (`resume_published`) instead of failing for state it
    cannot tell lost. An in-process store has no worker to lose.

    A handle that cannot be pickled (a generator, a lock, an open socket) is not
    published: it lives in this process only, as before there was recovery, and its
    readers run here; a resumed branch that reaches it finds no output and, its claimant
    gone, fails with `StateLostError` (`await_stateful`)."""
    ctx = branch.ctx
    if ctx.store.in_process or task in branch.written:
        return
    try:
        with branch.recorder.timing(Phase.WRITE):
            result = ctx.store.commit(ctx.run_id, {output_key(task): value})
    except SerializationError as exc:
        logger.debug("stateful task %r: its output stays here (%s)", ctx.dag.keys[task], exc)
        return
    branch.written.add(task)
    branch.recorder.wrote(result.bytes_written)


def run_with_retries(branch: Branch, task: int, values: dict[Any, Any], retries: int) -> Any:
    """Run the task's node; when it raises, run it again up to `retries` more times, after
    pauses that double (`waits.pauses`, from kong.run.retry_delay_s). The last try's
    exception is the task's. A run already failing (cancelled) is not retried."""
    ctx = branch.ctx
    delays: Iterator[float] | None = None
    for tries_left in range(retries, -1, -1):
        try:
            if branch.capture is not None:
                return run_capturing(branch, branch.capture, ctx.dag.nodes[task], values)
            return ctx.dag.nodes[task](values)
        except Exception as exc:
            if tries_left == 0 or ctx.cancelled():
                raise
            if delays is None:
                delays = pauses(ctx.settings.retry_delay_s, ctx.settings.retry_max_delay_s)
            delay = next(delays)
            logger.warning(
                "task %r raised %s: %s; trying again in %.2f s (%d more tries)",
                ctx.dag.keys[task],
                type(exc).__name__,
                exc,
                delay,
                tries_left,
            )
            branch.metrics.retries += 1
            time.sleep(delay)
    raise AssertionError("unreachable: the last try returns or raises")


def run_capturing(branch: Branch, capture: BranchCapture, node: Any, values: dict[Any, Any]) -> Any:
    """Run `node`, recording what it prints or logs and the distinct warnings it raises
    for the client (`task_logs.BranchCapture`), whether it returns or raises."""
    capture.start_task()
    try:
        return node(values)
    finally:
        logs, caught = capture.finish_task()
        branch.metrics.logs = logs
        seen = {
            (w.category, str(w.message), w.filename, w.lineno): None
            for w in caught[:_MAX_WARNINGS_PER_TASK]
        }
        branch.metrics.warnings = tuple(CapturedWarning(*key) for key in seen)


def claim_stateful(branch: Branch, task: int) -> None:
    """Claim the one run of a stateful task, or raise `RunElsewhere`. The claim names no
    holder: unlike a shared root's, it is never released when its claimant is lost,
    since the state behind the handle may have changed already. A resumed branch that
    finds it claimed goes on from its published output (`await_stateful`)."""
    ctx = branch.ctx
    if not ctx.store.claim(ctx.run_id, [stateful_claim(task)])[0]:
        if branch.resumed:
            await_stateful(branch, task)
        logger.debug("task %r is run by another delivery", ctx.dag.keys[task])
        raise RunElsewhere(ctx.dag.keys[task])


def await_stateful(branch: Branch, task: int) -> None:
    """A resumed branch at a stateful task claimed by another worker: raise `RanElsewhere`
    once its output is published (at once after it runs: `publish_stateful`), waiting
    while a live worker runs it (its heartbeat names the task) and at most
    `kong.wukong.shared_root_wait_s` (then, if its claimant still runs it, that one goes
    on: `RunElsewhere`). `StateLostError` when nobody runs it, nor did:
    its claimant was lost while it ran, and the state may be half changed."""
    ctx = branch.ctx
    ttl_s = float(config.get("heartbeat.ttl_s"))
    since = time.monotonic()

    def settled() -> bool:
        if outputs_in_store(branch, [task]) or ctx.cancelled():
            return True
        live = ctx.store.live_workers(ctx.run_id, ttl_s)
        if any(t == task and w != branch.holder for w, t in live.items()):
            return False  # its claimant runs it still
        return time.monotonic() - since > ttl_s  # a heartbeat can lag one interval

    poll_until(settled, ctx.settings.shared_root_wait_s, max_s=ttl_s / 4)
    if outputs_in_store(branch, [task]):
        raise RanElsewhere(ctx.dag.keys[task])
    live = ctx.store.live_workers(ctx.run_id, ttl_s)
    if ctx.cancelled() or any(t == task and w != branch.holder for w, t in live.items()):
        raise RunElsewhere(ctx.dag.keys[task])  # a live claimant routes its dependents
    raise StateLostError(
        f"stateful task {ctx.dag.keys[task]!r} was claimed by a worker that was lost "
        "before it published the task's output: the state behind its handle may have "
        "changed partway, and a stateful task never runs twice"
    )


@dataclass(frozen=True)
class Routing:
    """How one finished task's dependents are handled (see the module docstring)."""

    direct: list[int]  # single-parent dependents: ready now
    marked: list[int]  # fan-in dependents marked at once (output written first)
    delayed: list[int]  # fan-in dependents handled by delayed I/O
    cluster: bool  # run every ready dependent here
    write: bool  # the output goes to the store now


def publishable(branch: Branch, task: int, value: Any, inputs: dict[Any, Any]) -> Recipe | None:
    """Record the output's size and whether it would be published as a recipe; that
    recipe (`runtime.recompute`), or None to publish the output itself. Recorded for
    subtree members too, which publish nothing: planners read it from the history to
    decide which roots a subtree may run again. A client in this process watching with
    `posttask` callbacks gets the value itself (`RunContext.task_values`)."""
    if branch.ctx.task_values is not None:
        branch.ctx.task_values[task] = value
    metrics = branch.metrics
    metrics.output_bytes = sizeof(value)
    recipe = recipe_for(branch.ctx, task, inputs, metrics, branch.recipes)
    metrics.recipe = recipe is not None
    return recipe


def route_dependents(branch: Branch, task: int, value: Any, recipe: Recipe | None) -> list[int]:
    """Publish what others need, mark fan-ins, invoke workers for dependents that run
    elsewhere, and return the dependents this worker runs next. What is published is
    the output itself, or `recipe` when recomputing it is cheaper than moving it."""
    ctx, metrics = branch.ctx, branch.metrics
    branch.local[task] = value
    if recipe is not None:
        branch.recipes[task] = recipe
        value = recipe
    routing = plan_routing(branch, task, recipe.nbytes if recipe else metrics.output_bytes)
    ready = list(routing.direct)
    wake = task in ctx.output_tasks or ctx.settings.report_starts  # a Profiler times it
    done = Event(EventKind.TASK_DONE, task, branch.worker_id, metrics, wake=wake)
    early = event_is_final_before_commit(branch, routing)
    if routing.write:
        fan_ins = [fan_in(branch, c, task) for c in routing.marked]
        if early:
            metrics.end = time.time()
            branch.pending.append(done)
        ready += commit_output(branch, task, value, fan_ins)
    if routing.delayed:
        ready += delay_then_mark(branch, task, value, routing.delayed)
    here, elsewhere = split_ready(branch, ready, routing.cluster)
    invoke_others(branch, elsewhere)
    if not early:
        metrics.end = time.time()
        branch.pending.append(done)
        flush_if_due(branch, now=done.wake)
    return here


def keep_for_subtree(branch: Branch, task: int, value: Any) -> list[int]:
    """A member of a batched subtree: its dependents in the subtree run later in this
    branch, so the output stays in memory and only the completion event is queued. The
    branch already holds the rest of the subtree in its to-do list: nothing new to run.
    Inputs no other task of the subtree reads are dropped now."""
    for parent in branch.ctx.dag.parents[task]:
        branch.unread[parent] -= 1
        if branch.unread[parent] <= 0:
            branch.local.pop(parent, None)
    branch.local[task] = value
    branch.metrics.end = time.time()
    branch.pending.append(Event(EventKind.TASK_DONE, task, branch.worker_id, branch.metrics))
    flush_if_due(branch)
    fault_point(branch, faults.KillPoint.SUBTREE)
    return []


def share_root(branch: Branch, task: int) -> list[int]:
    """A root several subtrees take in that no earlier run showed cheap to run again
    (`Plan.shared_roots`): it runs once per run, not once per subtree. The first worker
    to claim it runs it and publishes what the store should hold (its recipe when
    recomputing is cheaper than moving, else its value); a worker that loses the claim
    takes that instead: recomputes the recipe, or reads the value. A cheap root is then
    run again where needed, like a known duplicable one, and a costly one is run once
    and read, like any shared output."""
    ctx, metrics = branch.ctx, branch.metrics
    claimed = claim_shared_root(branch, task)
    # A resumed branch does not wait for a claim its lost worker may hold (on Lambda
    # nobody releases it); elsewhere the claim of a lost worker is released (the client,
    # `reinvoke_lost`), and a waiter that then claims it runs the root.
    if not claimed and branch.resumed and not outputs_in_store(branch, [task]):
        claimed = True
    value = _CLAIMED if claimed else await_published(branch, task)
    if value is _CLAIMED:
        values = gather_inputs(branch, task)
        value = execute(branch, task, values)
        fault_point(branch, faults.KillPoint.SHARED_ROOT)
        recipe = publishable(branch, task, value, values)
        commit_output(branch, task, value if recipe is None else recipe, [])
        return keep_for_subtree(branch, task, value)
    value = await_published(branch, task)
    if value is _UNPUBLISHED and ctx.cancelled():
        branch.failed = True  # the run failed (the claimant's error, maybe): stop here
        return []
    if value is _UNPUBLISHED:
        logger.warning(
            "task %r was not published within %.0f s: running it here",
            ctx.dag.keys[task],
            ctx.settings.shared_root_wait_s,
        )
        value = execute(branch, task, gather_inputs(branch, task))
        metrics.recompute_s += metrics.exec_s
        metrics.exec_s = 0.0
    # No completion event: the claimant reports the task (its metrics feed the history);
    # what this took is reported with the next task.
    branch.local[task] = value
    branch.carried = metrics
    return []


def carry_over(source: TaskMetrics, target: TaskMetrics) -> None:
    """Add the store traffic, recomputing and start-up of `source` (a task without an
    event of its own) to `target`'s, so the run's totals and start-up samples keep them."""
    target.read_s += source.read_s
    target.read_bytes += source.read_bytes
    target.cached_bytes += source.cached_bytes
    target.recompute_s += source.recompute_s
    if source.startup_s and not target.startup_s:
        target.startup_s = source.startup_s
        target.cold_start = source.cold_start


_UNPUBLISHED = object()
_CLAIMED = object()


def claim_shared_root(branch: Branch, task: int) -> bool:
    """Claim a shared root, in the name of this invocation (released if it is lost)."""
    ctx = branch.ctx
    return ctx.store.claim(ctx.run_id, [shared_root_claim(task)], branch.holder)[0]


def await_published(branch: Branch, task: int) -> Any:
    """The value of `task` once its claimant published it (recomputed from a recipe),
    polling with backoff; `_CLAIMED` when this worker got the claim (its claimant was
    lost and its claim released); `_UNPUBLISHED` after `kong.wukong.shared_root_wait_s`,
    or as soon as the run is cancelled or closed (a claimant whose root raised fails
    the run)."""
    ctx = branch.ctx
    claimed = False

    def settled() -> bool:
        nonlocal claimed
        if outputs_in_store(branch, [task]) or ctx.cancelled():
            return True
        claimed = claim_shared_root(branch, task)
        return claimed

    published = poll_until(settled, ctx.settings.shared_root_wait_s)
    if claimed:
        return _CLAIMED
    if not published or not outputs_in_store(branch, [task]):
        return _UNPUBLISHED
    fetch_outputs(branch, [task])
    return local_value(branch, task)


def event_is_final_before_commit(branch: Branch, routing: Routing) -> bool:
    """Whether the task's completion event can ride in the commit of its output: nothing
    after the commit can change it when the output goes to exactly one fan-in, which
    this worker at most becomes (no invocation follows). Saves a round-trip at the end
    of most branches (e.g. every leaf of a tree reduction whose sibling is not done).
    The store stamps the written size; write_s then covers serialization only."""
    return (
        branch.ctx.plan.become
        and routing.write
        and not routing.direct
        and not routing.delayed
        and len(routing.marked) == 1
    )


def plan_routing(branch: Branch, task: int, nbytes: int) -> Routing:
    """Decide, from the plan and the size of what would be published (`nbytes`), how
    dependents are handled."""
    ctx = branch.ctx
    dag, plan, settings = ctx.dag, ctx.plan, ctx.settings
    direct = [c for c in dag.children[task] if len(dag.parents[c]) == 1]
    fan_in = [c for c in dag.children[task] if len(dag.parents[c]) > 1]
    # Both optimizations save store traffic; an in-process store moves nothing (a write
    # is a dict insert), so there they would only cost parallelism.
    saves_io = not ctx.store.in_process
    cluster = saves_io and plan.has(task, Optimization.CLUSTER) and nbytes >= settings.cluster_bytes
    invoked = 0 if cluster else len(direct) - (1 if plan.become else 0)
    must_write = (
        plan.write_all_outputs
        or task in ctx.output_tasks
        or (invoked > 0 and not inlinable_size(branch, nbytes))
    )
    delay = (
        saves_io
        and bool(fan_in)
        and not must_write
        and plan.has(task, Optimization.DELAY_IO)
        and nbytes >= settings.delay_io_bytes
    )
    return Routing(
        direct=direct,
        marked=[] if delay else fan_in,
        delayed=fan_in if delay else [],
        cluster=cluster,
        write=must_write or (bool(fan_in) and not delay),
    )


def split_ready(branch: Branch, ready: list[int], cluster: bool) -> tuple[list[int], list[int]]:
    """(run here, invoke elsewhere): all here when clustering, else become one."""
    if cluster:
        return ready, []
    become = choose_become(branch, ready) if branch.ctx.plan.become else None
    if become is None:
        return [], ready
    return [become], [c for c in ready if c != become]


def delay_then_mark(branch: Branch, task: int, value: Any, children: list[int]) -> list[int]:
    """Delayed I/O: wait (bounded, backoff) until this task is the last missing parent of
    a fan-in; then complete it without writing and run the child here. Only one parent
    per fan-in may delay (the first to claim it): two delaying parents would wait for
    each other. Children not claimed, or still waiting at the deadline, get the output
    written, then marked, as usual. While waiting, the plan may have this worker pre-load
    the other parents' outputs or recompute a missing parent (task-dup)."""
    ctx = branch.ctx
    parents = ctx.dag.parents
    won = ctx.store.claim(ctx.run_id, [delay_io_claim(c) for c in children], branch.holder)
    pending = [c for c, w in zip(children, won, strict=True) if w]
    ready: list[int] = []
    if len(pending) < len(children):
        lost = [c for c in children if c not in pending]
        ready += mark_last_or_write(branch, task, value, lost)

    def settled() -> bool:
        """One look at the fan-ins still waited on: complete those where this task is
        the last missing parent, work while waiting; True when none is left."""
        nonlocal pending
        progress = ctx.store.fan_in_progress(ctx.run_id, pending)
        last = [c for c, n in zip(pending, progress, strict=True) if n == len(parents[c]) - 1]
        if last:
            marks = [fan_in(branch, c, task) for c in last]
            ready.extend(ctx.store.commit(ctx.run_id, {}, marks).ready)
            pending = [c for c in pending if c not in last]
        if pending:
            completed = work_while_waiting(branch, task, pending)
            ready.extend(completed)
            pending = [c for c in pending if c not in completed]
        return not pending

    if pending:
        fault_point(branch, faults.KillPoint.DELAYED_OUTPUT)
        poll_until(settled, ctx.settings.delay_io_wait_s)
    if pending:
        fan_ins = [fan_in(branch, c, task) for c in pending]
        ready += commit_output(branch, task, value, fan_ins)
    return ready


def mark_last_or_write(branch: Branch, task: int, value: Any, children: list[int]) -> list[int]:
    """Fan-ins whose claim another parent won: where every other parent has marked
    already (the claimant too: it marks only after giving up waiting), this worker
    completes the fan-in without writing and runs the child itself; the rest get the
    output written, then marked. A parent's mark is counted once however often it is
    sent, so a parent seen as the last one missing is this worker."""
    ctx = branch.ctx
    parents = ctx.dag.parents
    progress = ctx.store.fan_in_progress(ctx.run_id, children)
    last = [c for c, n in zip(children, progress, strict=True) if n == len(parents[c]) - 1]
    ready: list[int] = []
    if last:
        marks = [fan_in(branch, c, task) for c in last]
        ready += ctx.store.commit(ctx.run_id, {}, marks).ready
    rest = [fan_in(branch, c, task) for c in children if c not in last]
    if rest:
        ready += commit_output(branch, task, value, rest)
    return ready


def work_while_waiting(branch: Branch, task: int, children: list[int]) -> list[int]:
    """Pre-load and task-dup for the fan-ins this worker waits on, as the plan says.
    Returns children a duplicate's mark completed (possible only under re-delivery)."""
    plan, parents = branch.ctx.plan, branch.ctx.dag.parents
    flagged = [
        c
        for c in children
        if plan.has(c, Optimization.PRELOAD) or plan.has(c, Optimization.TASK_DUP)
    ]
    if not flagged:
        return []  # nothing to do while waiting: spare the store a round-trip per poll
    missing = {c: [p for p in parents[c] if p != task and p not in branch.local] for c in flagged}
    existing = outputs_in_store(branch, sorted({p for ps in missing.values() for p in ps}))
    preload = [p for c, ps in missing.items() if plan.has(c, Optimization.PRELOAD) for p in ps]
    fetch_outputs(branch, [p for p in dict.fromkeys(preload) if p in existing])
    completed: list[int] = []
    for child, ps in missing.items():
        if plan.has(child, Optimization.TASK_DUP):
            for parent in ps:
                if parent not in existing and parent not in branch.duplicated:
                    completed += duplicate_parent(branch, parent, child)
    return completed


def outputs_in_store(branch: Branch, tasks: list[int]) -> set[int]:
    """Which of `tasks` already have their output in the store."""
    if not tasks:
        return set()
    sizes = branch.ctx.store.sizes(branch.ctx.run_id, [output_key(t) for t in tasks])
    return {t for t, n in zip(tasks, sizes, strict=True) if n > 0}


def fetch_outputs(branch: Branch, tasks: list[int]) -> None:
    """Pre-load: bring outputs that exist into this worker's memory now, while it waits,
    so the dependent starts with its inputs at hand."""
    if not tasks:
        return
    ctx = branch.ctx
    with branch.recorder.timing(Phase.READ):
        values, nbytes = ctx.store.get_many(ctx.run_id, [output_key(t) for t in tasks])
    branch.local.update(zip(tasks, values, strict=True))
    branch.recorder.read(nbytes)


def duplicate_parent(branch: Branch, parent: int, child: int) -> list[int]:
    """Task-dup: recompute a parent that has not reported, when its own inputs are all
    available, then write its output and mark it at the child's fan-in. Outputs are
    write-once and marks are set members, so the original worker's report later is a
    no-op; the write comes first, so whoever completes the fan-in finds the value."""
    ctx = branch.ctx
    branch.duplicated.add(parent)
    parent_inputs = [i.task for i in ctx.dag.inputs[parent] if i.task is not None]
    absent = [p for p in parent_inputs if p not in branch.local]
    if len(outputs_in_store(branch, absent)) < len(absent):
        return []  # its own inputs are not all there yet: nothing to gain
    resource = ctx.plan.tasks[parent].resource
    scratch = TaskMetrics(worker=branch.worker_id, resource=resource, start=time.time())
    try:
        with branch.measuring(scratch):
            value = execute(branch, parent, gather_inputs(branch, parent))
    except Exception as exc:  # the original worker reports the task's real failure
        logger.debug("duplicate of task %r failed: %s", ctx.dag.keys[parent], exc)
        return []
    branch.local[parent] = value
    mark = FanIn(child, parent, len(ctx.dag.parents[child]))
    logger.debug("worker %s duplicated task %r", branch.worker_id, ctx.dag.keys[parent])
    scratch.output_bytes = sizeof(value)
    scratch.end = time.time()
    # The parent is done as far as the client is concerned: it need not wait for the
    # original (often the straggler that made the duplicate worth it); the original's
    # own report later is a duplicate event, ignored.
    done = Event(EventKind.TASK_DONE, parent, branch.worker_id, scratch)
    return ctx.store.commit(ctx.run_id, {output_key(parent): value}, [mark], [done]).ready


def inlinable(branch: Branch, value: Any) -> bool:
    """Whether `value` may travel inside an invocation payload."""
    return branch.ctx.store.in_process or inlinable_size(branch, sizeof(value))


def inlinable_size(branch: Branch, nbytes: int) -> bool:
    """Whether a value of `nbytes` may travel inside an invocation payload."""
    return branch.ctx.store.in_process or nbytes <= branch.ctx.settings.inline_input_bytes


def commit_output(branch: Branch, task: int, value: Any, fan_ins: list[FanIn]) -> list[int]:
    """Write the output (once per branch), then mark the fan-ins, in one store
    round-trip with any batched events. Returns the dependents the marks made ready."""
    ctx = branch.ctx
    events, branch.pending = branch.pending, []
    writes = {} if task in branch.written else {output_key(task): value}
    fault_point(branch, faults.KillPoint.BEFORE_COMMIT)
    with branch.recorder.timing(Phase.WRITE):
        result = ctx.store.commit(ctx.run_id, writes, fan_ins, events)
    fault_point(branch, faults.KillPoint.AFTER_COMMIT)
    branch.written.add(task)
    branch.last_flush = time.monotonic()
    branch.recorder.wrote(result.bytes_written)
    return result.ready


def choose_become(branch: Branch, ready: list[int]) -> int | None:
    """The ready dependent whose inputs this worker holds most of; on a tie the one with
    the longest chain of work after it (`DAG.heights`), then the first. TSQR's second
    QR: its R leads to the SVD factor every U block waits for, its Q to the blocks; R
    first, or the blocks finish early and must write themselves while the factor waits
    in the queue of a bounded backend."""
    if len(ready) < 2:
        return ready[0] if ready else None
    parents, heights = branch.ctx.dag.parents, branch.ctx.dag.heights
    return max(ready, key=lambda c: (sum(p in branch.local for p in parents[c]), heights[c]))


def invoke_others(branch: Branch, children: list[int]) -> None:
    """One new worker per child, each carrying the inputs this worker holds that can
    travel inline; everything else the child reads from the store."""
    if not children:
        return
    ctx = branch.ctx
    with branch.recorder.timing(Phase.INVOKE):
        invocations = [
            Invocation(ctx.run_id, c, inline_inputs(branch, c), resumed=branch.resumed)
            for c in ctx.dag.longest_chains_first(children)
        ]
        ctx.invoker.invoke(ctx, invocations)
    branch.metrics.invocations = len(invocations)


def inline_inputs(branch: Branch, child: int) -> dict[int, Any]:
    """The child's inputs that travel in its payload: recipes, and small values."""
    inline: dict[int, Any] = {}
    for p in branch.ctx.dag.parents[child]:
        if p in branch.recipes and inlinable_size(branch, branch.recipes[p].nbytes):
            inline[p] = branch.recipes[p]
        elif p in branch.local and inlinable(branch, branch.local[p]):
            inline[p] = branch.local[p]
    return inline


def keep_only_inputs_of(branch: Branch, tasks: Iterable[int]) -> None:
    """Drop values no longer needed here: everything else was routed already (written,
    inlined into an invocation, or is read by a task this worker runs next)."""
    parents = branch.ctx.dag.parents
    local, recipes = branch.local, branch.recipes
    branch.local = {p: local[p] for t in tasks for p in parents[t] if p in local}
    branch.recipes = {p: recipes[p] for p in branch.local if p in recipes}


def flush_if_due(branch: Branch, now: bool = False) -> None:
    """Send batched progress events when `now` (the client waits for them) or when the
    last flush is older than kong.run.progress_interval_s."""
    settings = branch.ctx.settings
    if (
        now
        or settings.report_starts
        or time.monotonic() - branch.last_flush > settings.progress_interval_s
    ):
        flush_events(branch)


def flush_events(branch: Branch) -> None:
    """Send batched progress events."""
    if branch.pending:
        events, branch.pending = branch.pending, []
        branch.ctx.store.commit(branch.ctx.run_id, {}, (), events)
    branch.last_flush = time.monotonic()


def report_failure(branch: Branch, task: int, exc: BaseException) -> None:
    """Send the task's exception (with its traceback text) to the client."""
    ctx = branch.ctx
    error: BaseException | bytes | None = exc
    if not ctx.store.in_process:
        try:
            error = serialize.dumps(exc, where=security.place("error", task), what="exception")
        except Exception:
            error = None  # the client raises a RemoteTaskError from the text instead
    event = Event(
        EventKind.TASK_FAILED,
        task,
        branch.worker_id,
        error=error,
        message=f"{type(exc).__name__}: {exc}",
        traceback="".join(traceback.format_exception(exc)),
    )
    branch.pending.append(event)
    flush_events(branch)
