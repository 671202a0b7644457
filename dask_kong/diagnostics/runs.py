"""What a dashboard knows of a run: its graph and plan, and what happened to each task.

A run's keys are deleted when it ends, so whoever shows a run keeps what it needs itself:

* `RunGraph`, the static part: per task its key, function name, parents and what the plan
  chose and predicted. JSON-ready, so that a run announced in the store by one process is
  drawn by a dashboard in another (`diagnostics.publish`).
* `RunRecord`, the moving part: per task its state, metrics and error, fed by events of
  the run's stream (`diagnostics.follow`), by heartbeats (which tasks run now) and at the
  end by the client's `RunSummary`, which holds every task's metrics.
* `RunBook`, the runs a dashboard keeps: the live ones and the latest finished ones, for
  replay; bounded by `kong.dashboard.keep_runs`.

Nothing here imports bokeh or touches a store: it is plain state behind one lock per
record, cheap enough to build while a run starts (the graph itself is built on first use,
by the dashboard's thread, not by the client's).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask.utils import key_split

from ..dag import DAG
from ..metrics.records import RunSummary, TaskMetrics
from ..planning import Plan
from ..store.base import Event, EventKind

logger = logging.getLogger("dask_kong.diagnostics")


class TaskState(enum.StrEnum):
    """Where a task is, as far as the dashboard knows."""

    WAITING = "waiting"  # a parent has not finished
    READY = "ready"  # every parent finished; not seen running yet
    RUNNING = "running"  # a worker's heartbeat names it
    DONE = "done"
    FAILED = "failed"


#: Per-task predictions a plan may carry (TaskPlan attribute names).
PREDICTIONS = (
    "predicted_start_s",
    "predicted_end_s",
    "predicted_exec_s",
    "predicted_read_s",
    "predicted_write_s",
    "predicted_output_bytes",
)


@dataclass(frozen=True)
class RunGraph:
    """The static part of one run: the DAG's structure and the plan, by task number."""

    run_id: str
    planner: str
    backend: str
    store: str
    shape_hash: str
    #: Wall clock when the client started the run (task times are shown from here).
    started: float
    keys: tuple[str, ...]
    names: tuple[str, ...]
    parents: tuple[tuple[int, ...], ...]
    outputs: tuple[int, ...]
    resources: tuple[str, ...]
    optimizations: tuple[str, ...]
    predicted_worker: tuple[int | None, ...]
    #: Prediction name (see PREDICTIONS) -> per task value (None: not predicted).
    predicted: Mapping[str, tuple[float | None, ...]]
    critical_path: tuple[int, ...]
    predicted_makespan_s: float | None

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def has_predictions(self) -> bool:
        """Whether the planner predicted anything (uniform, non_uniform with history)."""
        return self.predicted_makespan_s is not None or any(
            v is not None for values in self.predicted.values() for v in values
        )

    @classmethod
    def from_run(
        cls, run_id: str, dag: DAG, plan: Plan, backend: str, store: str, started: float
    ) -> RunGraph:
        """The graph of a run about to start in this process."""
        tasks = plan.tasks
        return cls(
            run_id=run_id,
            planner=plan.planner,
            backend=backend,
            store=store,
            shape_hash=dag.shape_hash,
            started=started,
            keys=tuple(str(k) for k in dag.keys),
            names=tuple(key_split(k) for k in dag.keys),
            parents=dag.parents,
            outputs=tuple(sorted(dag.output_tasks)),
            resources=tuple(t.resource for t in tasks),
            optimizations=tuple(", ".join(sorted(t.optimizations)) for t in tasks),
            predicted_worker=tuple(t.worker_hint for t in tasks),
            predicted={name: tuple(getattr(t, name) for t in tasks) for name in PREDICTIONS},
            critical_path=tuple(plan.critical_path),
            predicted_makespan_s=plan.predicted_makespan_s,
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> RunGraph:
        raw = json.loads(text)
        return cls(
            **{
                **raw,
                "keys": tuple(raw["keys"]),
                "names": tuple(raw["names"]),
                "parents": tuple(tuple(p) for p in raw["parents"]),
                "outputs": tuple(raw["outputs"]),
                "resources": tuple(raw["resources"]),
                "optimizations": tuple(raw["optimizations"]),
                "predicted_worker": tuple(raw["predicted_worker"]),
                "predicted": {k: tuple(v) for k, v in raw["predicted"].items()},
                "critical_path": tuple(raw["critical_path"]),
            }
        )


@dataclass
class TaskFailure:
    """A task's failure as its event reported it."""

    worker: str
    message: str
    traceback: str


@dataclass
class Outcome:
    """How a finished run ended, from the client's summary (scalar fields only)."""

    succeeded: bool
    makespan_s: float
    error: str
    fields: dict[str, Any]


def summary_fields(summary: RunSummary) -> dict[str, Any]:
    """The scalar fields of a summary, JSON-ready."""
    return summary.as_dict()


#: TaskMetrics fields a published summary carries: the numbers, names and flags (not the
#: captured warnings, which hold Python classes).
_JSON_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(TaskMetrics)
    if f.default is dataclasses.MISSING or isinstance(f.default, (str, int, float, bool))
)


def metrics_to_json(metrics: Mapping[int, TaskMetrics]) -> dict[str, dict[str, Any]]:
    return {str(task): {f: getattr(m, f) for f in _JSON_FIELDS} for task, m in metrics.items()}


def metrics_from_json(raw: Mapping[str, Mapping[str, Any]]) -> dict[int, TaskMetrics]:
    """Metrics from `metrics_to_json`; fields this version does not know are left out."""
    return {
        int(task): TaskMetrics(**{f: v for f, v in m.items() if f in _JSON_FIELDS})
        for task, m in raw.items()
    }


class RunRecord:
    """One run as a dashboard sees it. Thread-safe: a follower thread feeds it while the
    dashboard's thread reads it; `version` grows with every change, so a reader redraws
    only when something changed."""

    def __init__(self, run_id: str, graph: RunGraph | Callable[[], RunGraph]) -> None:
        self.run_id = run_id
        self._graph = graph if isinstance(graph, RunGraph) else None
        self._make_graph = None if isinstance(graph, RunGraph) else graph
        self._lock = threading.Lock()
        self._graph_lock = threading.Lock()  # building a graph must not block `apply`
        self.version = 0
        #: Wall clock when the record was made: a stand-in start before the graph exists.
        self.created = time.time()
        self.metrics: dict[int, TaskMetrics] = {}
        self.failures: dict[int, TaskFailure] = {}
        self.running: dict[int, str] = {}
        self.lost_workers: list[str] = []
        self.outcome: Outcome | None = None
        self._states: tuple[int, list[TaskState]] = (-1, [])
        #: Whatever the views cache per record (a graph layout): built once per run.
        self.cache: dict[str, Any] = {}

    @property
    def graph(self) -> RunGraph:
        """The run's graph, built on first use (by the dashboard, not the client)."""
        with self._graph_lock:
            if self._graph is None:
                assert self._make_graph is not None
                self._graph = self._make_graph()
                self._make_graph = None
            return self._graph

    @property
    def finished(self) -> bool:
        return self.outcome is not None

    def apply(self, events: Iterable[Event]) -> None:
        """Record what events of the run's stream say (duplicates change nothing)."""
        with self._lock:
            for event in events:
                if event.kind is EventKind.TASK_DONE and event.metrics is not None:
                    self.metrics.setdefault(event.task, event.metrics)
                elif event.kind is EventKind.TASK_FAILED:
                    failure = TaskFailure(event.worker, event.message, event.traceback)
                    self.failures.setdefault(event.task, failure)
                elif event.kind is EventKind.WORKER_FAILED:
                    lost = f"{event.worker}: {event.message}"
                    if lost not in self.lost_workers:  # a follower may read events twice
                        self.lost_workers.append(lost)
                self.running.pop(event.task, None)
            self.version += 1

    def set_running(self, live_workers: Mapping[str, int]) -> None:
        """Which tasks workers run now (worker -> task, from heartbeats)."""
        running = {task: worker for worker, task in live_workers.items()}
        with self._lock:
            running = {t: w for t, w in running.items() if t not in self.metrics}
            if running != self.running:
                self.running = running
                self.version += 1

    def finish(
        self,
        fields: dict[str, Any],
        metrics: Mapping[int, TaskMetrics] | None = None,
    ) -> None:
        """The run ended: the client's summary holds every task's metrics, including
        those whose events the dashboard never read (the run's keys are gone now)."""
        with self._lock:
            for task, m in (metrics or {}).items():
                self.metrics.setdefault(task, m)
            self.running = {}
            self.outcome = Outcome(
                succeeded=bool(fields.get("succeeded", True)),
                makespan_s=float(fields.get("makespan_s", 0.0)),
                error=str(fields.get("error", "")),
                fields=dict(fields),
            )
            self.version += 1

    def finish_from_summary(self, summary: RunSummary) -> None:
        self.finish(summary_fields(summary), summary.task_metrics)

    def states(self) -> list[TaskState]:
        """Every task's state now (computed once per version: every view asks)."""
        graph = self.graph
        with self._lock:
            version, cached = self._states
            if version == self.version:
                return cached
            version = self.version
            done, failed, running = set(self.metrics), set(self.failures), set(self.running)
        states = []
        for task, parents in enumerate(graph.parents):
            if task in failed:
                states.append(TaskState.FAILED)
            elif task in done:
                states.append(TaskState.DONE)
            elif task in running:
                states.append(TaskState.RUNNING)
            elif all(p in done for p in parents):
                states.append(TaskState.READY)
            else:
                states.append(TaskState.WAITING)
        with self._lock:
            self._states = (version, states)
        return states

    def snapshot(self) -> tuple[dict[int, TaskMetrics], dict[int, TaskFailure], Outcome | None]:
        """Copies of the metrics, failures and outcome, consistent with each other."""
        with self._lock:
            return dict(self.metrics), dict(self.failures), self.outcome


@dataclass
class RunBook:
    """The runs a dashboard shows: every live run and the latest finished ones."""

    keep: int
    runs: OrderedDict[str, RunRecord] = field(default_factory=OrderedDict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: Grows whenever a run is added, so that pages learn of new runs cheaply.
    version: int = 0

    def add(self, record: RunRecord) -> RunRecord:
        """Keep `record` (or the one already kept under its id); drop the oldest
        finished runs beyond `keep`."""
        with self._lock:
            kept = self.runs.setdefault(record.run_id, record)
            finished = [r for r in self.runs.values() if r.finished]
            for old in finished[: max(0, len(finished) - self.keep)]:
                del self.runs[old.run_id]
            self.version += 1
            return kept

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            return self.runs.get(run_id)

    def latest(self) -> RunRecord | None:
        with self._lock:
            return next(reversed(self.runs.values()), None)

    def all(self) -> list[RunRecord]:
        """Newest first."""
        with self._lock:
            return list(reversed(self.runs.values()))


def planners_of(history: Any, shape_hash: str) -> dict[str, Any]:
    """How each planner did on a DAG shape, from the metrics history (planner -> `Stats`);
    empty when the history cannot say (unknown shape, unreachable Redis)."""
    from ..planning import PLANNERS

    if history is None or not shape_hash:
        return {}
    try:
        stats: dict[str, Any] = history.planner_stats(shape_hash, list(PLANNERS))
    except Exception as exc:  # a view without this chart is still worth showing
        logger.warning("could not read planners of shape %s from the history: %s", shape_hash, exc)
        return {}
    return stats
