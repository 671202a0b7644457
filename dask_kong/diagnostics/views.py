"""The views of one run, as bokeh models: what the live dashboard and the report show.

`RunViews` builds, from a `RunRecord`, one bokeh layout with two tabs:

* **run**: the figures at the top (progress, bytes, invocations, time), the DAG drawn by
  bokeh's graph renderer on networkx's layout (nodes coloured by worker, by state or by
  invocation; the critical path outlined; a click shows the task's details), the task
  stream per worker (start-up, read, recompute, execute, write, invoke), progress per
  function, bytes moved over time, start-ups cold and warm, and a replay of the finished
  run on its timeline;
* **plan against reality**: the makespan and the aggregate prediction error, predicted
  against observed per task and measure, the critical path, and how the planners that
  ran this shape compared (from the metrics history).

The live dashboard calls `update` every `kong.dashboard.refresh_ms`: only what changed
since the last call crosses the websocket. The interactions (colour mode, details on
click, replay) are small `CustomJS` callbacks, so they work the same in the report's
static HTML file as on the live page.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    CustomJS,
    FactorRange,
    HoverTool,
    MultiLine,
    NumeralTickFormatter,
    Range1d,
    Scatter,
    StaticLayoutProvider,
    TabPanel,
    Tabs,
    TapTool,
)
from bokeh.models.annotations import Slope, Span
from bokeh.models.layouts import LayoutDOM
from bokeh.models.renderers import GraphRenderer
from bokeh.models.widgets import (
    Button,
    DataTable,
    Div,
    NumberFormatter,
    RadioButtonGroup,
    Slider,
    TableColumn,
)
from bokeh.plotting import figure

from .. import config
from . import columns as cols
from .runs import RunRecord, TaskState

#: Figure sizes, in CSS pixels (a 1280 pixel wide window holds two side by side).
WIDE = 1200
HALF = 590
TALL = 360
SHORT = 240

DETAIL_HINT = "<p><i>Click a task in the graph to see its details.</i></p>"

# Colours nodes by the chosen mode: the glyphs read that mode's colour column.
COLOR_MODE_JS = """
const column = 'color_' + radio.labels[radio.active];
for (const glyph of glyphs) glyph.fill_color = {field: column};
"""

# Shows the clicked task's details (and keeps them current as the data changes).
DETAIL_JS = """
const picked = nodes.selected.indices;
div.text = picked.length ? nodes.data.detail[picked[0]] : hint;
"""

# Replay: every node's state at the slider's time, from its start and end (a task is
# ready once every parent ended), coloured as the chosen mode colours it, into the
# color_replay column the glyphs read until the slider is back at the end.
REPLAY_JS = """
const t = slider.value;
const data = nodes.data;
const n = data.index.length;
const mode = radio.labels[radio.active];
const parents = Array.from({length: n}, () => []);
const starts = edges.data.start, ends = edges.data.end;
for (let k = 0; k < starts.length; k++) parents[ends[k]].push(starts[k]);
const colors = new Array(n);
for (let i = 0; i < n; i++) {
  const s = data.start[i], e = data.end[i];
  let state = 'waiting';
  if (data.state[i] === 'failed') state = 'failed';
  else if (!isNaN(s) && t >= e) state = 'done';
  else if (!isNaN(s) && t >= s) state = 'running';
  else if (parents[i].every(p => !isNaN(data.end[p]) && data.end[p] <= t)) state = 'ready';
  if (mode === 'state') colors[i] = state_colors[state];
  else colors[i] = (state === 'waiting' || state === 'ready') ? unrun : data['color_' + mode][i];
}
data.color_replay = colors;
nodes.change.emit();
const column = t >= slider.end ? 'color_' + mode : 'color_replay';
for (const glyph of glyphs) glyph.fill_color = {field: column};
span.location = t;
"""

# Play / pause: moves the replay slider to the end in about `steps` ticks.
PLAY_JS = """
if (button.tags.length) {
  clearInterval(button.tags[0]);
  button.tags = [];
  button.label = 'replay';
  return;
}
if (slider.value >= slider.end) slider.value = slider.start;
const step = (slider.end - slider.start) / steps;
const timer = setInterval(() => {
  const next = Math.min(slider.end, slider.value + step);
  slider.value = next;
  if (next >= slider.end) { clearInterval(timer); button.tags = []; button.label = 'replay'; }
}, tick_ms);
button.tags = [timer];
button.label = 'pause';
"""


class RunViews:
    """Every view of one run, built once and updated in place. A live page keeps one
    `RunViews` and `show`s another run in it: building bokeh models costs far more, in
    the server and in the browser, than replacing their data."""

    def __init__(
        self, record: RunRecord, planners: Mapping[str, Any] | None = None, live: bool = False
    ) -> None:
        self.live = live
        self.max_graph_tasks = int(config.get("dashboard.max_graph_tasks"))
        self.header = Div(text="", sizing_mode="stretch_width", css_classes=["kong-header"])
        self.nodes = ColumnDataSource({name: [] for name in cols.NODE_COLUMNS})
        self.edges = ColumnDataSource({"start": [], "end": []})
        self.stream = ColumnDataSource({name: [] for name in cols.STREAM_COLUMNS})
        self.progress = ColumnDataSource(cols.progress_columns(record))
        self.bytes = ColumnDataSource(cols.bytes_columns(record))
        self.startups = ColumnDataSource(cols.startup_columns(record))
        self.plan = ColumnDataSource(cols.plan_columns(record))
        self.planners = ColumnDataSource(cols.planner_columns({}))
        self.plan_header = Div(text="", sizing_mode="stretch_width")
        self.too_big = Div(text="", visible=False)
        # Ranges of the figures that grow during a run are set here, not left to the
        # browser: a browser that ranges them itself sends every new extent back to
        # the server, a message per range and update.
        self.time_range = Range1d(start=0, end=1)
        self.task_count_range = Range1d(start=0, end=1)
        self.bytes_range = Range1d(start=0, end=1)
        self.startup_range = Range1d(start=0, end=1)
        self.layout = self._build()
        self.show(record, planners)

    def show(self, record: RunRecord, planners: Mapping[str, Any] | None = None) -> None:
        """Show `record` (another run, or the first) in these views."""
        self.record = record
        self.version = -1
        graph = record.graph
        self.draws_graph = len(graph) <= self.max_graph_tasks
        self.graph_figure.visible = self.draws_graph
        self.too_big.visible = not self.draws_graph
        self.too_big.text = (
            f"<p>The graph has {len(graph)} tasks, more than kong.dashboard.max_graph_tasks "
            f"({self.max_graph_tasks}): not drawn.</p>"
        )
        self.nodes.selected.indices = []
        self.streamed: set[int] = set()
        self.ranged_finished = False
        self.stream.data = {name: [] for name in cols.STREAM_COLUMNS}
        if self.draws_graph:
            xs, ys = cols.cached_layout(record)
            positions = enumerate(zip(xs, ys, strict=True))
            self.layout_provider.graph_layout = {i: [x, y] for i, (x, y) in positions}
            self.nodes.data = cols.node_columns(record)
            self.edges.data = cols.edge_columns(graph)
        else:
            self.layout_provider.graph_layout = {}
            self.nodes.data = {name: [] for name in cols.NODE_COLUMNS}
            self.edges.data = {"start": [], "end": []}
        self.set_planners(planners or {})
        self.planners_shown = planners is not None
        self.update()

    # -- building ------------------------------------------------------------------

    def _build(self) -> LayoutDOM:
        run_tab = column(
            self.header,
            self._graph_views(),
            row(self._task_stream(), self._progress()),
            row(self._bytes_moved(), self._startups()),
        )
        plan_tab = column(self.plan_header, self._plan_views())
        self.tabs = Tabs(
            tabs=[TabPanel(child=run_tab, title="run"), TabPanel(child=plan_tab, title="plan")]
        )
        if self.live:  # a Python callback: only a server runs it (the report has none)
            self.tabs.on_change("active", lambda attr, old, new: self._update_plan())
        return self.tabs

    def _graph_views(self) -> LayoutDOM:
        fig = figure(
            title="task graph",
            width=HALF * 2 - 380,
            height=TALL + 120,
            tools="pan,wheel_zoom,box_zoom,reset,save",
            toolbar_location="above",
            x_axis_location=None,
            y_axis_location=None,
        )
        fig.grid.visible = False
        graph = GraphRenderer()
        graph.node_renderer.data_source = self.nodes
        graph.edge_renderer.data_source = self.edges
        graph.node_renderer.glyph = Scatter(
            size=11, fill_color="color_worker", line_color="#252525", line_width="line_width"
        )
        graph.node_renderer.selection_glyph = Scatter(
            size=16, fill_color="color_worker", line_color="#000000", line_width=3
        )
        graph.node_renderer.nonselection_glyph = Scatter(
            size=11, fill_color="color_worker", line_color="#252525", line_width="line_width"
        )
        graph.edge_renderer.glyph = MultiLine(line_color="#969696", line_alpha=0.5, line_width=1)
        node = graph.node_renderer
        self.glyphs = [node.glyph, node.selection_glyph, node.nonselection_glyph]
        self.layout_provider = StaticLayoutProvider(graph_layout={})
        graph.layout_provider = self.layout_provider
        fig.renderers.append(graph)
        fig.add_tools(
            TapTool(renderers=[graph.node_renderer]),
            HoverTool(
                renderers=[graph.node_renderer],
                tooltips=[("task", "@key"), ("state", "@state"), ("worker", "@container")],
            ),
        )
        self.graph_figure = fig
        radio = RadioButtonGroup(labels=list(cols.COLOR_MODES), active=0)
        radio.js_on_change(
            "active", CustomJS(args={"radio": radio, "glyphs": self.glyphs}, code=COLOR_MODE_JS)
        )
        self.radio = radio
        detail = Div(text=DETAIL_HINT, width=360, css_classes=["kong-task-detail"])
        show = CustomJS(
            args={"nodes": self.nodes, "div": detail, "hint": DETAIL_HINT}, code=DETAIL_JS
        )
        self.nodes.selected.js_on_change("indices", show)
        self.nodes.js_on_change("data", show)
        self.nodes.js_on_change("patching", show)
        self.detail = detail
        legend = Div(text=state_legend())
        controls = row(Div(text="<b>colour by</b>"), radio, self._replay(radio))
        return column(controls, self.too_big, row(fig, column(legend, detail)))

    def _replay(self, radio: RadioButtonGroup) -> LayoutDOM:
        self.span = Span(location=0, dimension="height", line_color="#de2d26", line_width=2)
        slider = Slider(start=0, end=1, value=1, step=0.01, title="replay at (s)", width=300)
        slider.js_on_change(
            "value",
            CustomJS(
                args={
                    "slider": slider,
                    "nodes": self.nodes,
                    "edges": self.edges,
                    "radio": radio,
                    "glyphs": self.glyphs,
                    "span": self.span,
                    "state_colors": {str(s): c for s, c in cols.STATE_COLORS.items()},
                    "unrun": cols.UNRUN_COLOR,
                },
                code=REPLAY_JS,
            ),
        )
        button = Button(label="replay", width=80)
        button.js_on_click(
            CustomJS(
                args={"button": button, "slider": slider, "steps": 100, "tick_ms": 50},
                code=PLAY_JS,
            )
        )
        self.slider, self.play = slider, button
        return row(slider, button)

    def _task_stream(self) -> LayoutDOM:
        self.stream_workers = FactorRange(factors=[])
        fig = figure(
            title="task stream per worker",
            width=HALF,
            height=TALL,
            x_range=self.time_range,
            y_range=self.stream_workers,
            x_axis_label="seconds from submission",
            tools="xpan,xwheel_zoom,box_zoom,reset,save",
        )
        fig.hbar(
            y="worker",
            left="left",
            right="right",
            height=0.8,
            color="color",
            legend_field="phase",
            source=self.stream,
        )
        fig.add_tools(HoverTool(tooltips=[("task", "@key"), ("", "@phase @seconds{0.0000} s")]))
        fig.legend.location = "bottom_right"
        fig.legend.label_text_font_size = "8pt"
        fig.yaxis.major_label_text_font_size = "7pt"
        fig.add_layout(self.span)
        return fig

    def _progress(self) -> LayoutDOM:
        self.progress_names = FactorRange(factors=[])
        states = [str(s) for s in TaskState]
        fig = figure(
            title="progress per function",
            x_range=self.task_count_range,
            width=HALF,
            height=TALL,
            y_range=self.progress_names,
            tools="save",
            x_axis_label="tasks",
        )
        fig.hbar_stack(
            states,
            y="name",
            height=0.8,
            color=[cols.STATE_COLORS[s] for s in TaskState],
            source=self.progress,
            legend_label=states,
            line_width=0,
        )
        fig.legend.location = "bottom_right"
        fig.legend.label_text_font_size = "8pt"
        return fig

    def _bytes_moved(self) -> LayoutDOM:
        fig = figure(
            title="bytes moved through the store",
            x_range=self.time_range,
            y_range=self.bytes_range,
            width=HALF,
            height=SHORT,
            x_axis_label="seconds from submission",
            tools="xpan,xwheel_zoom,reset,save",
        )
        fig.step(
            x="time",
            y="written",
            source=self.bytes,
            mode="after",
            color="#31a354",
            legend_label="written",
            line_width=2,
        )
        fig.step(
            x="time",
            y="read",
            source=self.bytes,
            mode="after",
            color="#e6550d",
            legend_label="read",
            line_width=2,
        )
        fig.yaxis.axis_label = "bytes"
        fig.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
        fig.legend.location = "top_left"
        return fig

    def _startups(self) -> LayoutDOM:
        fig = figure(
            title="invocations: start-up, cold and warm",
            x_range=self.time_range,
            y_range=self.startup_range,
            width=HALF,
            height=SHORT,
            x_axis_label="seconds from submission",
            y_axis_label="start-up (s)",
            tools="pan,wheel_zoom,reset,save",
        )
        fig.scatter(
            x="time", y="startup", color="color", legend_field="kind", size=8, source=self.startups
        )
        fig.add_tools(HoverTool(tooltips=[("first task", "@key"), ("start-up", "@startup s")]))
        fig.legend.location = "top_right"
        return fig

    def _plan_views(self) -> LayoutDOM:
        times = self._predicted_against_observed(
            "times: predicted against observed",
            "s",
            [m for m in cols.PLAN_MEASURES if m != "output"],
        )
        sizes = self._predicted_against_observed(
            "output size: predicted against observed", "bytes", ["output"]
        )
        table = DataTable(
            source=self.plan,
            columns=plan_table_columns(),
            width=WIDE,
            height=260,
            index_position=None,
        )
        self.planner_names = FactorRange(factors=[])
        planners = figure(
            title="planners on this shape (metrics history): median makespan",
            x_range=self.planner_names,
            width=HALF,
            height=SHORT + 40,
            y_axis_label="seconds",
            tools="save",
        )
        planners.vbar(x="planner", top="makespan", width=0.6, color="#3182bd", source=self.planners)
        planners.add_tools(HoverTool(tooltips=[("planner", "@planner"), ("", "@label")]))
        planners.text(
            x="planner",
            y="makespan",
            text="label",
            text_align="center",
            text_baseline="bottom",
            text_font_size="8pt",
            source=self.planners,
        )
        return column(
            row(times, sizes, planners),
            Div(text="<b>per task</b>, critical path first"),
            table,
        )

    def _predicted_against_observed(self, title: str, unit: str, measures: list[str]) -> LayoutDOM:
        """One point per task and measure; on the dashed line a prediction was right.
        A click on a measure in the legend hides it."""
        fig = figure(
            title=title,
            width=390,
            height=SHORT + 40,
            x_axis_label=f"predicted ({unit})",
            y_axis_label=f"observed ({unit})",
            tools="pan,wheel_zoom,reset,save",
        )
        fig.add_layout(Slope(gradient=1, y_intercept=0, line_color="#969696", line_dash="dashed"))
        for measure in measures:
            fig.scatter(
                x=f"{measure}_predicted",
                y=f"{measure}_observed",
                color=cols.MEASURE_COLORS[measure],
                legend_label=measure,
                size=7,
                alpha=0.7,
                source=self.plan,
            )
        fig.add_tools(HoverTool(tooltips=[("task", "@key")]))
        fig.legend.location = "top_left"
        fig.legend.click_policy = "hide"
        fig.legend.label_text_font_size = "8pt"
        if unit == "bytes":
            fig.xaxis.formatter = NumeralTickFormatter(format="0.0 b")
            fig.yaxis.formatter = NumeralTickFormatter(format="0.0 b")
        return fig

    # -- updating ------------------------------------------------------------------

    def update(self) -> bool:
        """Bring every view up to the record; whether anything changed."""
        if self.record.version == self.version:
            return False
        self.version = self.record.version
        record = self.record
        self.header.text = cols.summary_html(cols.summary_counts(record))
        if self.draws_graph:
            patch_columns(self.nodes, cols.node_columns(record))
            self._update_replay()
        self._update_stream()
        workers = cols.containers_in_order(record.snapshot()[0])
        self.stream_workers.factors = list(reversed(workers))  # first at the top
        progress = cols.progress_columns(record)
        replace(self.progress, progress)
        self.progress_names.factors = list(reversed(progress["name"]))
        replace(self.bytes, cols.bytes_columns(record))
        replace(self.startups, cols.startup_columns(record))
        if not self.ranged_finished:
            self._update_ranges()
        if not self.live or self.tabs.active == 1 or record.finished:
            self._update_plan()
        return True

    def _update_ranges(self) -> None:
        """Fit the growing figures to their data. Once the run has finished they are
        fitted a last time and then left to the user's zoom."""
        padding = 1.05
        ends = [*self.stream.data["right"], *self.bytes.data["time"], 0.0]
        self.time_range.update(start=0, end=max(max(ends) * padding, 0.01))
        totals = [*self.progress.data["total"], 1]
        self.task_count_range.update(start=0, end=max(totals) * padding)
        moved = [*self.bytes.data["written"], *self.bytes.data["read"], 1]
        self.bytes_range.update(start=0, end=max(moved) * padding)
        startups = [*self.startups.data["startup"], 0.001]
        self.startup_range.update(start=0, end=max(startups) * padding)
        self.ranged_finished = self.record.finished

    def _update_stream(self) -> None:
        """Append the bars of tasks that finished since the last update (a task's bars
        never change once it has finished)."""
        new, tasks = cols.stream_columns(self.record, skip=self.streamed)
        if tasks:
            self.stream.stream(dict(new.items()))
            self.streamed.update(tasks)

    def _update_plan(self) -> None:
        """Plan against reality; a live page brings it up to date only while it shows
        it (and once the run finished), as it is the most expensive tab to compute."""
        replace(self.plan, cols.plan_columns(self.record))
        self.plan_header.text = cols.plan_html(self.record)
        self.planner_names.factors = list(self.planners.data["planner"])

    def _update_replay(self) -> None:
        """The replay runs over the finished run's timeline; during a run it waits (its
        slider would recolour the graph from task times, hiding what runs now)."""
        outcome = self.record.snapshot()[2]
        self.slider.disabled = self.play.disabled = outcome is None
        if outcome is None:
            return
        ends = [e for e in self.nodes.data["end"] if not math.isnan(e)]
        end = max([*ends, outcome.makespan_s, 0.01])
        self.slider.update(end=end, value=end, step=end / 200)
        self.span.location = end

    def set_planners(self, stats: Mapping[str, Any]) -> None:
        """Show how planners compared on this run's shape."""
        replace(self.planners, cols.planner_columns(stats))
        self.planner_names.factors = list(self.planners.data["planner"])
        self.planners_shown = True


def patch_columns(source: ColumnDataSource, new: cols.Columns) -> None:
    """Send only the rows that changed (a live graph changes a few tasks per tick)."""
    old = source.data
    if not old or len(next(iter(old.values()), [])) != len(next(iter(new.values()), [])):
        source.data = new
        return
    patches: dict[str, list[tuple[int, Any]]] = {}
    for name, values in new.items():
        changed = cols.changed_rows(old[name], values)
        if changed:
            patches[name] = [(i, values[i]) for i in changed]
    if patches:
        source.patch(patches)


def replace(source: ColumnDataSource, new: cols.Columns) -> None:
    """Replace a source's data when it changed (small sources: sent whole)."""
    if dict(source.data) != new:
        source.data = new


def state_legend() -> str:
    swatches = "".join(
        f'<span style="display:inline-block;width:10px;height:10px;background:{color};'
        f'margin:0 3px 0 8px"></span>{state}'
        for state, color in cols.STATE_COLORS.items()
    )
    return f"<p><b>states</b>{swatches}<br><b>outlined</b>: the planned critical path</p>"


def plan_table_columns() -> list[TableColumn]:
    seconds = NumberFormatter(format="0.0000")
    table = [
        TableColumn(field="key", title="task", width=260),
        TableColumn(field="critical", title="critical", width=60),
    ]
    for measure in cols.PLAN_MEASURES:
        formatter = NumberFormatter(format="0 b") if measure == "output" else seconds
        for side, short in (("predicted", "pred."), ("observed", "obs.")):
            table.append(
                TableColumn(
                    field=f"{measure}_{side}", title=f"{measure} {short}", formatter=formatter
                )
            )
    return table
