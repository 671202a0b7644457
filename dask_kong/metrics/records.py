"""Measurements of one task and summaries of one run.

A worker fills one `TaskMetrics` per task and ships it inside the task's completion event,
so the client builds the run summary without extra store traffic. Timestamps are wall
clock (comparable across processes on one machine); durations are perf_counter deltas.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class CapturedWarning:
    """A warning a task raised in a worker process, to be raised again in the client (as
    dask's local schedulers would, where the task runs in the caller's process)."""

    category: type[Warning]
    message: str
    filename: str
    lineno: int


@dataclass(slots=True)
class TaskMetrics:
    """What happened to one task in one worker."""

    worker: str  # the invocation (branch) that ran the task
    resource: str = "default"
    # the process and thread that ran it: a warm container serves many invocations
    container: str = ""
    start: float = 0.0
    end: float = 0.0
    read_s: float = 0.0
    read_bytes: int = 0
    # session data (the user's uploaded data, persisted values) the worker's process
    # had read before and took from its cache instead of the store (runtime.data_cache)
    cached_bytes: int = 0
    exec_s: float = 0.0
    write_s: float = 0.0
    written_bytes: int = 0
    invoke_s: float = 0.0
    invocations: int = 0
    output_bytes: int = 0
    # time spent recomputing inputs published as recipes (runtime.recompute), not exec_s
    recompute_s: float = 0.0
    # first task of an invocation: seconds from the invocation to this task's start, less
    # any wait for a concurrency slot (0: not a first task); and whether it was cold
    startup_s: float = 0.0
    cold_start: bool = False
    # the output was published as a recipe: readers recomputed it (runtime.recompute)
    recipe: bool = False
    # the task read or made a handle to state (dask_kong.values): it never runs twice
    stateful: bool = False
    # warnings the task raised in a worker process, distinct ones, for the client
    warnings: tuple[CapturedWarning, ...] = ()
    # tries after the first that raised (task retries: kong.run.retries, retries=)
    retries: int = 0
    # what the task printed or logged in a worker process (runtime.task_logs), bounded
    logs: str = ""


@dataclass
class RunSummary:
    """What `dask_kong.last_run()` returns: one run, as observed by the client."""

    run_id: str
    tasks: int
    #: Distinct workers (containers: a worker process, a pool thread, a Lambda
    #: instance) that ran tasks; a warm one serves many invocations.
    workers: int
    #: Invocations made, the client's included.
    invocations: int
    makespan_s: float
    #: Bytes the workers wrote to the store (task outputs, serialized size; in the
    #: embedded mode `dask.sizeof` estimates). The client's uploads are apart below.
    bytes_written: int
    #: Bytes read from the store: by the workers (task outputs and the uploaded data
    #: their tasks read) and by the client (the requested values, client_bytes_read).
    bytes_read: int
    planner: str
    backend: str
    store: str
    submit_s: float = 0.0
    translate_s: float = 0.0
    succeeded: bool = True
    shape_hash: str = ""
    #: Invocations that ran at least one task (each runs one branch of the DAG).
    branches: int = 0
    #: Why the run failed ("" when it succeeded): the exception's type and message.
    error: str = ""
    #: Of bytes_read, what the client read (the requested values).
    client_bytes_read: int = 0
    #: Requested outputs the client read while the run was still going (runtime.prefetch).
    outputs_prefetched: int = 0
    #: Bytes the client wrote to the store for the run: the user's data embedded in the
    #: graph (`data_bytes_uploaded`) and the run's spec when too large to travel inline.
    #: Not part of bytes_written, which counts what the workers wrote.
    client_bytes_uploaded: int = 0
    #: Of client_bytes_uploaded, the embedded data (`da.from_array` chunks,
    #: `dd.from_pandas` partitions) the session's store did not hold yet (runtime.upload).
    data_bytes_uploaded: int = 0
    #: Embedded data the session's store already held from an earlier run (same content
    #: token), so not uploaded again (sizes as `dask.sizeof` estimates them).
    data_bytes_reused: int = 0
    #: Seconds the client spent tokenizing and uploading embedded data; the run's first
    #: branches start before the upload ends, so this overlaps the makespan.
    upload_s: float = 0.0
    #: Session data (the user's uploaded data, persisted values) that workers took from
    #: their process's cache, read by them in an earlier task, invocation or run, instead
    #: of reading it from the store again (`dask.sizeof` sizes; not part of bytes_read).
    bytes_cached: int = 0
    #: Recovery (issue #13): branches invoked again because their worker was lost, and
    #: completion events of tasks already reported done (a lost worker's tasks run
    #: again, or a duplicate delivery's).
    reinvocations: int = 0
    recomputed_tasks: int = 0
    #: wall-clock times of those re-invocations (benchmarks pair them with kill times)
    reinvoked_at: list[float] = field(default_factory=list, repr=False)
    plan: Any = field(default=None, repr=False)
    #: The DAG the run executed (for reports: `planning.report.compare_plan(dag, plan, ...)`).
    dag: Any = field(default=None, repr=False)
    task_metrics: dict[int, TaskMetrics] = field(default_factory=dict, repr=False)

    def task_logs(self) -> dict[Any, str]:
        """What each task printed or logged in a worker process, by key (tasks that
        wrote nothing are left out; each bounded by kong.logs.max_task_bytes)."""
        keys = self.dag.keys if self.dag is not None else None
        return {
            (keys[task] if keys is not None else task): m.logs
            for task, m in sorted(self.task_metrics.items())
            if m.logs
        }

    def as_dict(self) -> dict[str, Any]:
        """The scalar fields, JSON-ready (no per-task detail, no plan, no DAG)."""
        skipped = {"task_metrics", "plan", "dag"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skipped}
