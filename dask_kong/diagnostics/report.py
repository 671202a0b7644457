"""`performance_report`: the dashboard's views of every run in a block, in one HTML file.

    with dask_kong.performance_report(filename="run.html"):
        x.compute()

As distributed's `performance_report`, it records what ran inside the block and writes a
file at its end. The file is self-contained: bokeh's JavaScript and CSS are inlined
(`bokeh.resources.INLINE`), so it opens offline, mailed or archived, with no CDN. Every
run of any session in this process that finishes inside the block is in it, one tab per
run, with the same views as the live dashboard (`diagnostics.views`), replay included.

Nothing is imported from bokeh until the file is written, and while no block is open the
hook in `Kong.get` finds no observer: outside a block a report costs nothing.
"""

from __future__ import annotations

import html
import os
import threading
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..metrics.records import RunSummary
from . import observers
from .runs import RunGraph, RunRecord, planners_of

if TYPE_CHECKING:
    from ..session import Kong


class performance_report:  # named as distributed's, which users know
    """Records the runs of a `with` block and writes them as one offline HTML file."""

    def __init__(
        self,
        filename: str | os.PathLike[str] = "dask-kong-report.html",
        title: str = "dask-kong performance report",
    ) -> None:
        self.filename = os.fspath(filename)
        self.title = title
        self._lock = threading.Lock()
        self.records: list[RunRecord] = []
        self.planners: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> performance_report:
        observers.add_process_observer(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        observers.remove_process_observer(self)
        self.write()

    # -- RunObserver ----------------------------------------------------------------

    def run_started(self, start: observers.RunStart) -> None:
        """Keep what the summary lacks: when the run was submitted."""
        session = start.session
        record = RunRecord(
            start.run_id,
            lambda: RunGraph.from_run(
                start.run_id,
                start.dag,
                start.plan,
                session.backend_name,
                session.store_spec,
                start.started,
            ),
        )
        with self._lock:
            self.records.append(record)

    def run_finished(self, session: Kong, summary: RunSummary) -> None:
        """The summary holds every task's metrics; the history how planners compare."""
        record = next((r for r in self.records if r.run_id == summary.run_id), None)
        if record is None:  # started before the block: its start time is the summary's
            return
        record.finish_from_summary(summary)
        self.planners[summary.run_id] = planners_of(session.history, summary.shape_hash)

    def close(self) -> None:
        """Nothing to release (the file is written at the end of the block)."""

    # -- the file -------------------------------------------------------------------

    def write(self) -> str:
        """Write the report; returns its file name."""
        from bokeh.embed import file_html
        from bokeh.models import TabPanel, Tabs
        from bokeh.models.widgets import Div
        from bokeh.resources import INLINE

        from .views import RunViews

        finished = [r for r in self.records if r.finished]
        if finished:
            panels = [
                TabPanel(
                    child=RunViews(r, self.planners.get(r.run_id, {})).layout,
                    title=f"run {i + 1}: {r.graph.planner}, {len(r.graph)} tasks",
                )
                for i, r in enumerate(finished)
            ]
            document: Any = Tabs(tabs=panels)
        else:
            document = Div(text="<p>No dask-kong run finished inside this report's block.</p>")
        page = file_html(document, resources=INLINE, title=html.escape(self.title))
        with open(self.filename, "w", encoding="utf-8") as f:
            f.write(page)
        return self.filename
