"""The uniform and non_uniform planners: hand-computed timelines, downgrades, no history,
and correct results when a session runs their plans."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping
from typing import Any

import dask
import pytest

from dask_kong import Kong, last_run
from dask_kong.dag import DAG, Key, to_dag
from dask_kong.metrics.records import RunSummary, TaskMetrics
from dask_kong.planning import (
    PLANNERS,
    MemoryHistory,
    Optimization,
    Plan,
    PlanningContext,
    ResourceSpec,
    TaskPlan,
    compare_plan,
    get_planner,
    record_run,
)
from dask_kong.planning.planners import (
    WUKONG_OPTIMIZATIONS,
    Planner,
    plan_non_uniform,
    plan_uniform,
)

SMALL = ResourceSpec("small", 1024, 1)
LARGE = ResourceSpec("large", 3072, 2)


def work(*args: object) -> int:
    return 1


def diamond() -> DAG:
    """src feeds left, right and side; join reads all three. Only join is requested."""
    dsk = {
        "src-0": (work,),
        "left-0": (work, "src-0"),
        "right-0": (work, "src-0"),
        "side-0": (work, "src-0"),
        "join-0": (work, "left-0", "right-0", "side-0"),
    }
    return to_dag(dsk, "join-0")


def summary_of(dag: DAG, metrics: Mapping[Key, TaskMetrics], makespan_s: float) -> RunSummary:
    return RunSummary(
        run_id="synthetic",
        tasks=len(dag),
        workers=len({m.worker for m in metrics.values()}),
        invocations=0,
        makespan_s=makespan_s,
        bytes_written=0,
        bytes_read=0,
        planner="wukong",
        backend="threads",
        store="memory",
        shape_hash=dag.shape_hash,
        task_metrics={dag.index_of(key): m for key, m in metrics.items()},
    )


def diamond_history(side_exec_s: float = 1.0, runs: int = 5) -> MemoryHistory:
    """Runs of `diamond` on `small` with the store moving 1000 bytes per second each way:

    task    exec s   output bytes   store I/O
    src     1        1000           writes 1000 B in 1 s
    left    1        500            -
    right   4        100            reads 1000 B in 1 s, writes 100 B in 0.1 s
    side    side     10             reads 1000 B in 1 s, writes 10 B in 0.01 s
    join    1        10             reads 110 B in 0.11 s
    """
    dag = diamond()
    metrics = diamond_history_metrics(side_exec_s)
    plan = Plan("wukong", tuple(TaskPlan(resource="small") for _ in range(len(dag))))
    history = MemoryHistory()
    # every transfer counts as a throughput sample: these bytes stand in for megabytes
    with dask.config.set({"kong.planning.bandwidth_min_bytes": 1}):
        for _ in range(runs):
            history.record(dag, summary_of(dag, metrics, makespan_s=9.0), plan)
    return history


def diamond_history_with_large(exec_factor: float, makespan_s: float) -> MemoryHistory:
    """`diamond_history` plus five runs on large, every task `exec_factor` times as long."""
    dag = diamond()
    history = diamond_history()
    on_large_run = summary_of(dag, {}, makespan_s=makespan_s)
    for task, m in diamond_history_metrics().items():
        m.exec_s *= exec_factor
        on_large_run.task_metrics[dag.index_of(task)] = m
    on_large = Plan("wukong", tuple(TaskPlan(resource="large") for _ in range(len(dag))))
    with dask.config.set({"kong.planning.bandwidth_min_bytes": 1}):
        for _ in range(5):
            history.record(dag, on_large_run, on_large)
    return history


def diamond_history_metrics(side_exec_s: float = 1.0) -> dict[Key, TaskMetrics]:
    """One run of the diamond on small, as the table of `diamond_history` says."""
    return {
        "src-0": TaskMetrics("w0", exec_s=1.0, output_bytes=1000, written_bytes=1000, write_s=1.0),
        "left-0": TaskMetrics("w0", exec_s=1.0, output_bytes=500),
        "right-0": TaskMetrics(
            "w1",
            exec_s=4.0,
            output_bytes=100,
            read_bytes=1000,
            read_s=1.0,
            written_bytes=100,
            write_s=0.1,
        ),
        "side-0": TaskMetrics(
            "w2",
            exec_s=side_exec_s,
            output_bytes=10,
            read_bytes=1000,
            read_s=1.0,
            written_bytes=10,
            write_s=0.01,
        ),
        "join-0": TaskMetrics("w0", exec_s=1.0, output_bytes=10, read_bytes=110, read_s=0.11),
    }


def context(
    history: MemoryHistory | None, resources: tuple[ResourceSpec, ...] = (SMALL, LARGE)
) -> PlanningContext:
    return PlanningContext(history=history, resources=resources, sla="p50")


def by_key(dag: DAG, plan: Plan, attribute: str) -> dict[str, Any]:
    return {str(key): getattr(plan.tasks[i], attribute) for i, key in enumerate(dag.keys)}


def test_uniform_plan_of_the_diamond_matches_the_hand_computed_timeline() -> None:
    """On small, the store moves 1000 B/s each way. A worker writes an output another
    worker reads (or the client wants) before its task ends; the reader reads it first:

    src   worker 0  0   -> 1+1      exec 1 s, then writes 1000 B for right and side: 1 s
    left  worker 0  2   -> 3        stays with src's output: the largest of its children
    right worker 1  2+1 -> 7+0.1    reads 1000 B (1 s), exec 4 s, writes 100 B (worker
    side  worker 2  2+1 -> 4+0.01   numbers 1 and 2 follow the task order)
    join  worker 0  7.2 -> 8.2+0.01 left's 500 B is the largest input: join runs on worker
                                    0; right's 100 B are read by 7.1 + 0.1 (the binding
                                    parent); join writes its 10 B for the client
    """
    dag = diamond()
    plan = plan_uniform(dag, context(diamond_history()))
    workers = by_key(dag, plan, "worker_hint")
    assert workers["src-0"] == workers["left-0"] == workers["join-0"] == 0
    assert sorted([workers["right-0"], workers["side-0"]]) == [1, 2]
    starts = by_key(dag, plan, "predicted_start_s")
    ends = by_key(dag, plan, "predicted_end_s")
    assert starts == pytest.approx(
        {"src-0": 0, "left-0": 2, "right-0": 3, "side-0": 3, "join-0": 7.2}
    )
    assert ends == pytest.approx(
        {"src-0": 2, "left-0": 3, "right-0": 7.1, "side-0": 4.01, "join-0": 8.21}
    )
    assert plan.predicted_makespan_s == pytest.approx(8.21)
    assert [dag.keys[t] for t in plan.critical_path] == ["src-0", "right-0", "join-0"]
    assert by_key(dag, plan, "predicted_output_bytes") == {
        "src-0": 1000,
        "left-0": 500,
        "right-0": 100,
        "side-0": 10,
        "join-0": 10,
    }
    assert set(by_key(dag, plan, "resource").values()) == {"small"}
    assert plan.become and not plan.write_all_outputs


def test_uniform_flags_preload_and_task_dup_at_the_slow_fan_in() -> None:
    """join's inputs arrive 4.2 s apart (left at 3 s, right at 7.2 s: pre-load); worker 0
    is free at 3 s and could recompute right (4 s, src's output is local) by 7 s instead
    of waiting until 7.2 s: a 0.2 s gain, above a 0.1 s threshold."""
    dag = diamond()
    with dask.config.set({"kong.planning.task_dup_min_gain_s": 0.1}):
        plan = plan_uniform(dag, context(diamond_history()))
    join = dag.index_of("join-0")
    assert plan.tasks[join].optimizations == WUKONG_OPTIMIZATIONS | {
        Optimization.PRELOAD,
        Optimization.TASK_DUP,
    }
    others = [t for t in range(len(dag)) if t != join]
    assert all(plan.tasks[t].optimizations == WUKONG_OPTIMIZATIONS for t in others)


def test_non_uniform_downgrades_the_worker_off_the_critical_path() -> None:
    """Everything on large (2 cpus) halves exec times (the I/O is as on small): src
    0-0.5+1, left 1.5-2, right 2.5-4.5+0.1, side 2.5-3+0.01, join 4.7-5.2+0.01, so the
    makespan is 5.21 s (all small: 8.21 s, hence large is the strongest) with critical
    path src, right, join (workers 0 and 1). On small, side ends at 3.51 s instead of
    3.01 s and join still starts at 4.7 s."""
    dag = diamond()
    plan = plan_non_uniform(dag, context(diamond_history(side_exec_s=1.0)))
    assert by_key(dag, plan, "resource") == {
        "src-0": "large",
        "left-0": "large",
        "right-0": "large",
        "side-0": "small",
        "join-0": "large",
    }
    assert plan.predicted_makespan_s == pytest.approx(5.21)
    assert [dag.keys[t] for t in plan.critical_path] == ["src-0", "right-0", "join-0"]
    assert "1 of 3 workers downgraded from large" in plan.notes["resources"]
    # Workers on large are pre-warmed at their first task; side's small worker is not.
    prewarmed = {str(key) for t, key in enumerate(dag.keys) if plan.has(t, Optimization.PREWARM)}
    assert prewarmed == {"src-0", "right-0"}


def test_non_uniform_keeps_a_worker_strong_when_downgrading_it_breaks_the_tolerance() -> None:
    """side takes 4 s on small: on small it would end at 6.51 s and push join to
    6.52-7.02+0.01 s, 35% over the all-large 5.21 s, beyond the 10% tolerance."""
    dag = diamond()
    with dask.config.set({"kong.planning.downgrade_tolerance": 0.1}):
        plan = plan_non_uniform(dag, context(diamond_history(side_exec_s=4.0)))
    assert set(by_key(dag, plan, "resource").values()) == {"large"}
    assert plan.predicted_makespan_s == pytest.approx(5.21)
    assert "0 of 3 workers downgraded" in plan.notes["resources"]
    with dask.config.set({"kong.planning.downgrade_tolerance": 0.5}):
        relaxed = plan_non_uniform(dag, context(diamond_history(side_exec_s=4.0)))
    assert relaxed.tasks[dag.index_of("side-0")].resource == "small"
    assert relaxed.predicted_makespan_s == pytest.approx(7.03)
    assert relaxed.predicted_makespan_s is not None
    assert relaxed.predicted_makespan_s <= 5.21 * 1.5


def test_non_uniform_starts_on_the_config_the_history_finds_fastest() -> None:
    """More cpus is not always faster (2-cpu workers oversubscribe a 2-core machine): when
    the history saw every task three times slower on large, small is the strongest."""
    dag = diamond()
    history = diamond_history_with_large(exec_factor=3.0, makespan_s=20.0)
    plan = plan_non_uniform(dag, context(history))
    assert set(by_key(dag, plan, "resource").values()) == {"small"}
    assert plan.predicted_makespan_s == pytest.approx(8.21)
    assert "from small" in plan.notes["resources"]


@pytest.mark.parametrize("planner", [plan_uniform, plan_non_uniform])
@pytest.mark.parametrize("history", [None, MemoryHistory()], ids=["none", "empty"])
def test_planners_without_history_give_valid_plans_with_no_predictions(
    planner: Planner, history: MemoryHistory | None
) -> None:
    dag = diamond()
    plan = planner(dag, context(history))
    assert len(plan.tasks) == len(dag)
    assert plan.become and not plan.write_all_outputs
    assert plan.predicted_makespan_s is None and plan.critical_path == ()
    for task in plan.tasks:
        assert task.resource == "small"
        assert task.optimizations == WUKONG_OPTIMIZATIONS
        assert task.predicted_start_s is None and task.predicted_end_s is None
        assert task.predicted_exec_s is None and task.predicted_output_bytes is None
    assert "no history" in plan.notes["predictions"]


def test_uniform_with_partial_history_counts_unknown_functions_as_zero_and_says_so() -> None:
    dsk = {"src-0": (work,), "new-0": (work, "src-0")}
    dag = to_dag(dsk, "new-0")
    plan = plan_uniform(dag, context(diamond_history()))
    assert plan.tasks[dag.index_of("new-0")].predicted_exec_s is None
    assert plan.predicted_makespan_s == pytest.approx(1.0)  # src's 1 s, new's 0 s
    assert "no history for new" in plan.notes["predictions"]


def test_planners_are_registered_by_name() -> None:
    assert get_planner("uniform") is plan_uniform
    assert get_planner("non_uniform") is plan_non_uniform
    assert set(PLANNERS) >= {"naive", "wukong", "uniform", "non_uniform"}


def random_graph(seed: int) -> tuple[dict[str, Any], list[str]]:
    """A random DAG: a few function names, random fan-ins and fan-outs, some data."""
    rng = random.Random(seed)
    dsk: dict[str, Any] = {}
    for i in range(rng.randint(1, 40)):
        earlier = list(dsk)
        if not earlier or rng.random() < 0.1:
            dsk[f"data-{i}"] = rng.randint(0, 9)
            continue
        parents = rng.sample(earlier, min(len(earlier), rng.randint(1, 4)))
        dsk[f"{rng.choice(['load', 'mix', 'sum'])}-{i}"] = (combine, i, *parents)
    wanted = rng.sample(sorted(dsk), rng.randint(1, min(3, len(dsk))))
    return dsk, wanted


def combine(i: int, *values: int) -> int:
    return (i + 7 * sum(values)) % 100_003


def random_history(dag: DAG, seed: int) -> MemoryHistory:
    """Synthetic runs of `dag` with random times and sizes on small."""
    rng = random.Random(seed)
    history = MemoryHistory()
    plan = Plan("wukong", tuple(TaskPlan(resource="small") for _ in range(len(dag))))
    for run in range(3):
        metrics = {
            key: TaskMetrics(
                f"w{rng.randint(0, 3)}",
                exec_s=rng.uniform(0.01, 2),
                output_bytes=rng.randint(1, 10_000),
                read_bytes=rng.randint(1, 10_000),
                read_s=rng.uniform(0.001, 0.1),
                written_bytes=rng.randint(1, 10_000),
                write_s=rng.uniform(0.001, 0.1),
            )
            for key in dag.keys
        }
        history.record(dag, summary_of(dag, metrics, makespan_s=1.0 + run), plan)
    return history


@pytest.mark.parametrize("planner", [plan_uniform, plan_non_uniform])
def test_predicted_plans_of_random_dags_are_consistent_timelines(planner: Planner) -> None:
    """Children start after their parents end, the critical path is a chain of edges that
    ends at the latest output, and the makespan is the latest end."""
    for seed in range(40):
        dsk, wanted = random_graph(seed)
        dag = to_dag(dsk, wanted)
        if not len(dag):
            continue
        plan = planner(dag, context(random_history(dag, seed)))
        tasks = plan.tasks
        for t, parents in enumerate(dag.parents):
            start, end = tasks[t].predicted_start_s, tasks[t].predicted_end_s
            assert start is not None and end is not None and end >= start
            for p in parents:
                assert start >= (tasks[p].predicted_end_s or 0) - 1e-9, f"seed {seed}"
        path = plan.critical_path
        assert all(a in dag.parents[b] for a, b in itertools.pairwise(path))
        assert not dag.parents[path[0]] and path[-1] in dag.output_tasks
        ends = [t.predicted_end_s or 0 for t in tasks]
        assert plan.predicted_makespan_s == pytest.approx(max(ends))
        assert tasks[path[-1]].predicted_end_s == pytest.approx(max(ends))


@pytest.mark.parametrize("planner", ["uniform", "non_uniform"])
def test_kong_with_predicting_planner_computes_random_dags_correctly(planner: str) -> None:
    with Kong(planner=planner) as kong:
        for seed in range(60):
            dsk, wanted = random_graph(seed)
            assert kong.get(dsk, wanted) == dask.get(dsk, wanted), f"seed {seed}"
    summary = last_run()
    assert summary is not None and summary.planner == planner


class KongWithHistory(Kong):
    """A session that plans from its own history, as the session will once wired."""

    def __init__(self, planner: str) -> None:
        super().__init__(planner=planner)
        self.history = MemoryHistory()

    def planning_context(self) -> PlanningContext:
        return PlanningContext(history=self.history, resources=(SMALL, LARGE), sla="p90")


@pytest.mark.parametrize("planner", ["uniform", "non_uniform"])
def test_kong_runs_plans_made_from_its_own_history_correctly(planner: str) -> None:
    """Record every run, plan the next from the history: predictions, worker hints,
    pre-load, task-dup and non-default configs are hints, and never change results."""
    kong = KongWithHistory(planner)
    predicted_runs = 0
    with kong:
        for seed in list(range(30)) * 2:
            dsk, wanted = random_graph(seed)
            assert kong.get(dsk, wanted) == dask.get(dsk, wanted), f"seed {seed}"
            summary = last_run()
            assert summary is not None
            dag = to_dag(dsk, wanted)
            assert record_run(kong.history, dag, summary.plan, summary)
            if summary.plan.predicted_makespan_s is not None:
                predicted_runs += 1
                report = compare_plan(dag, summary.plan, summary)
                assert report.makespan_error is not None
    assert predicted_runs >= 30  # the second pass over the seeds plans from history


def test_a_concurrency_limit_serializes_the_predicted_timeline() -> None:
    """A worker holds its slot while it reads its inputs, so a slot that frees late
    delays the read too. Two slots: src 0-2, left 2-3 (on the slot free at 0), then side
    and right, both ready at 3, in task order (which the translation may vary). Right
    first: it takes the slot free at 2 and runs 3-7.1, side reads 3-4 and runs to 5.01,
    join 7.2-8.21 as unbounded. Side first: side runs 3-4.01, right gets the slot free at
    3, reads until 4 and runs to 8.1; join 8.2-9.21. One slot:
    side 4-5.01 (read 3-4), right reads 5.01-6.01 and runs to 10.11, join reads until
    10.22 and ends at 11.23. Unbounded: 8.21."""
    from dataclasses import replace

    dag = diamond()
    unbounded = plan_uniform(dag, context(diamond_history()))
    one_slot = plan_uniform(dag, replace(context(diamond_history()), concurrency=1))
    two_slots = plan_uniform(dag, replace(context(diamond_history()), concurrency=2))
    assert unbounded.predicted_makespan_s == pytest.approx(8.21)
    assert two_slots.predicted_makespan_s in (pytest.approx(8.21), pytest.approx(9.21))
    assert one_slot.predicted_makespan_s == pytest.approx(11.23)


def test_delayed_io_is_off_where_a_fan_in_waits_for_a_deeper_parent() -> None:
    """TSQR's shape: a block waits at a fan-in for a parent that needs every block
    first (deeper in the DAG): holding the block there only delays its write. Parents
    at the same depth (a reduction's siblings) keep delayed I/O."""
    dsk: dict[str, Any] = {f"block-{i}": (work,) for i in range(3)}
    dsk.update({f"r-{i}": (work, f"block-{i}") for i in range(3)})
    dsk["stack"] = (work, "r-0", "r-1", "r-2")
    dsk.update({f"q2-{i}": (work, "stack") for i in range(3)})
    dsk.update({f"dot-{i}": (work, f"block-{i}", f"q2-{i}") for i in range(3)})
    dag = to_dag(dsk, [f"dot-{i}" for i in range(3)])
    for planner in ("wukong", "uniform", "non_uniform"):
        plan = get_planner(planner)(dag, context(None))
        flags = by_key(dag, plan, "optimizations")
        assert Optimization.DELAY_IO not in flags["block-0"], planner  # waits for q2-0
        assert Optimization.DELAY_IO in flags["r-0"], planner  # its siblings are level


def test_non_uniform_does_not_pay_for_a_config_predicted_hardly_faster() -> None:
    """large is seen 3% quicker per task: within the 10% tolerance, so every worker starts
    on the cheaper small; with no tolerance the faster large keeps the critical path."""
    dag = diamond()
    history = diamond_history_with_large(exec_factor=0.97, makespan_s=8.8)
    plan = plan_non_uniform(dag, context(history))
    assert set(by_key(dag, plan, "resource").values()) == {"small"}
    with dask.config.set({"kong.planning.downgrade_tolerance": 0.0}):
        plan = plan_non_uniform(dag, context(history))
    assert by_key(dag, plan, "resource")["join-0"] == "large"
