"""Predicted timelines: which worker runs each task, and when (a forward pass).

The model follows WUKONG. A worker runs a chain of tasks: after a task it continues
("becomes") one dependent; every other dependent starts a new worker. `assign_workers`
continues each task on the worker of its parent with the largest (predicted) output,
if no sibling took that worker, else the next largest, else a new worker. Moving an
output between workers costs a transfer (write + read); an output that stays in its
worker costs nothing.

`simulate` then walks the DAG in topological order (task indices are one):

    arrival(p -> t) = end(p) + (0 if p ran on t's worker else transfer(p))
    start(t)        = max(arrival(p -> t) for parents p, default 0)
                      + (invoke + start-up, if t is its worker's first task)
    end(t)          = start(t) + exec(t on its worker's resource config)

Start-up is predicted cold for a worker of the default config and warm for any other
config (planners pre-warm those: Optimization.PREWARM). Unknown predictions count as 0 s.
The critical path runs from the latest-finishing output back through each task's
binding parent: the one whose output arrived last.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

from dask.utils import key_split

from .. import config
from ..dag import DAG
from .history import task_profile_name
from .predict import Predictor


@dataclass(frozen=True)
class Sizes:
    """Predicted bytes per task (None: unknown)."""

    input_bytes: tuple[float | None, ...]
    output_bytes: tuple[float | None, ...]


def task_functions(dag: DAG) -> tuple[str, ...]:
    """The history name of every task's function: `key_split` of its key."""
    return tuple(key_split(key) for key in dag.keys)


def is_profiled(dag: DAG) -> bool:
    """Whether the history keeps per-task profiles of `dag` (kong.planning.profile_max_tasks)."""
    return len(dag) <= int(config.get("planning.profile_max_tasks"))


def task_profiles(dag: DAG) -> tuple[str, ...]:
    """The history name of every task's own profile in this DAG shape (empty names for
    DAGs above kong.planning.profile_max_tasks, which are not profiled per task)."""
    if not is_profiled(dag):
        return ("",) * len(dag)
    return tuple(task_profile_name(dag, t) for t in range(len(dag)))


def history_name(predictor: Predictor, profile: str, function: str) -> tuple[str, bool]:
    """The name predictions of one task come from: its own profile when the history has
    one (True), else its function's (False)."""
    if profile and predictor.knows(profile):
        return profile, True
    return function, False


def predict_sizes(dag: DAG, predictor: Predictor, resource: str) -> Sizes:
    """Input and output bytes of every task, outputs propagated through the DAG. A task's
    input size is known only when all its parents' output sizes are (roots read data
    nodes, whose sizes the history does not hold)."""
    functions = task_functions(dag)
    profiles = task_profiles(dag)
    inputs: list[float | None] = []
    outputs: list[float | None] = []
    for task, parents in enumerate(dag.parents):
        sizes = [outputs[p] for p in parents]
        known = [s for s in sizes if s is not None]
        input_bytes = sum(known) if parents and len(known) == len(sizes) else None
        inputs.append(input_bytes)
        name, own = history_name(predictor, profiles[task], functions[task])
        outputs.append(predictor.output_bytes(name, resource, None if own else input_bytes))
    return Sizes(tuple(inputs), tuple(outputs))


def assign_workers(dag: DAG, output_bytes: Sequence[float | None]) -> tuple[int, ...]:
    """Worker number of every task (0, 1, ... in order of first task), WUKONG-style.

    A worker continues with at most one child of each task it ran. A task continues on
    the worker of its parent with the largest output, unless a sibling took that worker,
    then on the next largest, else it starts a new worker. Siblings contend for their
    parent's worker in order of their own output size, largest first, so large data
    stays put. Remaining ties go to the lower task index.
    """
    size = [s or 0.0 for s in output_bytes]
    edges = sorted(
        ((p, c) for c, parents in enumerate(dag.parents) for p in parents),
        key=lambda edge: (-size[edge[0]], -size[edge[1]], edge[1], edge[0]),
    )
    heir: dict[int, int] = {}  # task -> the child that continues on its worker
    continues: dict[int, int] = {}  # task -> the parent whose worker it continues on
    for parent, child in edges:
        if parent not in heir and child not in continues:
            heir[parent] = child
            continues[child] = parent
    workers: list[int] = []
    count = 0
    for task in range(len(dag)):
        if task in continues:
            workers.append(workers[continues[task]])
        else:
            workers.append(count)
            count += 1
    return tuple(workers)


def first_tasks(workers: Sequence[int]) -> dict[int, int]:
    """Worker -> its first task."""
    first: dict[int, int] = {}
    for task, worker in enumerate(workers):
        first.setdefault(worker, task)
    return first


class Estimates:
    """Predictions for one DAG, cached: `simulate` asks them many times (non_uniform
    re-simulates per candidate downgrade). Unknown values are None."""

    def __init__(self, dag: DAG, predictor: Predictor, sizes: Sizes, default_resource: str) -> None:
        self.dag = dag
        self.predictor = predictor
        self.sizes = sizes
        self.default_resource = default_resource
        self.functions = task_functions(dag)
        self.profiles = task_profiles(dag)
        self._exec: dict[tuple[int, str], float | None] = {}
        self._transfer: dict[tuple[int, str, str], float | None] = {}
        self._overhead: dict[str, float] = {}

    def exec_s(self, task: int, resource: str) -> float | None:
        key = (task, resource)
        if key not in self._exec:
            name, own = history_name(self.predictor, self.profiles[task], self.functions[task])
            input_bytes = None if own else self.sizes.input_bytes[task]
            self._exec[key] = self.predictor.exec_s(name, resource, input_bytes)
        return self._exec[key]

    def transfer_s(self, task: int, source: str, dest: str) -> float | None:
        """Moving `task`'s output from a worker of `source` to one of `dest`."""
        write, read = self.write_s(task, source), self.read_s(task, source, dest)
        return None if write is None and read is None else (write or 0.0) + (read or 0.0)

    def publishes_recipe(self, task: int, resource: str) -> bool:
        name, _ = history_name(self.predictor, self.profiles[task], self.functions[task])
        return self.predictor.publishes_recipe(name, resource)

    def is_stateful(self, task: int) -> bool:
        """Whether the history saw `task`'s function read or make a handle to state."""
        name, _ = history_name(self.predictor, self.profiles[task], self.functions[task])
        return self.predictor.is_stateful(name)

    def write_s(self, task: int, resource: str) -> float | None:
        """The writing worker's time to publish `task`'s output (a recipe: ~nothing)."""
        key = (task, resource, "")
        if key not in self._transfer:
            if self.publishes_recipe(task, resource):
                self._transfer[key] = 0.0
            else:
                nbytes = self.sizes.output_bytes[task]
                self._transfer[key] = self.predictor.write_s(nbytes, resource)
        return self._transfer[key]

    def read_s(self, task: int, source: str, dest: str) -> float | None:
        """A worker of `dest` getting `task`'s output published by one of `source`: a
        store read, or recomputing it where the task publishes a recipe."""
        key = (task, source, dest)
        if key not in self._transfer:
            if self.publishes_recipe(task, source):
                self._transfer[key] = self.exec_s(task, dest)
            else:
                nbytes = self.sizes.output_bytes[task]
                self._transfer[key] = self.predictor.read_s(nbytes, dest)
        return self._transfer[key]

    def overhead_s(self, resource: str) -> float:
        """Invocation plus start-up before a new worker of `resource` runs its first task:
        on the default config the start-ups observed (warm and cold, as the backend's pool
        mixed them), on another config a warm one (planners pre-warm those)."""
        if resource not in self._overhead:
            predictor = self.predictor
            if resource == self.default_resource:
                startup = predictor.startup_s(resource, None)
                if startup is None:
                    startup = predictor.startup_s(resource, True)
            else:
                startup = predictor.startup_s(resource, False)
            invoke = predictor.invoke_s(resource) or 0.0
            self._overhead[resource] = invoke + (startup or 0.0)
        return self._overhead[resource]


@dataclass(frozen=True)
class Timeline:
    """A predicted run: per task its worker, config, times; and the critical path."""

    workers: tuple[int, ...]
    resources: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...]
    exec_s: tuple[float | None, ...]
    overhead_s: tuple[float, ...]
    #: Per task: reading (or recomputing) inputs other workers published, and writing
    #: its output for other workers or the client.
    read_s: tuple[float, ...]
    write_s: tuple[float, ...]
    #: Per task: parent -> when the parent's output is usable by the task's worker.
    arrivals: tuple[dict[int, float], ...]
    critical_path: tuple[int, ...]
    makespan_s: float

    def binding_parent(self, task: int) -> int | None:
        """The parent whose output arrived last (ties: the lower index)."""
        arrivals = self.arrivals[task]
        if not arrivals:
            return None
        return max(arrivals, key=lambda p: (arrivals[p], -p))


def simulate(
    dag: DAG,
    workers: Sequence[int],
    worker_resources: Sequence[str],
    estimates: Estimates,
    concurrency: int | None = None,
) -> Timeline:
    """The forward pass described in the module docstring. With a `concurrency` limit it
    is a list schedule: tasks start in the order their inputs arrive, each on the first
    of `concurrency` slots to come free (a worker runs one task at a time)."""
    first = first_tasks(workers)
    n = len(dag)
    resources = [worker_resources[w] for w in workers]
    start = [0.0] * n
    end = [0.0] * n
    execs: list[float | None] = [None] * n
    overheads = [0.0] * n
    read_s = [0.0] * n
    write_s = [0.0] * n
    arrivals: list[dict[int, float]] = [{} for _ in range(n)]
    slots = [0.0] * concurrency if concurrency else None
    waiting = [len(parents) for parents in dag.parents]
    ready = [(0.0, t) for t in range(n) if not dag.parents[t]]
    heapq.heapify(ready)
    while ready:
        ready_at, task = heapq.heappop(ready)
        resource = resources[task]
        if first[workers[task]] == task:
            overheads[task] = estimates.overhead_s(resource)
        free_at = heapq.heappop(slots) if slots is not None else 0.0
        read_s[task] = sum(arrivals[task][p] - end[p] for p in dag.parents[task])
        start[task] = max(ready_at, free_at + read_s[task]) + overheads[task]
        execs[task] = estimates.exec_s(task, resource)
        write_s[task] = write_cost(dag, task, workers, resource, estimates)
        end[task] = start[task] + (execs[task] or 0.0) + write_s[task]
        if slots is not None:
            heapq.heappush(slots, end[task])
        for child in dag.children[task]:
            moved = workers[task] != workers[child]
            read = estimates.read_s(task, resource, resources[child]) if moved else 0.0
            arrivals[child][task] = end[task] + (read or 0.0)
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (max(arrivals[child].values()), child))
    timeline = Timeline(
        workers=tuple(workers),
        resources=tuple(resources),
        start=tuple(start),
        end=tuple(end),
        exec_s=tuple(execs),
        overhead_s=tuple(overheads),
        read_s=tuple(read_s),
        write_s=tuple(write_s),
        arrivals=tuple(arrivals),
        critical_path=(),
        makespan_s=max(end, default=0.0),
    )
    return _with_critical_path(dag, timeline)


def write_cost(
    dag: DAG, task: int, workers: Sequence[int], resource: str, estimates: Estimates
) -> float:
    """The time `task`'s worker spends writing its output, which it does only when
    another worker reads it or the client wants it (runtime.worker.plan_routing)."""
    moved = any(workers[c] != workers[task] for c in dag.children[task])
    if not moved and task not in dag.output_tasks:
        return 0.0
    return estimates.write_s(task, resource) or 0.0


def _with_critical_path(dag: DAG, timeline: Timeline) -> Timeline:
    outputs = dag.output_tasks or frozenset(range(len(dag)))
    if not outputs:
        return timeline
    task: int | None = max(outputs, key=lambda t: (timeline.end[t], -t))
    path = []
    while task is not None:
        path.append(task)
        task = timeline.binding_parent(task)
    return dataclasses.replace(timeline, critical_path=tuple(reversed(path)))


def worker_slack(dag: DAG, timeline: Timeline) -> dict[int, float]:
    """Per worker, how much later its tasks could finish without delaying the makespan
    (the least slack of its tasks; a backward pass over the same model)."""
    n = len(dag)
    latest_end = [timeline.makespan_s] * n
    latest_start = [0.0] * n
    for task in reversed(range(n)):
        for child in dag.children[task]:
            delay = timeline.arrivals[child][task] - timeline.end[task]  # the transfer
            bound = latest_start[child] - timeline.overhead_s[child] - delay
            latest_end[task] = min(latest_end[task], bound)
        latest_start[task] = latest_end[task] - (timeline.exec_s[task] or 0.0)
    slack: dict[int, float] = {}
    for task, worker in enumerate(timeline.workers):
        task_slack = latest_end[task] - timeline.end[task]
        slack[worker] = min(slack.get(worker, task_slack), task_slack)
    return slack
