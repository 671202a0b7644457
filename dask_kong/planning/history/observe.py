"""Extracting observations: what one finished run tells the history, grouped by
`taxonomy` and ready for a store to apply.

Pure functions of the run (its DAG, summary and plan): no store, no I/O, so what a run
contributes is the same whichever history records it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

from dask.utils import key_split

from ... import config
from ...dag import DAG
from ...metrics.records import RunSummary, TaskMetrics
from ..plan import Plan
from .taxonomy import (
    Metric,
    function_group,
    planner_shape_group,
    resource_group,
    shape_group,
    task_profile_name,
)

#: Per group, per metric: the values observed by one record.
Observations = dict[str, dict[Metric, list[float]]]

#: One group's observations while a run is being summarised.
_GroupObservations = defaultdict[Metric, list[float]]


def observe_run(dag: DAG, summary: RunSummary, plan: Plan | None = None) -> Observations:
    """What one run tells the history, grouped and ready to apply.

    A task's input bytes are the sum of its parents' output sizes, known only when every
    parent reported one (TaskMetrics.output_bytes > 0); otherwise, and for roots (whose
    inputs are data), only the per-task execution time is recorded. Tasks run without a
    plan count as the "default" config.
    """
    metrics = summary.task_metrics
    bandwidth_bytes = int(config.get("planning.bandwidth_min_bytes"))
    profile = len(dag) <= int(config.get("planning.profile_max_tasks"))
    obs: defaultdict[str, _GroupObservations] = defaultdict(lambda: defaultdict(list))
    for task, m in metrics.items():
        resource = plan.tasks[task].resource if plan is not None else "default"
        by_metric = obs[function_group(key_split(dag.keys[task]), resource)]
        by_metric[Metric.EXEC_S].append(m.exec_s)
        by_metric[Metric.RECIPE].append(1.0 if m.recipe else 0.0)
        by_metric[Metric.STATEFUL].append(1.0 if m.stateful else 0.0)
        if profile:
            observe_task_profile(obs[function_group(task_profile_name(dag, task), resource)], m)
        input_bytes = known_input_bytes(dag, metrics, task)
        if m.output_bytes > 0:
            by_metric[Metric.OUTPUT_BYTES].append(m.output_bytes)
        if input_bytes:
            by_metric[Metric.EXEC_S_PER_BYTE].append(m.exec_s / input_bytes)
            if m.output_bytes > 0:
                by_metric[Metric.OUTPUT_RATIO].append(m.output_bytes / input_bytes)
        observe_io(obs[resource_group(resource)], m, bandwidth_bytes)
    if summary.shape_hash:
        observe_makespan(obs[shape_group(summary.shape_hash)], summary, plan)
        by_planner = planner_shape_group(summary.shape_hash, summary.planner)
        observe_makespan(obs[by_planner], summary, plan)
    return {group: dict(by_metric) for group, by_metric in obs.items()}


def observe_task_profile(by_metric: _GroupObservations, m: TaskMetrics) -> None:
    """One task's own time, output size and publishing (see `task_profile_name`)."""
    by_metric[Metric.EXEC_S].append(m.exec_s)
    by_metric[Metric.RECIPE].append(1.0 if m.recipe else 0.0)
    by_metric[Metric.STATEFUL].append(1.0 if m.stateful else 0.0)
    if m.output_bytes > 0:
        by_metric[Metric.OUTPUT_BYTES].append(m.output_bytes)


def known_input_bytes(dag: DAG, metrics: Mapping[int, TaskMetrics], task: int) -> int | None:
    """Sum of the parents' output sizes; None when a parent's size is unknown or no
    parent is a task."""
    total = 0
    for p in dag.parents[task]:
        size = metrics[p].output_bytes if p in metrics else 0
        if size <= 0:
            return None
        total += size
    return total or None


def observe_io(by_metric: _GroupObservations, m: TaskMetrics, bandwidth_bytes: int) -> None:
    """Store throughput and latency, invocation latency and start-up seen by one task's
    worker. A transfer of at least `bandwidth_bytes` is a throughput sample; a smaller
    one is a latency sample (its time is round-trips, not bytes: counting 300 bytes in
    0.3 ms as 1 MB/s would predict 8 s for an 8 MB block)."""
    for seconds, nbytes, bps, latency in (
        (m.read_s, m.read_bytes, Metric.READ_BPS, Metric.READ_S),
        (m.write_s, m.written_bytes, Metric.WRITE_BPS, Metric.WRITE_S),
    ):
        if seconds > 0 and nbytes >= bandwidth_bytes:
            by_metric[bps].append(nbytes / seconds)
        elif seconds > 0 and nbytes > 0:
            by_metric[latency].append(seconds)
    if m.invocations > 0:
        by_metric[Metric.INVOKE_S].append(m.invoke_s / m.invocations)
    if m.startup_s > 0:
        cold = Metric.STARTUP_COLD_S if m.cold_start else Metric.STARTUP_WARM_S
        by_metric[cold].append(m.startup_s)
        by_metric[Metric.STARTUP_S].append(m.startup_s)


def observe_makespan(by_metric: _GroupObservations, summary: RunSummary, plan: Plan | None) -> None:
    """The run's makespan, and how far the plan's prediction was from it."""
    by_metric[Metric.MAKESPAN_S].append(summary.makespan_s)
    metrics = summary.task_metrics.values()
    span = max((m.end for m in metrics), default=0.0) - min((m.start for m in metrics), default=0.0)
    if span > 0:  # the tasks carried timestamps
        by_metric[Metric.CLIENT_S].append(max(summary.makespan_s - span, 0.0))
    predicted = plan.predicted_makespan_s if plan is not None else None
    if predicted is not None:
        by_metric[Metric.PREDICTED_MAKESPAN_S].append(predicted)
        if summary.makespan_s > 0:
            error = abs(predicted - summary.makespan_s) / summary.makespan_s
            by_metric[Metric.MAKESPAN_ERROR].append(error)
