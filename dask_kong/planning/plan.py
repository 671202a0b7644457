"""The `Plan`: what a planner decided, and the only thing the runtime asks.

The runtime never guesses a policy: for each task it reads the plan's `TaskPlan` (which
optimizations apply there) and the run-wide switches (`become`, `write_all_outputs`).
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass, field
from typing import Any


class Optimization(enum.StrEnum):
    """Per-task switches a planner can turn on."""

    CLUSTER = "cluster"  # run ready dependents of a large output here instead of shipping it
    DELAY_IO = "delay-io"  # hold a large output while a fan-in waits for its other parents
    PRELOAD = "pre-load"  # fetch inputs of future tasks as soon as they exist
    PREWARM = "pre-warm"  # warm a worker of the task's resource config before it is needed
    TASK_DUP = "task-dup"  # recompute a slow parent instead of waiting for it
    RECOMPUTE = "recompute"  # publish a cheap task's small inputs; readers rerun it


@dataclass(frozen=True)
class TaskPlan:
    """The plan for one task. Predictions are None when no history exists yet."""

    resource: str = "default"
    optimizations: frozenset[Optimization] = frozenset()
    worker_hint: int | None = None
    predicted_start_s: float | None = None
    predicted_end_s: float | None = None
    predicted_exec_s: float | None = None
    predicted_output_bytes: int | None = None
    #: Predicted time getting inputs other workers published (reading them, or
    #: recomputing recipes) and writing the output for others: plan against reality
    #: compares them with `TaskMetrics.read_s` + `recompute_s` and `write_s`.
    predicted_read_s: float | None = None
    predicted_write_s: float | None = None


@dataclass(frozen=True)
class Plan:
    """A planner's decisions for one DAG.

    `become`: a worker continues with one ready dependent (WUKONG); without it every
    dependent is a new invocation (the naive baseline). `write_all_outputs`: every output
    goes to the store, needed elsewhere or not (baseline). `subtrees`: top -> members
    of each exclusive subtree that one invocation runs whole (see `subtrees`); the
    client invokes the tops instead of the members that are roots. `shared_roots`:
    roots several subtrees take in although no earlier run showed them cheap to run
    again; the first subtree to reach one runs and publishes it, the others take what
    it published (`runtime.worker.share_root`).
    """

    planner: str
    tasks: tuple[TaskPlan, ...]
    become: bool = True
    write_all_outputs: bool = False
    critical_path: tuple[int, ...] = ()
    predicted_makespan_s: float | None = None
    notes: dict[str, str] = field(default_factory=dict)
    subtrees: dict[int, tuple[int, ...]] = field(default_factory=dict)
    shared_roots: frozenset[int] = frozenset()

    @functools.cached_property
    def subtree_members(self) -> frozenset[int]:
        """Tasks that run inside a batched subtree (its top excluded)."""
        return frozenset(m for members in self.subtrees.values() for m in members)

    def start_tasks(self, roots: tuple[int, ...]) -> tuple[int, ...]:
        """Where the client starts branches: every root not batched, every subtree top."""
        members = self.subtree_members
        return tuple(sorted({r for r in roots if r not in members} | self.subtrees.keys()))

    def has(self, task: int, optimization: Optimization) -> bool:
        """Whether `optimization` applies to `task`."""
        return optimization in self.tasks[task].optimizations


@dataclass(frozen=True)
class ResourceSpec:
    """A worker size a planner may choose (like a Lambda memory size)."""

    name: str
    memory_mb: int
    cpus: int


@dataclass(frozen=True)
class PlanningContext:
    """What a planner may consult besides the DAG.

    `history` is the metrics history of earlier runs (None: no history, e.g. naive);
    `resources` the worker sizes the backend offers, default first; `sla` the percentile
    ("p50", "p90", ...) predictions are taken at; `concurrency` how many workers the
    backend runs at once (None: unbounded, like AWS Lambda); `shared_store` whether
    outputs that move between workers cross a store (Redis: moving costs time) rather
    than stay in this process (free).
    """

    history: Any = None
    resources: tuple[ResourceSpec, ...] = (ResourceSpec("default", 1024, 1),)
    sla: str = "p50"
    concurrency: int | None = None
    shared_store: bool = False

    @property
    def default_resource(self) -> str:
        return self.resources[0].name
