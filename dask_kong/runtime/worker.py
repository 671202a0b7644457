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

`run_branch` reads top to bottom like dask/local.py: it only calls `gather_inputs`,
`execute`, `route_dependents`, `flush_events` and `report_failure`.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from dask.sizeof import sizeof

from .. import serialize
from ..constants import data_key, output_key
from ..errors import MissingOutputError
from ..metrics.records import TaskMetrics
from ..store.base import Event, EventKind, FanIn, MissingKeyError
from .context import Invocation, RunContext

logger = logging.getLogger("dask_kong.runtime")

_worker_ids = itertools.count()


def new_worker_id(run_id: str) -> str:
    """A short id for one invocation of one run, unique across the run's processes."""
    return f"{run_id[:8]}-{os.getpid()}-{next(_worker_ids)}"


@dataclass
class Branch:
    """State of one worker: what it holds in memory and what it has yet to report."""

    ctx: RunContext
    worker_id: str
    local: dict[int, Any]
    data: dict[str, Any] = field(default_factory=dict)
    pending: list[Event] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)


def run_branch(ctx: RunContext, invocation: Invocation, worker_id: str | None = None) -> None:
    """Run tasks from `invocation.start` until this branch has nothing ready to become."""
    branch = Branch(ctx, worker_id or new_worker_id(ctx.run_id), dict(invocation.inputs))
    task: int | None = invocation.start
    try:
        while task is not None and not ctx.cancelled():
            ctx.heartbeater.beat(ctx.run_id, branch.worker_id, task)
            task = run_task(branch, task)
        flush_events(branch)
    except Exception as exc:  # store unreachable while flushing: the client's stall check
        logger.error("worker %s lost contact with the store: %s", branch.worker_id, exc)
    finally:
        ctx.heartbeater.done(ctx.run_id, branch.worker_id)


def run_task(branch: Branch, task: int) -> int | None:
    """Run one task; the task to continue with, or None when the branch ends."""
    metrics = TaskMetrics(worker=branch.worker_id, start=time.time())
    try:
        values = gather_inputs(branch, task, metrics)
        value = execute(branch, task, values, metrics)
        return route_dependents(branch, task, value, metrics)
    except Exception as exc:
        report_failure(branch, task, exc)
        return None


def gather_inputs(branch: Branch, task: int, metrics: TaskMetrics) -> dict[Any, Any]:
    """Input values of `task` keyed as its node expects: local memory and the payload
    first, the DAG's in-process data next, the store last (one round-trip for all)."""
    dag = branch.ctx.dag
    values: dict[Any, Any] = {}
    remote: list[tuple[Any, str]] = []
    for inp in dag.inputs[task]:
        if inp.task is not None:
            if inp.task in branch.local:
                values[inp.key] = branch.local[inp.task]
            else:
                remote.append((inp.key, output_key(inp.task)))
        else:
            name = inp.data or ""
            if name in dag.data:
                values[inp.key] = dag.data[name]
            elif name in branch.data:
                values[inp.key] = branch.data[name]
            else:
                remote.append((inp.key, data_key(name)))
    if remote:
        fetch_remote(branch, task, remote, values, metrics)
    return values


def fetch_remote(
    branch: Branch,
    task: int,
    remote: list[tuple[Any, str]],
    values: dict[Any, Any],
    metrics: TaskMetrics,
) -> None:
    """Read inputs this worker does not hold from the store, and keep them."""
    started = time.perf_counter()
    try:
        fetched, nbytes = branch.ctx.store.get_many(branch.ctx.run_id, [k for _, k in remote])
    except MissingKeyError as exc:
        key = branch.ctx.dag.keys[task]
        raise MissingOutputError(f"input of task {key!r} is missing: {exc}") from exc
    metrics.read_s += time.perf_counter() - started
    metrics.read_bytes += nbytes
    for (dask_key, store_key), value in zip(remote, fetched, strict=True):
        values[dask_key] = value
        if store_key.startswith("out:"):
            branch.local[int(store_key[4:])] = value
        else:
            branch.data[store_key[5:]] = value


def execute(branch: Branch, task: int, values: dict[Any, Any], metrics: TaskMetrics) -> Any:
    """Run the task's node on its inputs."""
    started = time.perf_counter()
    value = branch.ctx.dag.nodes[task](values)
    metrics.exec_s = time.perf_counter() - started
    return value


def route_dependents(branch: Branch, task: int, value: Any, metrics: TaskMetrics) -> int | None:
    """Publish what others need, mark fan-ins, then become one ready dependent and invoke
    workers for the rest. Returns the dependent this worker continues with."""
    ctx = branch.ctx
    dag, plan = ctx.dag, ctx.plan
    branch.local[task] = value
    direct = [c for c in dag.children[task] if len(dag.parents[c]) == 1]
    fan_ins = [
        FanIn(c, task, len(dag.parents[c])) for c in dag.children[task] if len(dag.parents[c]) > 1
    ]
    is_output = task in ctx.output_tasks
    ready = direct
    if needs_store(branch, task, value, len(direct), bool(fan_ins), is_output):
        ready = direct + commit_output(branch, task, value, fan_ins, metrics)
    become = choose_become(branch, ready) if plan.become else None
    invoke_others(branch, [c for c in ready if c != become], metrics)
    metrics.end = time.time()
    branch.pending.append(
        Event(EventKind.TASK_DONE, task, branch.worker_id, metrics, wake=is_output)
    )
    if is_output or time.monotonic() - branch.last_flush > ctx.settings.progress_interval_s:
        flush_events(branch)
    keep_only_inputs_of(branch, become)
    return become


def needs_store(
    branch: Branch, task: int, value: Any, n_direct: int, has_fan_in: bool, is_output: bool
) -> bool:
    """Whether the output must be written: requested, read by a fan-in elsewhere, or
    shipped to an invoked dependent but too large to travel inline."""
    ctx = branch.ctx
    if ctx.plan.write_all_outputs or is_output or has_fan_in:
        return True
    invoked = n_direct - (1 if ctx.plan.become else 0)
    return invoked > 0 and not inlinable(branch, value)


def inlinable(branch: Branch, value: Any) -> bool:
    """Whether `value` may travel inside an invocation payload."""
    store = branch.ctx.store
    return store.in_process or sizeof(value) <= branch.ctx.settings.inline_input_bytes


def commit_output(
    branch: Branch, task: int, value: Any, fan_ins: list[FanIn], metrics: TaskMetrics
) -> list[int]:
    """Write the output, then mark the fan-ins, in one store round-trip (with any batched
    events). Returns the fan-in dependents this worker's mark made ready."""
    ctx = branch.ctx
    started = time.perf_counter()
    events, branch.pending = branch.pending, []
    result = ctx.store.commit(ctx.run_id, {output_key(task): value}, fan_ins, events)
    branch.last_flush = time.monotonic()
    metrics.write_s = time.perf_counter() - started
    metrics.written_bytes = result.bytes_written
    return result.ready


def choose_become(branch: Branch, ready: list[int]) -> int | None:
    """The ready dependent whose inputs this worker holds most of (first on ties)."""
    if not ready:
        return None
    parents = branch.ctx.dag.parents
    return max(ready, key=lambda c: sum(p in branch.local for p in parents[c]))


def invoke_others(branch: Branch, children: list[int], metrics: TaskMetrics) -> None:
    """One new worker per child, each carrying the inputs this worker holds that can
    travel inline; everything else the child reads from the store."""
    if not children:
        return
    ctx = branch.ctx
    started = time.perf_counter()
    invocations = [Invocation(ctx.run_id, c, inline_inputs(branch, c)) for c in children]
    ctx.invoker.invoke(ctx, invocations)
    metrics.invoke_s = time.perf_counter() - started
    metrics.invocations = len(invocations)


def inline_inputs(branch: Branch, child: int) -> dict[int, Any]:
    parents = branch.ctx.dag.parents[child]
    return {
        p: branch.local[p]
        for p in parents
        if p in branch.local and inlinable(branch, branch.local[p])
    }


def keep_only_inputs_of(branch: Branch, task: int | None) -> None:
    """Drop values no longer needed here: everything else was routed already (written,
    inlined into an invocation, or is read by the task we continue with)."""
    if task is None:
        branch.local.clear()
        return
    needed = branch.ctx.dag.parents[task]
    branch.local = {p: branch.local[p] for p in needed if p in branch.local}


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
            error = serialize.dumps(exc, what="exception")
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
