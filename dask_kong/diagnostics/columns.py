"""A run's record as columns: the data behind every view of the dashboard and the report.

Each function turns a `RunRecord` into a dict of equally long lists, what a bokeh
`ColumnDataSource` holds, so the live dashboard and the offline report draw the same
numbers from the same code. Times are seconds from the run's submission
(`RunGraph.started`); a task not started yet has NaN times.

The graph is laid out once per run by networkx (`multipartite_layout` over the DAG's
topological generations: tasks left to right by depth); nothing here draws.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from bokeh.palettes import Category20_20
from dask.utils import format_bytes

from .. import config
from ..metrics.records import TaskMetrics
from ..planning.report import weighted_error
from .runs import RunGraph, RunRecord, TaskFailure, TaskState

Columns = dict[str, list[Any]]

NAN = float("nan")

STATE_COLORS = {
    TaskState.WAITING: "#d9d9d9",
    TaskState.READY: "#9ecae1",
    TaskState.RUNNING: "#fd8d3c",
    TaskState.DONE: "#74c476",
    TaskState.FAILED: "#de2d26",
}
#: Colour of a task that no worker ran yet, when colouring by worker.
UNRUN_COLOR = "#eeeeee"
#: The phases of a task in the task stream, in the order a worker goes through them.
PHASE_COLORS = {
    "start-up (cold)": "#6a51a3",
    "start-up (warm)": "#bcbddc",
    "read": "#e6550d",
    "recompute": "#fdd0a2",
    "execute": "#3182bd",
    "write": "#31a354",
    "invoke": "#969696",
}
#: How nodes may be coloured (the order of the dashboard's toggle).
COLOR_MODES = ("worker", "state", "invocation")


#: Category20's strong colours first, then their light pairs: neighbours differ in hue.
WORKER_COLORS = (*Category20_20[0::2], *Category20_20[1::2])


def palette_color(index: int) -> str:
    return WORKER_COLORS[index % len(WORKER_COLORS)]


def layout(graph: RunGraph) -> tuple[list[float], list[float]]:
    """x, y of every task: generations of the DAG left to right (networkx)."""
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(graph)))
    dag.add_edges_from((p, c) for c, parents in enumerate(graph.parents) for p in parents)
    generations = {depth: nodes for depth, nodes in enumerate(nx.topological_generations(dag))}
    if not generations:
        return [], []
    positions = nx.multipartite_layout(dag, subset_key=generations, align="vertical")
    return [float(positions[t][0]) for t in range(len(graph))], [
        float(positions[t][1]) for t in range(len(graph))
    ]


def cached_layout(record: RunRecord) -> tuple[list[float], list[float]]:
    """The record's layout, computed on first use (a run's graph never changes)."""
    if "layout" not in record.cache:
        record.cache["layout"] = layout(record.graph)
    result: tuple[list[float], list[float]] = record.cache["layout"]
    return result


def relative(graph: RunGraph, wall: float) -> float:
    return wall - graph.started if wall else NAN


class Palette:
    """One colour per worker (container) or invocation, in order of first appearance."""

    def __init__(self) -> None:
        self.assigned: dict[str, str] = {}

    def __call__(self, name: str | None) -> str:
        if not name:
            return UNRUN_COLOR
        if name not in self.assigned:
            self.assigned[name] = palette_color(len(self.assigned))
        return self.assigned[name]


def containers_in_order(metrics: Mapping[int, TaskMetrics]) -> list[str]:
    """Containers (worker processes or threads) by the start of their first task."""
    first: dict[str, float] = {}
    for m in metrics.values():
        first[m.container] = min(first.get(m.container, math.inf), m.start)
    return sorted(first, key=lambda c: first[c])


def node_columns(record: RunRecord) -> Columns:
    """Per task: position, state, colours (by worker, by state, by invocation; and
    `color_replay`, which the replay fills), times, and the HTML of its details (shown
    when the task is clicked)."""
    graph = record.graph
    xs, ys = cached_layout(record)
    states = record.states()
    metrics, failures, _ = record.snapshot()
    by_container = Palette()
    for container in containers_in_order(metrics):
        by_container(container)
    by_invocation = Palette()
    critical = set(graph.critical_path)
    columns: Columns = {name: [] for name in NODE_COLUMNS}
    for task in range(len(graph)):
        m = metrics.get(task)
        colors = {
            "worker": by_container(m.container if m else None),
            "state": STATE_COLORS[states[task]],
            "invocation": by_invocation(m.worker if m else None),
        }
        row = {
            "index": task,
            "x": xs[task],
            "y": ys[task],
            "key": graph.keys[task],
            "name": graph.names[task],
            "state": str(states[task]),
            "container": m.container if m else "",
            "invocation": m.worker if m else "",
            "start": relative(graph, m.start) if m else NAN,
            "end": relative(graph, m.end) if m else NAN,
            "color_replay": colors["worker"],
            "color_worker": colors["worker"],
            "color_state": colors["state"],
            "color_invocation": colors["invocation"],
            "line_width": 3.0 if task in critical else 1.0,
            "detail": cached_detail(record, task, states[task], m, failures.get(task)),
        }
        for name, value in row.items():
            columns[name].append(value)
    return columns


NODE_COLUMNS = (
    "index",
    "x",
    "y",
    "key",
    "name",
    "state",
    "container",
    "invocation",
    "start",
    "end",
    "color_replay",
    "color_worker",
    "color_state",
    "color_invocation",
    "line_width",
    "detail",
)


def edge_columns(graph: RunGraph) -> Columns:
    """Per edge of the DAG: parent (`start`) and child (`end`), bokeh's graph convention."""
    starts, ends = [], []
    for child, parents in enumerate(graph.parents):
        for parent in parents:
            starts.append(parent)
            ends.append(child)
    return {"start": starts, "end": ends}


def cached_detail(
    record: RunRecord,
    task: int,
    state: TaskState,
    m: TaskMetrics | None,
    failure: TaskFailure | None,
) -> str:
    """`task_detail`, made again only when the task's state, metrics or failure changed:
    a live page asks for every task's details on every update, most of them unchanged."""
    cache: dict[int, tuple[tuple[Any, ...], str]] = record.cache.setdefault("details", {})
    stamp = (state, id(m), id(failure))
    known = cache.get(task)
    if known is None or known[0] != stamp:
        known = cache[task] = (stamp, task_detail(record.graph, task, state, m, failure))
    return known[1]


def task_detail(
    graph: RunGraph,
    task: int,
    state: TaskState,
    m: TaskMetrics | None,
    failure: TaskFailure | None,
) -> str:
    """A task's details as an HTML table: what ran it, when, how long each phase took,
    the sizes, what the plan said; then what it printed or logged, and its error."""
    rows: list[tuple[str, str]] = [
        ("task", f"{task}: {graph.keys[task]}"),
        ("function", graph.names[task]),
        ("state", str(state)),
        ("resource config", graph.resources[task]),
    ]
    if m is not None:
        rows += observed_rows(graph, m)
    rows += planned_rows(graph, task)
    cells = "".join(
        f"<tr><th>{html.escape(name)}</th><td>{html.escape(value)}</td></tr>"
        for name, value in rows
    )
    text = f'<table class="kong-detail">{cells}</table>'
    if m is not None and m.logs:  # what it printed or logged in a worker process
        text += f"<p><b>logs</b></p><pre>{html.escape(m.logs)}</pre>"
    if failure is not None:
        text += (
            f"<p><b>error</b> on {html.escape(failure.worker)}: {html.escape(failure.message)}"
            f"</p><pre>{html.escape(failure.traceback)}</pre>"
        )
    return text


def observed_rows(graph: RunGraph, m: TaskMetrics) -> list[tuple[str, str]]:
    start = relative(graph, m.start)
    rows = [
        ("worker", m.container),
        ("invocation", m.worker),
        ("ran on config", m.resource),
        ("start / end", f"{start:.3f} s / {relative(graph, m.end):.3f} s"),
        ("duration", f"{m.end - m.start:.4f} s"),
        ("read", f"{m.read_s:.4f} s, {format_bytes(m.read_bytes)}"),
        ("kept by its worker", format_bytes(m.cached_bytes)),
        ("execute", f"{m.exec_s:.4f} s"),
        ("write", f"{m.write_s:.4f} s, {format_bytes(m.written_bytes)}"),
        ("output", format_bytes(m.output_bytes)),
        ("invocations made", f"{m.invocations} in {m.invoke_s:.4f} s"),
    ]
    if m.recompute_s:
        rows.append(("recomputed inputs", f"{m.recompute_s:.4f} s"))
    if m.startup_s:
        rows.append(("start-up", f"{m.startup_s:.4f} s ({'cold' if m.cold_start else 'warm'})"))
    flags = [name for name, on in (("recipe", m.recipe), ("stateful", m.stateful)) if on]
    if flags:
        rows.append(("published as", ", ".join(flags)))
    for warning in getattr(m, "warnings", ()):
        rows.append(("warning", f"{warning.category.__name__}: {warning.message}"))
    return rows


def planned_rows(graph: RunGraph, task: int) -> list[tuple[str, str]]:
    rows = []
    if graph.optimizations[task]:
        rows.append(("plan: optimizations", graph.optimizations[task]))
    if task in graph.critical_path:
        rows.append(("plan", "on the critical path"))
    for name, values in graph.predicted.items():
        value = values[task]
        if value is not None:
            shown = format_bytes(int(value)) if name.endswith("bytes") else f"{value:.4f} s"
            rows.append((name.replace("_", " "), shown))
    return rows


def stream_columns(record: RunRecord, skip: Collection[int] = ()) -> tuple[Columns, list[int]]:
    """The task stream: one bar per phase of every task, on the row of its worker
    (container). A task's phases are drawn one after the other from its start: start-up
    (before the start, for an invocation's first task), read, recompute, execute, write,
    invoke; time a task spent otherwise (fan-in marks, waits) is the gap to its end.

    Tasks in `skip` are left out (a live page sends only new tasks' bars); returns the
    columns and the tasks they hold."""
    graph = record.graph
    metrics, _, _ = record.snapshot()
    columns: Columns = {name: [] for name in STREAM_COLUMNS}
    drawn = [t for t in metrics if t not in skip]
    for task in drawn:
        m = metrics[task]
        start = relative(graph, m.start)
        phases = [
            ("start-up (cold)" if m.cold_start else "start-up (warm)", -m.startup_s),
            ("read", m.read_s),
            ("recompute", m.recompute_s),
            ("execute", m.exec_s),
            ("write", m.write_s),
            ("invoke", m.invoke_s),
        ]
        at = start
        for phase, seconds in phases:
            if seconds == 0:
                continue
            left, right = (start + seconds, start) if seconds < 0 else (at, at + seconds)
            at = max(at, right)
            for name, value in (
                ("worker", m.container),
                ("left", left),
                ("right", right),
                ("phase", phase),
                ("color", PHASE_COLORS[phase]),
                ("key", graph.keys[task]),
                ("seconds", abs(seconds)),
            ):
                columns[name].append(value)
    return columns, drawn


STREAM_COLUMNS = ("worker", "left", "right", "phase", "color", "key", "seconds")


def progress_columns(record: RunRecord) -> Columns:
    """Per function name, how many of its tasks are in each state (distributed's
    progress bars)."""
    graph = record.graph
    counts: dict[str, Counter[str]] = {}
    for task, state in enumerate(record.states()):
        counts.setdefault(graph.names[task], Counter())[state] += 1
    first: dict[str, int] = {}
    for task, name in enumerate(graph.names):
        first.setdefault(name, task)
    names = sorted(counts, key=first.__getitem__)
    columns: Columns = {"name": names, "total": [sum(counts[n].values()) for n in names]}
    for state in TaskState:
        columns[str(state)] = [counts[n][state] for n in names]
    return columns


def bytes_columns(record: RunRecord, max_points: int | None = None) -> Columns:
    """Bytes written to and read from the store so far, over time: a point per task
    (written at its end, read at its start), at most `max_points` of them
    (`kong.dashboard.max_points`; the last always kept)."""
    graph = record.graph
    metrics, _, _ = record.snapshot()
    points = sorted(
        [(relative(graph, m.end), m.written_bytes, 0) for m in metrics.values()]
        + [(relative(graph, m.start), 0, m.read_bytes) for m in metrics.values()]
    )
    written = read = 0
    columns: Columns = {"time": [0.0], "written": [0], "read": [0]}
    limit = int(config.get("dashboard.max_points", max_points))
    every = max(1, math.ceil(len(points) / limit))
    for i, (time, w, r) in enumerate(points):
        written += w
        read += r
        if i % every == 0 or i == len(points) - 1:
            columns["time"].append(time)
            columns["written"].append(written)
            columns["read"].append(read)
    return columns


def startup_columns(record: RunRecord) -> Columns:
    """Every invocation's start-up (its first task), cold or warm, over time."""
    graph = record.graph
    metrics, _, _ = record.snapshot()
    columns: Columns = {"time": [], "startup": [], "kind": [], "color": [], "key": []}
    for task, m in metrics.items():
        if m.startup_s <= 0:
            continue
        kind = "cold" if m.cold_start else "warm"
        columns["time"].append(relative(graph, m.start))
        columns["startup"].append(m.startup_s)
        columns["kind"].append(kind)
        columns["color"].append(PHASE_COLORS[f"start-up ({kind})"])
        columns["key"].append(graph.keys[task])
    return columns


def summary_counts(record: RunRecord) -> dict[str, Any]:
    """The numbers at the top of the page: progress, bytes, invocations, time."""
    graph = record.graph
    metrics, failures, outcome = record.snapshot()
    states = Counter(record.states())
    startups = [m for m in metrics.values() if m.startup_s > 0]
    ends = [m.end for m in metrics.values()]
    return {
        "run": record.run_id,
        "status": status(outcome.succeeded if outcome else None, failures),
        "planner": graph.planner,
        "backend": f"{graph.backend} / {graph.store}",
        "tasks": len(graph),
        "done": states[TaskState.DONE],
        "running": states[TaskState.RUNNING],
        "failed": states[TaskState.FAILED],
        "workers": len({m.container for m in metrics.values()}),
        "invocations": len({m.worker for m in metrics.values()}),
        "invocations made": sum(m.invocations for m in metrics.values()),
        "cold starts": sum(1 for m in startups if m.cold_start),
        "warm starts": sum(1 for m in startups if not m.cold_start),
        "bytes written": sum(m.written_bytes for m in metrics.values()),
        "bytes read": sum(m.read_bytes for m in metrics.values()),
        "bytes cached": sum(m.cached_bytes for m in metrics.values()),
        "elapsed s": outcome.makespan_s if outcome else relative(graph, max(ends, default=0.0)),
        "error": outcome.error if outcome else "",
    }


def status(succeeded: bool | None, failures: Mapping[int, TaskFailure]) -> str:
    if succeeded is None:
        return "failing" if failures else "running"
    return "finished" if succeeded else "failed"


def summary_html(counts: Mapping[str, Any]) -> str:
    """The counts as one line of labelled figures."""
    cells = []
    for name, value in counts.items():
        if name == "error" and not value:
            continue
        if name.startswith("bytes"):
            shown = format_bytes(int(value))
        elif isinstance(value, float):
            shown = "-" if math.isnan(value) else f"{value:.3f}"
        else:
            shown = str(value)
        cells.append(
            f'<span class="kong-count" data-name="{html.escape(name)}">'
            f"<b>{html.escape(name)}</b> {html.escape(shown)}</span>"
        )
    return " &nbsp; ".join(cells)


#: Measures compared in plan against reality: label -> (prediction, observed metric).
PLAN_MEASURES = {
    "start": "predicted_start_s",
    "execute": "predicted_exec_s",
    "read": "predicted_read_s",
    "write": "predicted_write_s",
    "output": "predicted_output_bytes",
}


#: Colour of each measure in plan against reality (the task stream's phase colours).
MEASURE_COLORS = {
    "start": "#756bb1",
    "execute": PHASE_COLORS["execute"],
    "read": PHASE_COLORS["read"],
    "write": PHASE_COLORS["write"],
    "output": "#3182bd",
}


def observed_value(graph: RunGraph, measure: str, m: TaskMetrics) -> float | None:
    """The observed counterpart of a prediction. Starts are taken from the first task's
    start, as `planning.report.compare_plan` does: predicted starts count from the first
    invocation, not from submission."""
    if measure == "start":
        return m.start
    if measure == "execute":
        return m.exec_s
    if measure == "read":
        return m.read_s + m.recompute_s
    if measure == "write":
        return m.write_s
    return float(m.output_bytes) if m.output_bytes > 0 else None


def plan_columns(record: RunRecord) -> Columns:
    """Per task that ran (critical path first): predicted against observed of each
    measure (NaN where either is missing), and whether it is on the critical path."""
    graph = record.graph
    metrics, _, _ = record.snapshot()
    origin = min((m.start for m in metrics.values()), default=0.0)
    critical = set(graph.critical_path)
    columns: Columns = {"task": [], "key": [], "critical": []}
    for measure in PLAN_MEASURES:
        columns[f"{measure}_predicted"] = []
        columns[f"{measure}_observed"] = []
    ordered = [*graph.critical_path, *(t for t in range(len(graph)) if t not in critical)]
    for task in ordered:
        m = metrics.get(task)
        if m is None:
            continue
        columns["task"].append(task)
        columns["key"].append(graph.keys[task])
        columns["critical"].append(task in critical)
        for measure, prediction in PLAN_MEASURES.items():
            predicted = graph.predicted[prediction][task]
            observed = observed_value(graph, measure, m)
            if measure == "start" and observed is not None:
                observed -= origin
            if predicted is None or observed is None:
                predicted = observed = NAN  # a pair or nothing: NaN is not drawn
            columns[f"{measure}_predicted"].append(float(predicted))
            columns[f"{measure}_observed"].append(float(observed))
    return columns


def plan_errors(record: RunRecord) -> dict[str, float | None]:
    """How wrong the predictions were, per measure and for the makespan, as fractions:
    sum |predicted - observed| / sum observed over the tasks (see
    `planning.report.PlanReport.task_errors`)."""
    graph = record.graph
    columns = plan_columns(record)
    errors: dict[str, float | None] = {}
    for measure in PLAN_MEASURES:
        pairs = zip(columns[f"{measure}_predicted"], columns[f"{measure}_observed"], strict=True)
        errors[measure] = weighted_error(
            (p, o) for p, o in pairs if not (math.isnan(p) or math.isnan(o))
        )
    _, _, outcome = record.snapshot()
    predicted = graph.predicted_makespan_s
    if predicted is not None and outcome is not None and outcome.makespan_s > 0:
        errors["makespan"] = abs(predicted - outcome.makespan_s) / outcome.makespan_s
    else:
        errors["makespan"] = None
    return errors


def absolute_misses(record: RunRecord) -> dict[str, str]:
    """Per measure, sum |predicted - observed| over the tasks, as " (0.012 s)": a large
    percentage of a few milliseconds (writes of tiny outputs) is nothing to worry about."""
    columns = plan_columns(record)
    misses = {}
    for measure in PLAN_MEASURES:
        pairs = zip(columns[f"{measure}_predicted"], columns[f"{measure}_observed"], strict=True)
        total = sum(abs(p - o) for p, o in pairs if not (math.isnan(p) or math.isnan(o)))
        shown = format_bytes(int(total)) if measure == "output" else f"{total:.3f} s"
        misses[measure] = f" ({shown})"
    return misses


def plan_html(record: RunRecord) -> str:
    """The plan's headline: makespan predicted and observed, errors in percent, the
    critical path."""
    graph = record.graph
    if not graph.has_predictions:
        return (
            f"<p>The <b>{html.escape(graph.planner)}</b> planner made no predictions for this "
            "run. The <code>uniform</code> and <code>non_uniform</code> planners predict "
            "from the metrics history once a computation has run before.</p>"
        )
    errors = plan_errors(record)
    misses = absolute_misses(record)
    _, _, outcome = record.snapshot()
    observed = f"{outcome.makespan_s:.3f} s" if outcome else "(running)"
    shown = ", ".join(
        f"{name} {'-' if error is None else f'{error:.0%}'}{misses.get(name, '')}"
        for name, error in errors.items()
    )
    path = " &rarr; ".join(html.escape(graph.keys[t]) for t in graph.critical_path[:12])
    if len(graph.critical_path) > 12:
        path += f" &rarr; ... ({len(graph.critical_path)} tasks)"
    return (
        f'<p class="kong-plan">makespan predicted {graph.predicted_makespan_s or 0:.3f} s, '
        f"observed {observed}.<br><b>prediction error</b> (sum of |predicted - observed| "
        f"over sum of observed; in brackets the sum of |predicted - observed|): {shown}"
        f"<br><b>critical path</b>: {path}</p>"
    )


def planner_columns(stats: Mapping[str, Any]) -> Columns:
    """Per planner that ran this shape (from the metrics history): runs, median makespan
    and median prediction error."""
    from ..planning.history import Metric

    columns: Columns = {"planner": [], "runs": [], "makespan": [], "error": [], "label": []}
    for planner, s in sorted(stats.items()):
        median = s.percentile(Metric.MAKESPAN_S, 50) or 0.0
        error = s.percentile(Metric.MAKESPAN_ERROR, 50)
        runs = s.count(Metric.MAKESPAN_S)
        columns["planner"].append(planner)
        columns["runs"].append(runs)
        columns["makespan"].append(median)
        columns["error"].append(NAN if error is None else error)
        shown = f"{runs} run" + ("" if runs == 1 else "s")
        columns["label"].append(shown + ("" if error is None else f", error {error:.0%}"))
    return columns


def changed_rows(old: Any, new: Sequence[Any]) -> list[int]:
    """Indices where two equally long columns differ (NaN equals NaN)."""
    return [i for i, (a, b) in enumerate(zip(old, new, strict=True)) if not same(a, b)]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)
