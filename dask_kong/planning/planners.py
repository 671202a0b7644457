"""Planners: turn a DAG into a `Plan`.

`naive` is the baseline (every dependent a new invocation, every output written);
`wukong` is WUKONG's policy (become one ready dependent, write only what another worker
needs). Planners are looked up by name through `get_planner`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..dag import DAG
from .plan import Optimization, Plan, PlanningContext, TaskPlan

Planner = Callable[[DAG, PlanningContext], Plan]


def plan_naive(dag: DAG, context: PlanningContext) -> Plan:
    """Every dependent is a new invocation and every output is written to the store."""
    return Plan(
        planner="naive",
        tasks=tuple(TaskPlan(resource=context.default_resource) for _ in range(len(dag))),
        become=False,
        write_all_outputs=True,
    )


WUKONG_OPTIMIZATIONS = frozenset({Optimization.CLUSTER, Optimization.DELAY_IO})


def plan_wukong(dag: DAG, context: PlanningContext) -> Plan:
    """WUKONG: continue with one ready dependent, write outputs only when needed
    elsewhere, and allow task clustering and delayed I/O everywhere (the runtime applies
    them only to outputs above the size thresholds of `kong.wukong`)."""
    task_plan = TaskPlan(resource=context.default_resource, optimizations=WUKONG_OPTIMIZATIONS)
    return Plan(planner="wukong", tasks=(task_plan,) * len(dag))


PLANNERS: dict[str, Planner] = {"naive": plan_naive, "wukong": plan_wukong}


def get_planner(name: str) -> Planner:
    """The planner called `name`; an unknown name lists the known ones."""
    try:
        return PLANNERS[name]
    except KeyError:
        raise ValueError(
            f"unknown planner {name!r}; known: {', '.join(sorted(PLANNERS))}"
        ) from None
