"""Planners: turn a DAG into a `Plan`.

`naive` is the baseline (every dependent a new invocation, every output written);
`wukong` is WUKONG's policy (become one ready dependent, write only what another worker
needs). `uniform` and `non_uniform` keep WUKONG's runtime policy and add predictions from
the metrics history (`predict`, `schedule`): worker hints, predicted times, the critical
path, per-task optimizations, and for `non_uniform` a resource config per worker.
Without history they still return a valid plan, with every prediction None. The runtime
treats every flag and hint as a hint, so a wrong prediction costs time, never results.
Planners are looked up by name through `get_planner`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from dask.utils import key_split

from .. import config
from ..dag import DAG
from .history import Metric, task_profile_name
from .plan import Optimization, Plan, PlanningContext, ResourceSpec, TaskPlan
from .predict import Predictor, parse_sla
from .schedule import (
    Estimates,
    Timeline,
    assign_workers,
    first_tasks,
    history_name,
    is_profiled,
    predict_sizes,
    simulate,
    task_functions,
    task_profiles,
    worker_slack,
)
from .subtrees import plan_subtrees, subtree_max_tasks, workers_with_subtrees

Planner = Callable[[DAG, PlanningContext], Plan]


def plan_naive(dag: DAG, context: PlanningContext) -> Plan:
    """Every dependent is a new invocation and every output is written to the store."""
    return Plan(
        planner="naive",
        tasks=tuple(TaskPlan(resource=context.default_resource) for _ in range(len(dag))),
        become=False,
        write_all_outputs=True,
    )


# WUKONG's two optimizations, and recomputation (WUKONG's task-dup idea applied to cheap
# tasks with large outputs); the runtime applies each only where sizes and times warrant.
WUKONG_OPTIMIZATIONS = frozenset(
    {Optimization.CLUSTER, Optimization.DELAY_IO, Optimization.RECOMPUTE}
)


def wukong_optimizations(dag: DAG) -> list[frozenset[Optimization]]:
    """WUKONG's optimizations per task, less delayed I/O where waiting is pointless: at a
    fan-in with a parent deeper in the DAG (longest path from a root) than this task, that
    parent is still levels of work away, so holding the output (and, under a concurrency
    limit, a worker slot) until the short wait times out only delays the write. TSQR's Q
    blocks wait at a fan-in with a block of the second-level Q, which needs every block's
    R first: 20 waits of kong.wukong.delay_io_wait_s for nothing."""
    depth = [0] * len(dag)
    deepest_parent = [0] * len(dag)
    for task, parents in enumerate(dag.parents):  # indices are a topological order
        deepest_parent[task] = max((depth[p] for p in parents), default=-1)
        depth[task] = 1 + deepest_parent[task]
    without = WUKONG_OPTIMIZATIONS - {Optimization.DELAY_IO}
    return [
        without if any(deepest_parent[c] > depth[task] for c in children) else WUKONG_OPTIMIZATIONS
        for task, children in enumerate(dag.children)
    ]


def plan_wukong(dag: DAG, context: PlanningContext) -> Plan:
    """WUKONG: continue with one ready dependent, write outputs only when needed
    elsewhere, and allow task clustering and delayed I/O everywhere (the runtime applies
    them only to outputs above the size thresholds of `kong.wukong`); batch exclusive
    subtrees where the backend's concurrency is bounded (see `subtrees`), running roots
    again in each subtree where earlier runs found them cheaper to run than to move."""
    plans = {
        flags: TaskPlan(resource=context.default_resource, optimizations=flags)
        for flags in (WUKONG_OPTIMIZATIONS, WUKONG_OPTIMIZATIONS - {Optimization.DELAY_IO})
    }
    tasks = tuple(plans[flags] for flags in wukong_optimizations(dag))
    batching = batched_subtrees(dag, context)
    return Plan(
        planner="wukong",
        tasks=tasks,
        subtrees=batching.subtrees,
        shared_roots=batching.shared_roots,
    )


# -- planners from predictions (octoflows-style) ------------------------------------------


def plan_uniform(dag: DAG, context: PlanningContext) -> Plan:
    """Every task on the default resource config, with predicted times, worker hints, the
    critical path and per-task optimizations from the metrics history (see `schedule`).
    Without history: WUKONG's plan with worker hints and no predictions."""
    resource = context.default_resource
    predictor = load_predictor(dag, context)
    if predictor is None:
        return unpredicted_plan("uniform", dag, context)
    sizes = predict_sizes(dag, predictor, resource)
    estimates = Estimates(dag, predictor, sizes, resource)
    batching = batched_subtrees(dag, context, predictor)
    workers = workers_with_subtrees(assign_workers(dag, sizes.output_bytes), batching.subtrees)
    timeline = simulate(
        dag, workers, [resource] * worker_count(workers), estimates, context.concurrency
    )
    return predicted_plan("uniform", timeline, estimates, context, {}, batching)


def plan_non_uniform(dag: DAG, context: PlanningContext) -> Plan:
    """Per-worker resource configs: every worker starts on the strongest config, the
    cheapest one predicted within kong.planning.downgrade_tolerance of the shortest
    makespan when every worker uses it (usually the most cpus; not where the history
    says otherwise, e.g. 2-cpu workers oversubscribing a 2-core machine); workers off the
    critical path are then downgraded to cheaper configs (fewer cpus x memory) while the
    predicted makespan stays within that tolerance of the fastest prediction. Without
    history: every task on the default config."""
    predictor = load_predictor(dag, context)
    if predictor is None:
        return unpredicted_plan("non_uniform", dag, context)
    sizes = predict_sizes(dag, predictor, context.default_resource)
    estimates = Estimates(dag, predictor, sizes, context.default_resource)
    batching = batched_subtrees(dag, context, predictor)
    workers = workers_with_subtrees(assign_workers(dag, sizes.output_bytes), batching.subtrees)
    count = worker_count(workers)
    alone = {
        r.name: simulate(dag, workers, [r.name] * count, estimates, context.concurrency)
        for r in context.resources
    }
    tolerance = float(config.get("planning.downgrade_tolerance"))
    strongest = strongest_config(context.resources, alone, tolerance)
    strong = alone[strongest.name]
    cheaper = sorted(
        (r for r in context.resources if price(r) < price(strongest)),
        key=lambda r: (price(r), r.name),
    )
    # Downgrades stay within the tolerance of the fastest all-one-config prediction, also
    # when a cheaper config within it was chosen to start from.
    bound_s = min(t.makespan_s for t in alone.values()) * (1 + tolerance)
    left = max(0.0, bound_s / strong.makespan_s - 1) if strong.makespan_s > 0 else tolerance
    timeline = downgrade_off_critical_path(
        dag, strong, estimates, [r.name for r in cheaper], left, context.concurrency
    )
    notes = downgrade_notes(strong, timeline, strongest.name, tolerance)
    return predicted_plan("non_uniform", timeline, estimates, context, notes, batching)


def strongest_config(
    resources: tuple[ResourceSpec, ...], alone: dict[str, Timeline], tolerance: float
) -> ResourceSpec:
    """The config every worker starts on: the cheapest whose all-on-it predicted makespan
    is within `tolerance` of the fastest one's. A bigger config predicted hardly faster is
    not worth its price (nor, in the local gateway, its own pool of cold workers)."""
    fastest = min(alone[r.name].makespan_s for r in resources)
    bound = fastest * (1 + tolerance) + 1e-9  # float slack: equal predictions tie
    good = [r for r in resources if alone[r.name].makespan_s <= bound]
    return min(good, key=lambda r: (price(r), alone[r.name].makespan_s, r.name))


def price(resource: ResourceSpec) -> int:
    """What a worker of `resource` costs per second, up to a constant (Lambda bills
    memory x time, and cpus grow with memory there)."""
    return resource.cpus * resource.memory_mb


def downgrade_off_critical_path(
    dag: DAG,
    strong: Timeline,
    estimates: Estimates,
    weaker: list[str],
    tolerance: float,
    concurrency: int | None = None,
) -> Timeline:
    """`strong` with as many workers off its critical path as possible moved to the
    `weaker` configs (weakest first), keeping the makespan within `tolerance` of
    `strong`'s. Workers with the most slack go first. A downgrade only lengthens a
    timeline (slower tasks, a cold start on the default config), so for each config a
    binary search finds the longest feasible run of candidates in O(log workers)
    simulations; should a history predict a weaker config faster, the search still only
    accepts sets it simulated within the bound."""
    bound = strong.makespan_s * (1 + tolerance) + 1e-9
    configs = [strong.resources[t] for _, t in sorted(first_tasks(strong.workers).items())]
    on_path = {strong.workers[t] for t in strong.critical_path}
    slack = worker_slack(dag, strong)
    candidates = sorted((w for w in slack if w not in on_path), key=lambda w: (-slack[w], w))
    best = strong
    for resource in weaker:
        low, high = 0, len(candidates)
        while low < high:
            mid = (low + high + 1) // 2
            trial = with_config(configs, candidates[:mid], resource)
            timeline = simulate(dag, strong.workers, trial, estimates, concurrency)
            if timeline.makespan_s <= bound:
                low, best = mid, timeline
            else:
                high = mid - 1
        configs = with_config(configs, candidates[:low], resource)
        candidates = candidates[low:]
    return best


def with_config(configs: list[str], workers: list[int], resource: str) -> list[str]:
    """`configs` (one per worker) with `workers` moved to `resource`."""
    moved = set(workers)
    return [resource if w in moved else c for w, c in enumerate(configs)]


def downgrade_notes(
    strong: Timeline, chosen: Timeline, strongest: str, tolerance: float
) -> dict[str, str]:
    configs = dict(zip(chosen.workers, chosen.resources, strict=True))
    counts = Counter(configs.values())
    on_path = sorted({chosen.workers[t] for t in strong.critical_path})
    spread = ", ".join(f"{n} on {name}" for name, n in sorted(counts.items()))
    downgraded = sum(n for name, n in counts.items() if name != strongest)
    return {
        "resources": (
            f"{downgraded} of {len(configs)} workers downgraded from {strongest} "
            f"({spread}); critical-path workers {on_path} stay on {strongest}"
        ),
        "makespan": (
            f"predicted {chosen.makespan_s:.3g} s against {strong.makespan_s:.3g} s with every "
            f"worker on {strongest} (tolerance {tolerance:.0%})"
        ),
    }


# -- shared by the predicting planners ----------------------------------------------------


def load_predictor(dag: DAG, context: PlanningContext) -> Predictor | None:
    """A predictor with the history of this DAG's functions loaded (one look-up); None
    when there is no history or it knows none of them."""
    if context.history is None:
        return None
    predictor = Predictor(context.history, context.sla, context.resources)
    functions = set(task_functions(dag))
    predictor.prefetch(functions | set(filter(None, task_profiles(dag))))
    if not any(predictor.knows(f) for f in functions):
        return None
    return predictor


@dataclass(frozen=True)
class Batching:
    """The exclusive subtrees one invocation runs whole, and which of their members are
    shared roots (`Plan.shared_roots`)."""

    subtrees: dict[int, tuple[int, ...]] = field(default_factory=dict)
    shared_roots: frozenset[int] = frozenset()


def batched_subtrees(
    dag: DAG, context: PlanningContext, predictor: Predictor | None = None
) -> Batching:
    """Subtree batching for this backend (see `subtrees`), with the roots it may run again
    in several subtrees (`duplicable_roots`)."""
    duplicable = duplicable_roots(dag, context, predictor)
    subtrees = plan_subtrees(dag, context.concurrency, duplicable.known | duplicable.shared)
    runs = Counter(m for ms in subtrees.values() for m in ms if m in duplicable.shared)
    # A root in one subtree only is that subtree's own member: nothing to share.
    return Batching(subtrees, frozenset(r for r, n in runs.items() if n > 1))


@dataclass(frozen=True)
class DuplicableRoots:
    """Roots several batched subtrees take in: `known` ones the history saw publish
    recipes (cheaper to run again than to move: each subtree runs them), `shared` ones
    run once per run and handed to the other subtrees through the store."""

    known: frozenset[int] = frozenset()
    shared: frozenset[int] = frozenset()


def duplicable_roots(
    dag: DAG, context: PlanningContext, predictor: Predictor | None = None
) -> DuplicableRoots:
    """Roots with several dependents that batched subtrees may run again instead of
    having their outputs moved (see `subtrees`), where outputs cross a store.

    A root the history saw publish recipes, and never read or make a handle to state
    (`dask_kong.values`), is `known`. Any other (one the history never
    saw, as every root of a first run, or one it saw publish its value) is `shared`: the
    subtrees share its single run through the store, whatever it costs, and take its
    recipe or its value from there (`runtime.worker.share_root`). A GEMM output block is
    then one invocation from the first run on, and its block products no longer cross
    the store. The history is consulted only where batching applies and the DAG has
    such roots, so other DAGs cost nothing here; `predictor` is loaded when not given
    (wukong loads none otherwise)."""
    if not subtree_max_tasks(dag, context.concurrency) or not context.shared_store:
        return DuplicableRoots()
    outputs = dag.output_tasks
    candidates = [t for t in dag.roots if len(dag.children[t]) > 1 and t not in outputs]
    if not candidates:
        return DuplicableRoots()
    if predictor is None and context.history is not None:
        predictor = load_predictor(dag, context)
    if predictor is None:
        return DuplicableRoots(shared=frozenset(candidates))
    profiled = is_profiled(dag)
    known = set()
    for task in candidates:
        profile = task_profile_name(dag, task) if profiled else ""
        name, _ = history_name(predictor, profile, key_split(dag.keys[task]))
        if predictor.publishes_recipe(name, context.default_resource) and not (
            predictor.is_stateful(name)
        ):
            known.add(task)
    return DuplicableRoots(frozenset(known), frozenset(candidates) - known)


def worker_count(workers: tuple[int, ...]) -> int:
    return max(workers, default=-1) + 1


def unpredicted_plan(name: str, dag: DAG, context: PlanningContext) -> Plan:
    """WUKONG's plan (its runtime switches and per-task optimizations) on the default
    config, with worker hints from the DAG's structure alone, and no predictions."""
    # The caller found no history of these functions: batching must not look it up again.
    batching = batched_subtrees(dag, replace(context, history=None))
    workers = workers_with_subtrees(assign_workers(dag, [None] * len(dag)), batching.subtrees)
    resource = context.default_resource
    return Plan(
        planner=name,
        tasks=tuple(
            TaskPlan(resource=resource, optimizations=flags, worker_hint=w)
            for w, flags in zip(workers, wukong_optimizations(dag), strict=True)
        ),
        notes={"predictions": f"no history for this DAG's functions: every task on {resource}"},
        subtrees=batching.subtrees,
        shared_roots=batching.shared_roots,
    )


def predicted_plan(
    name: str,
    timeline: Timeline,
    estimates: Estimates,
    context: PlanningContext,
    notes: dict[str, str],
    batching: Batching,
) -> Plan:
    """The plan a timeline describes: WUKONG's optimizations everywhere (the runtime
    applies them by size), plus those the predictions justify; and the notes. The DAG
    and its predicted sizes are those the estimates were made for."""
    dag, sizes = estimates.dag, estimates.sizes
    flags = choose_optimizations(dag, timeline, estimates, context.default_resource)
    wukong = wukong_optimizations(dag)
    tasks = tuple(
        TaskPlan(
            resource=timeline.resources[t],
            optimizations=wukong[t] | flags[t],
            worker_hint=timeline.workers[t],
            predicted_start_s=timeline.start[t],
            predicted_end_s=timeline.end[t],
            predicted_exec_s=timeline.exec_s[t],
            predicted_output_bytes=None if size is None else round(size),
            predicted_read_s=timeline.read_s[t],
            predicted_write_s=timeline.write_s[t],
        )
        for t, size in enumerate(sizes.output_bytes)
    )
    notes = {**notes, **coverage_notes(estimates, flags)}
    shape = shape_note(context, dag)
    if shape:
        notes["history"] = shape
    return Plan(
        planner=name,
        tasks=tasks,
        critical_path=timeline.critical_path,
        predicted_makespan_s=timeline.makespan_s + client_share_s(context, dag),
        notes=notes,
        subtrees=batching.subtrees,
        shared_roots=batching.shared_roots,
    )


def client_share_s(context: PlanningContext, dag: DAG) -> float:
    """The part of earlier runs of this shape outside the tasks' span (the client ships
    the run, reads results, cleans up), at the SLA percentile; 0 for a new shape. The
    timeline covers tasks only; the makespan a user sees includes this."""
    stats = context.history.shape_stats(dag.shape_hash)
    quantile = parse_sla(context.sla)
    if stats is None or not stats.count(Metric.CLIENT_S):
        return 0.0
    if quantile is None:
        return stats.mean(Metric.CLIENT_S) or 0.0
    return stats.percentile(Metric.CLIENT_S, quantile) or 0.0


def coverage_notes(estimates: Estimates, flags: list[set[Optimization]]) -> dict[str, str]:
    """Where the predictions are thin: functions without history, task-dup's caveat."""
    notes = {}
    unknown = sorted({f for f in estimates.functions if not estimates.predictor.knows(f)})
    if unknown:
        shown = ", ".join(unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        )
        notes["predictions"] = f"no history for {shown}: their tasks count as 0 s"
    if any(Optimization.TASK_DUP in f for f in flags):
        notes["task-dup"] = "predicted times assume task-dup tasks wait for their slow parent"
    return notes


def shape_note(context: PlanningContext, dag: DAG) -> str:
    """What the history says about earlier runs of this DAG's shape ('' when nothing)."""
    stats = context.history.shape_stats(dag.shape_hash)
    if stats is None or not stats.count(Metric.MAKESPAN_S):
        return ""
    runs = stats.count(Metric.MAKESPAN_S)
    note = f"{runs} earlier runs of this shape, median makespan "
    note += f"{stats.percentile(Metric.MAKESPAN_S, 50):.3g} s"
    error = stats.percentile(Metric.MAKESPAN_ERROR, 50)
    if error is not None:
        note += f", median prediction error {error:.0%}"
    return note


def choose_optimizations(
    dag: DAG, timeline: Timeline, estimates: Estimates, default_resource: str
) -> list[set[Optimization]]:
    """Per task, the optimizations the predictions justify (thresholds in kong.yaml):

    * pre-warm: the first task of a worker whose config is not the default one;
    * pre-load: a fan-in whose first and last inputs arrive more than
      kong.planning.preload_min_wait_s apart;
    * task-dup: a fan-in whose worker would start it more than
      kong.planning.task_dup_min_gain_s sooner by recomputing its slowest parent, unless
      the history saw that parent's function read or make a handle to state.
    """
    flags: list[set[Optimization]] = [set() for _ in range(len(dag))]
    for task in first_tasks(timeline.workers).values():
        if timeline.resources[task] != default_resource:
            flags[task].add(Optimization.PREWARM)
    preload_wait_s = float(config.get("planning.preload_min_wait_s"))
    dup_gain_s = float(config.get("planning.task_dup_min_gain_s"))
    for task, arrived in enumerate(timeline.arrivals):
        if len(arrived) < 2:
            continue
        if max(arrived.values()) - min(arrived.values()) > preload_wait_s:
            flags[task].add(Optimization.PRELOAD)
        gain = task_dup_gain_s(dag, timeline, estimates, task)
        if gain is not None and gain > dup_gain_s:
            flags[task].add(Optimization.TASK_DUP)
    return flags


def task_dup_gain_s(dag: DAG, timeline: Timeline, estimates: Estimates, task: int) -> float | None:
    """How much sooner fan-in `task` could start if its worker, instead of waiting for
    the slowest parent's output to arrive, recomputed that parent itself. None when no
    worker waits there (the task starts a new worker) or the parent's time is unknown."""
    worker, resource = timeline.workers[task], timeline.resources[task]
    arrived = timeline.arrivals[task]
    own = [p for p in arrived if timeline.workers[p] == worker]
    slow = timeline.binding_parent(task)
    if not own or slow is None or timeline.workers[slow] == worker:
        return None
    if estimates.is_stateful(slow):
        return None  # it must never run twice (dask_kong.values)
    dup_exec = estimates.exec_s(slow, resource)
    if dup_exec is None:
        return None
    inputs_here = 0.0
    for q in dag.parents[slow]:
        moved = timeline.workers[q] != worker
        transfer = estimates.transfer_s(q, timeline.resources[q], resource) if moved else 0.0
        inputs_here = max(inputs_here, timeline.end[q] + (transfer or 0.0))
    own_ready = max(timeline.end[p] for p in own)
    duplicated_at = max(own_ready, inputs_here) + dup_exec
    others = max((a for p, a in arrived.items() if p != slow), default=0.0)
    return arrived[slow] - max(duplicated_at, others)


PLANNERS: dict[str, Planner] = {
    "naive": plan_naive,
    "wukong": plan_wukong,
    "uniform": plan_uniform,
    "non_uniform": plan_non_uniform,
}


def get_planner(name: str) -> Planner:
    """The planner called `name`; an unknown name lists the known ones."""
    try:
        return PLANNERS[name]
    except KeyError:
        raise ValueError(
            f"unknown planner {name!r}; known: {', '.join(sorted(PLANNERS))}"
        ) from None
