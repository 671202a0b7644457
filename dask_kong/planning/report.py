"""Plan against reality: a run's predictions next to what happened.

`compare_plan` pairs every task's predicted execution time, start, end and output size
with the observed ones, and the predicted makespan with the observed one;
`render_report` prints that as a short text table. Observed starts and ends are seconds
from the first task's start; observed makespan is the client's (from submission), which
is what planners predict.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dask.utils import format_bytes, key_split

from ..dag import DAG
from ..metrics.records import RunSummary
from .plan import Plan


@dataclass(frozen=True)
class TaskComparison:
    """One task, predicted against observed (None: not predicted, or not observed)."""

    task: int
    function: str
    resource: str
    predicted_worker: int | None
    observed_worker: str | None
    predicted_exec_s: float | None
    observed_exec_s: float | None
    predicted_start_s: float | None
    observed_start_s: float | None
    predicted_end_s: float | None
    observed_end_s: float | None
    predicted_output_bytes: int | None
    observed_output_bytes: int | None
    #: Getting inputs other workers published (read, or recomputed from recipes).
    predicted_read_s: float | None = None
    observed_read_s: float | None = None
    #: Writing the output for other workers or the client.
    predicted_write_s: float | None = None
    observed_write_s: float | None = None


@dataclass(frozen=True)
class PlanReport:
    """A run's plan against its observation."""

    planner: str
    predicted_makespan_s: float | None
    observed_makespan_s: float
    critical_path: tuple[int, ...]
    tasks: tuple[TaskComparison, ...]

    @property
    def makespan_error(self) -> float | None:
        """|predicted - observed| / observed (None without a prediction)."""
        return relative_error(self.predicted_makespan_s, self.observed_makespan_s)

    def task_errors(self) -> dict[str, float | None]:
        """Per measure (exec, start, end, read, write, output), how wrong the per-task
        predictions were as a whole: sum |predicted - observed| / sum observed over the
        tasks with both. Summed, not averaged per task, so that a 1 ms task predicted at
        2 ms does not outweigh a 10 s task predicted at 11 s. None: nothing to compare."""
        return {
            name: weighted_error(
                [
                    (getattr(row, f"predicted_{field}"), getattr(row, f"observed_{field}"))
                    for row in self.tasks
                ]
            )
            for name, field in _MEASURES.items()
        }


def relative_error(predicted: float | None, observed: float) -> float | None:
    """|predicted - observed| / observed; None when nothing was predicted or observed."""
    if predicted is None or observed <= 0:
        return None
    return abs(predicted - observed) / observed


#: Measures `PlanReport.task_errors` reports: name -> TaskComparison field suffix.
_MEASURES = {
    "exec": "exec_s",
    "start": "start_s",
    "end": "end_s",
    "read": "read_s",
    "write": "write_s",
    "output": "output_bytes",
}


def weighted_error(pairs: Iterable[tuple[float | None, float | None]]) -> float | None:
    """sum |predicted - observed| / sum observed over the pairs with both values."""
    known = [(p, o) for p, o in pairs if p is not None and o is not None]
    observed = sum(o for _, o in known)
    if not known or observed <= 0:
        return None
    return sum(abs(p - o) for p, o in known) / observed


def compare_plan(dag: DAG, plan: Plan, summary: RunSummary) -> PlanReport:
    """Every task's predictions in `plan` next to its metrics in `summary`."""
    metrics = summary.task_metrics
    origin = min((m.start for m in metrics.values()), default=0.0)
    rows = []
    for task, task_plan in enumerate(plan.tasks):
        m = metrics.get(task)
        rows.append(
            TaskComparison(
                task=task,
                function=key_split(dag.keys[task]),
                resource=task_plan.resource,
                predicted_worker=task_plan.worker_hint,
                observed_worker=m.worker if m else None,
                predicted_exec_s=task_plan.predicted_exec_s,
                observed_exec_s=m.exec_s if m else None,
                predicted_start_s=task_plan.predicted_start_s,
                observed_start_s=m.start - origin if m else None,
                predicted_end_s=task_plan.predicted_end_s,
                observed_end_s=m.end - origin if m else None,
                predicted_output_bytes=task_plan.predicted_output_bytes,
                observed_output_bytes=m.output_bytes if m and m.output_bytes > 0 else None,
                predicted_read_s=task_plan.predicted_read_s,
                observed_read_s=m.read_s + m.recompute_s if m else None,
                predicted_write_s=task_plan.predicted_write_s,
                observed_write_s=m.write_s if m else None,
            )
        )
    return PlanReport(
        planner=plan.planner,
        predicted_makespan_s=plan.predicted_makespan_s,
        observed_makespan_s=summary.makespan_s,
        critical_path=plan.critical_path,
        tasks=tuple(rows),
    )


_COLUMNS = ("task", "function", "config", "exec s", "start s", "end s", "output")


def render_report(report: PlanReport, max_rows: int = 20) -> str:
    """The report as text: the makespan line, then one row per task (critical path
    first, marked *), each cell "predicted / observed"."""
    error = report.makespan_error
    lines = [
        f"planner {report.planner}: makespan predicted {_seconds(report.predicted_makespan_s)}"
        f" s, observed {report.observed_makespan_s:.3f} s"
        + (f" (error {error:.0%})" if error is not None else " (no prediction)")
    ]
    on_path = set(report.critical_path)
    ordered = [report.tasks[t] for t in report.critical_path]
    ordered += [row for row in report.tasks if row.task not in on_path]
    table = [list(_COLUMNS)]
    for row in ordered[:max_rows]:
        table.append(
            [
                f"{row.task}{'*' if row.task in on_path else ''}",
                row.function,
                row.resource,
                f"{_seconds(row.predicted_exec_s)} / {_seconds(row.observed_exec_s)}",
                f"{_seconds(row.predicted_start_s)} / {_seconds(row.observed_start_s)}",
                f"{_seconds(row.predicted_end_s)} / {_seconds(row.observed_end_s)}",
                f"{_bytes(row.predicted_output_bytes)} / {_bytes(row.observed_output_bytes)}",
            ]
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table
    ]
    if len(ordered) > max_rows:
        lines.append(f"... and {len(ordered) - max_rows} more tasks")
    return "\n".join(lines)


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _bytes(value: int | None) -> str:
    return "-" if value is None else format_bytes(value)
