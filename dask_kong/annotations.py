"""What dask-kong makes of `dask.annotate(...)` and of `dask.compute` keywords.

Honoured:
- `priority`: a bounded backend's queue starts the invocations of higher-priority tasks
  first (`DAG.urgency`), as distributed's scheduler does;
- `retries`: a task that raises runs again in its worker (issue #13; the session puts
  them in the run's settings, `task_annotations`);
- `resources`: the task runs on the smallest resource config of the backend that offers
  what it asks (`memory_mb` or `memory` in bytes, `cpus` or `CPU`), or on the config it
  names (`resources="large"`); a request no config meets is an error naming it.

Everything else (an annotation such as `workers`, a keyword such as `num_workers`)
warns once by name through `dask_kong.options`: never silently ignored.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import dask

from .dag import DAG
from .options import warn_unsupported
from .planning import Plan
from .planning.plan import ResourceSpec

#: Annotations acted on here.
HONOURED = frozenset({"priority", "resources", "retries"})
#: Keywords of `dask.compute` the session itself consumes.
COMPUTE_KEYWORDS = frozenset({"planner", "callbacks", "retries"})
#: Names a resources annotation may use for memory in MB, memory in bytes, and cores.
_MEMORY_MB = ("memory_mb", "MEMORY_MB")
_MEMORY_BYTES = ("memory", "MEMORY")
_CPUS = ("cpus", "CPU", "cpu", "CPUS")


def annotations_of(dsk: Any) -> dict[str, dict[Any, Any]]:
    """Per annotation name, its value by key: the graph's own (`__dask_annotations__`)
    and those active around the compute call (`dask.get_annotations()`, for every key)."""
    found: dict[str, dict[Any, Any]] = {}
    if hasattr(dsk, "__dask_annotations__"):
        found = {name: dict(by_key) for name, by_key in dsk.__dask_annotations__().items()}
    for name, value in dask.get_annotations().items():
        found.setdefault(name, {})[None] = value  # None: every key without its own
    return found


def warn_unhonoured(annotations: Mapping[str, Any], keywords: Mapping[str, Any]) -> None:
    """Warn once per name for annotations and compute keywords kong does not act on."""
    warn_unsupported([n for n in annotations if n not in HONOURED], "dask.annotate")
    warn_unsupported([k for k in keywords if k not in COMPUTE_KEYWORDS], "dask.compute")


def value_for(by_key: Mapping[Any, Any], key: Any) -> Any:
    """The annotation's value for `key` (its own, else the call-wide one, else None)."""
    return by_key.get(key, by_key.get(None))


def task_annotations(dag: DAG, by_key: Mapping[Any, Any] | None) -> Iterator[tuple[int, Any, Any]]:
    """(task, key, value) for every task of `dag` with a value of the annotation
    (`retries`: issue #13, read by the session into the run's settings)."""
    if not by_key:
        return
    for task, key in enumerate(dag.keys):
        value = value_for(by_key, key)
        if value is not None:
            yield task, key, value


def with_priorities(dag: DAG, by_key: Mapping[Any, Any] | None) -> DAG:
    """`dag` with the user's priorities set, when any task has one."""
    if not by_key:
        return dag
    priorities = []
    for key in dag.keys:
        value = value_for(by_key, key)
        if value is not None and not isinstance(value, (int, float)):
            raise TypeError(f"priority annotation of {key!r} must be a number, not {value!r}")
        priorities.append(int(value or 0))
    return replace(dag, priorities=tuple(priorities)) if any(priorities) else dag


def with_resources(
    dag: DAG, plan: Plan, by_key: Mapping[Any, Any] | None, offered: Sequence[ResourceSpec]
) -> Plan:
    """`plan` with each annotated task on the resource config its annotation asks for."""
    if not by_key:
        return plan
    tasks = list(plan.tasks)
    for task, key in enumerate(dag.keys):
        wanted = value_for(by_key, key)
        if wanted is not None:
            tasks[task] = replace(tasks[task], resource=config_for(wanted, offered, key))
    return replace(plan, tasks=tuple(tasks))


def config_for(wanted: Any, offered: Sequence[ResourceSpec], key: Any) -> str:
    """Name of the smallest offered config meeting `wanted` (a config name, or a dict
    of memory and cores); `ValueError` naming the task when none does."""
    names = [spec.name for spec in offered]
    if isinstance(wanted, str):
        if wanted not in names:
            raise ValueError(f"task {key!r}: resources={wanted!r} is not one of {names}")
        return wanted
    if not isinstance(wanted, Mapping):
        raise TypeError(f"task {key!r}: resources must be a dict or a config name")
    memory_mb, cpus = requested(wanted)
    fitting = [s for s in offered if s.memory_mb >= memory_mb and s.cpus >= cpus]
    if offered and all(s.memory_mb == 0 for s in offered):
        fitting = [s for s in offered if s.cpus >= cpus] or list(offered[:1])  # threads
    if not fitting:
        raise ValueError(
            f"task {key!r}: no resource config offers {dict(wanted)!r}; offered: "
            + ", ".join(f"{s.name} ({s.memory_mb} MB, {s.cpus} cpus)" for s in offered)
        )
    return min(fitting, key=lambda s: (s.memory_mb, s.cpus)).name


def requested(wanted: Mapping[str, Any]) -> tuple[float, float]:
    """(memory in MB, cpus) a resources dict asks for; other names warn once."""
    memory_mb = cpus = 0.0
    for name, amount in wanted.items():
        if name in _MEMORY_MB:
            memory_mb = max(memory_mb, float(amount))
        elif name in _MEMORY_BYTES:
            memory_mb = max(memory_mb, float(amount) / 2**20)
        elif name in _CPUS:
            cpus = max(cpus, float(amount))
        else:
            warn_unsupported([f"resources[{name!r}]"], "dask.annotate")
    return memory_mb, cpus
