"""Plan against reality (report) and the plan as a DOT graph."""

from __future__ import annotations

import itertools
import re
import shutil
from pathlib import Path

import pytest

from dask_kong.dag import DAG, to_dag
from dask_kong.metrics.records import RunSummary, TaskMetrics
from dask_kong.planning import (
    Plan,
    TaskPlan,
    compare_plan,
    plan_to_dot,
    render_report,
    write_plan_png,
)
from dask_kong.planning.dot import GraphvizNotInstalledError, worker_colours
from dask_kong.planning.planners import plan_uniform
from dask_kong.planning.report import relative_error

from .test_planning_planners import context, diamond, diamond_history, summary_of, work


def chain_plan() -> tuple[Plan, DAG, RunSummary]:
    """a -> b, predicted 1 s + 2 s; observed 1.5 s + 2.5 s, makespan 5 s."""
    dag = to_dag({"a-0": (work,), "b-0": (work, "a-0")}, "b-0")
    a, b = dag.index_of("a-0"), dag.index_of("b-0")
    predictions = {
        a: TaskPlan("small", worker_hint=0, predicted_start_s=0.0, predicted_end_s=1.0,
                    predicted_exec_s=1.0, predicted_output_bytes=100),
        b: TaskPlan("small", worker_hint=0, predicted_start_s=1.0, predicted_end_s=3.0,
                    predicted_exec_s=2.0, predicted_output_bytes=10),
    }  # fmt: skip
    plan = Plan(
        "uniform",
        tuple(predictions[t] for t in range(2)),
        critical_path=(a, b),
        predicted_makespan_s=4.0,
    )
    summary = summary_of(
        dag,
        {
            "a-0": TaskMetrics("w", start=100.0, end=101.5, exec_s=1.5, output_bytes=120),
            "b-0": TaskMetrics("w", start=101.5, end=104.0, exec_s=2.5),
        },
        makespan_s=5.0,
    )
    return plan, dag, summary


def test_report_pairs_predictions_with_observations_and_makespan_error() -> None:
    plan, dag, summary = chain_plan()
    report = compare_plan(dag, plan, summary)
    assert report.predicted_makespan_s == 4.0 and report.observed_makespan_s == 5.0
    assert report.makespan_error == pytest.approx(0.2)  # |4 - 5| / 5
    b = report.tasks[dag.index_of("b-0")]
    assert (b.predicted_exec_s, b.observed_exec_s) == (2.0, 2.5)
    assert (b.predicted_start_s, b.observed_start_s) == (1.0, 1.5)  # from the first start
    assert (b.predicted_end_s, b.observed_end_s) == (3.0, 4.0)
    assert (b.predicted_output_bytes, b.observed_output_bytes) == (10, None)  # 0: unknown
    a = report.tasks[dag.index_of("a-0")]
    assert a.observed_output_bytes == 120 and a.observed_worker == "w"


def test_relative_error_needs_a_prediction_and_an_observation() -> None:
    assert relative_error(6.0, 4.0) == 0.5
    assert relative_error(None, 4.0) is None
    assert relative_error(1.0, 0.0) is None


def test_rendered_report_shows_the_error_and_the_critical_path_first() -> None:
    plan, dag, summary = chain_plan()
    text = render_report(compare_plan(dag, plan, summary))
    lines = text.splitlines()
    assert lines[0] == "planner uniform: makespan predicted 4.000 s, observed 5.000 s (error 20%)"
    assert lines[1].split() == ["task", "function", "config", "exec", "s", "start", "s",
                                "end", "s", "output"]  # fmt: skip
    assert re.match(r"\d\*\s+a\s+small\s+1\.000 / 1\.500", lines[2])
    assert re.match(r"\d\*\s+b\s+small\s+2\.000 / 2\.500", lines[3])
    truncated = render_report(compare_plan(dag, plan, summary), max_rows=1)
    assert truncated.splitlines()[-1] == "... and 1 more tasks"


def test_report_of_an_unpredicted_plan_says_so() -> None:
    _, dag, summary = chain_plan()
    bare = Plan("wukong", tuple(TaskPlan() for _ in range(2)))
    report = compare_plan(dag, bare, summary)
    assert report.makespan_error is None
    assert "(no prediction)" in render_report(report)


def dot_nodes(dot: str) -> dict[str, str]:
    """Node name -> its attribute text."""
    return dict(re.findall(r"^  (t\d+) \[(.*)\];$", dot, flags=re.M))


def attribute(attrs: str, name: str) -> str | None:
    match = re.search(rf'{name}="([^"]*)"', attrs)
    return match.group(1) if match else None


def test_dot_draws_the_critical_path_bold_and_one_colour_per_worker() -> None:
    dag = diamond()
    plan = plan_uniform(dag, context(diamond_history()))
    dot = plan_to_dot(dag, plan)
    nodes = dot_nodes(dot)
    assert set(nodes) == {f"t{t}" for t in range(len(dag))}
    on_path = {f"t{t}" for t in plan.critical_path}
    bold = {name for name, attrs in nodes.items() if "bold" in (attribute(attrs, "style") or "")}
    assert bold == on_path
    bold_edges = set(re.findall(r"^  (t\d+) -> (t\d+) \[style=bold", dot, flags=re.M))
    path = [f"t{t}" for t in plan.critical_path]
    assert bold_edges == set(itertools.pairwise(path))
    assert dot.count(" -> ") == sum(len(p) for p in dag.parents)
    colour_of_worker: dict[int | None, set[str | None]] = {}
    for t, task in enumerate(plan.tasks):
        colour_of_worker.setdefault(task.worker_hint, set()).add(
            attribute(nodes[f"t{t}"], "fillcolor")
        )
    assert all(len(colours) == 1 for colours in colour_of_worker.values())
    distinct = {next(iter(c)) for c in colour_of_worker.values()}
    assert len(distinct) == len(colour_of_worker) == 3
    src = dag.index_of("src-0")
    assert attribute(nodes[f"t{src}"], "label") == "src\\nsmall"


def test_dot_colours_by_observed_worker_when_given_a_run() -> None:
    plan, dag, summary = chain_plan()
    summary.task_metrics[dag.index_of("b-0")].worker = "other"
    nodes = dot_nodes(plan_to_dot(dag, plan, summary))
    assert attribute(nodes["t0"], "fillcolor") != attribute(nodes["t1"], "fillcolor")
    assert "worker other" in nodes[f"t{dag.index_of('b-0')}"]


def test_dot_escapes_quotes_in_labels() -> None:
    dag = to_dag({'say"hi"-0': (work,)}, 'say"hi"-0')
    dot = plan_to_dot(dag, Plan("wukong", (TaskPlan(),)))
    assert 'label="say\\"hi\\"\\ndefault"' in dot


def test_worker_colours_stay_distinct_for_many_workers() -> None:
    colours = worker_colours(list(range(500)))
    assert len(set(colours.values())) == 500


def test_png_export_without_graphviz_raises_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` anywhere on PATH
    with pytest.raises(GraphvizNotInstalledError, match="Graphviz is not installed"):
        write_plan_png("digraph plan {}", tmp_path / "plan.png")
    assert not (tmp_path / "plan.png").exists()


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_png_export_with_graphviz_writes_a_png(tmp_path: Path) -> None:
    dag = diamond()
    dot = plan_to_dot(dag, plan_uniform(dag, context(diamond_history())))
    write_plan_png(dot, tmp_path / "plan.png")
    assert (tmp_path / "plan.png").read_bytes().startswith(b"\x89PNG")


def test_report_pairs_predicted_reads_and_writes_and_sums_errors_per_measure() -> None:
    plan, dag, summary = chain_plan()
    a, b = dag.index_of("a-0"), dag.index_of("b-0")
    tasks = list(plan.tasks)
    tasks[a] = TaskPlan("small", predicted_exec_s=1.0, predicted_write_s=0.2)
    tasks[b] = TaskPlan("small", predicted_exec_s=2.0, predicted_read_s=0.1)
    plan = Plan("uniform", tuple(tasks), predicted_makespan_s=4.0)
    summary.task_metrics[a].write_s = 0.4
    summary.task_metrics[b].read_s, summary.task_metrics[b].recompute_s = 0.2, 0.1
    report = compare_plan(dag, plan, summary)
    row_b = report.tasks[b]
    assert row_b.predicted_read_s == 0.1 and row_b.observed_read_s == pytest.approx(0.3)
    assert (report.tasks[a].predicted_write_s, report.tasks[a].observed_write_s) == (0.2, 0.4)
    errors = report.task_errors()
    # exec: |1 - 1.5| + |2 - 2.5| over 1.5 + 2.5; a big task weighs more than a small one
    assert errors["exec"] == pytest.approx(1.0 / 4.0)
    assert errors["write"] == pytest.approx(0.2 / 0.4)  # b predicted no write: not counted
    assert errors["start"] is None  # predictions dropped above: nothing to compare
