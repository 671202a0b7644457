"""A plan as a Graphviz DOT graph, and as a PNG when Graphviz is installed.

One node per task, labelled with its function (`key_split` of its key) and resource
config, filled with one colour per worker: the planned worker (`TaskPlan.worker_hint`),
or the worker that actually ran it when a run summary is given. The critical path's
nodes and edges are bold.
"""

from __future__ import annotations

import colorsys
import itertools
import os
import shutil
import subprocess
from collections.abc import Hashable, Iterator, Sequence

from dask.utils import key_split

from ..dag import DAG
from ..errors import KongError
from ..metrics.records import RunSummary
from .plan import Plan

# Successive hues a golden-ratio step apart stay far from every earlier one, so that
# neighbouring workers get clearly different colours however many there are.
_GOLDEN_RATIO_CONJUGATE = 0.618033988749895
# Pastel fills keep black labels readable.
_SATURATION = 0.35
_VALUE = 0.95
_UNKNOWN_WORKER_COLOUR = "#ffffff"
_BOLD_PENWIDTH = 3
# Rendering a graph of thousands of nodes takes seconds; a minute means dot is stuck.
_DOT_TIMEOUT_S = 60.0


class GraphvizNotInstalledError(KongError):
    """The `dot` binary of Graphviz is not on PATH."""


def worker_colours(workers: Sequence[Hashable | None]) -> dict[Hashable, str]:
    """A distinct fill colour ("#rrggbb") for every worker, in order of first task."""
    colours: dict[Hashable, str] = {}
    used = {_UNKNOWN_WORKER_COLOUR}
    palette = _palette()
    for worker in workers:
        if worker is None or worker in colours:
            continue
        colour = next(palette)
        while colour in used:
            colour = next(palette)
        colours[worker] = colour
        used.add(colour)
    return colours


def _palette() -> Iterator[str]:
    hue = 0.0
    while True:
        red, green, blue = colorsys.hsv_to_rgb(hue, _SATURATION, _VALUE)
        yield f"#{round(red * 255):02x}{round(green * 255):02x}{round(blue * 255):02x}"
        hue = (hue + _GOLDEN_RATIO_CONJUGATE) % 1.0


def plan_to_dot(dag: DAG, plan: Plan, summary: RunSummary | None = None) -> str:
    """The DOT text of `plan` over `dag`; workers as observed in `summary` when given."""
    workers: list[Hashable | None]
    if summary is not None:
        observed = summary.task_metrics
        workers = [observed[t].worker if t in observed else None for t in range(len(dag))]
    else:
        workers = [task.worker_hint for task in plan.tasks]
    colours = worker_colours(workers)
    on_path = set(plan.critical_path)
    path_edges = set(itertools.pairwise(plan.critical_path))
    title = f"{plan.planner} plan"
    if plan.predicted_makespan_s is not None:
        title += f", predicted makespan {plan.predicted_makespan_s:.3g} s"
    lines = [
        "digraph plan {",
        f"  label={_quote(title)};",
        "  rankdir=TB;",
        '  node [shape=box, style=filled, fontname="Helvetica"];',
    ]
    for task, task_plan in enumerate(plan.tasks):
        worker = workers[task]
        attrs = {
            "label": f"{key_split(dag.keys[task])}\n{task_plan.resource}",
            "tooltip": f"{dag.keys[task]!s} (worker {worker})",
            "fillcolor": colours.get(worker, _UNKNOWN_WORKER_COLOUR),
        }
        if task in on_path:
            attrs["style"] = "filled,bold"
            attrs["penwidth"] = str(_BOLD_PENWIDTH)
        lines.append(f"  t{task} [{_attributes(attrs)}];")
    for task, parents in enumerate(dag.parents):
        for parent in parents:
            bold = (parent, task) in path_edges
            style = f" [style=bold, penwidth={_BOLD_PENWIDTH}]" if bold else ""
            lines.append(f"  t{parent} -> t{task}{style};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _attributes(attrs: dict[str, str]) -> str:
    return ", ".join(f"{name}={_quote(value)}" for name, value in attrs.items())


def _quote(text: str) -> str:
    """A DOT string literal: quotes and backslashes escaped, newlines as centred breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_plan_png(dot_text: str, path: str | os.PathLike[str]) -> None:
    """Render `dot_text` to a PNG at `path` with Graphviz's `dot`."""
    dot = shutil.which("dot")
    if dot is None:
        raise GraphvizNotInstalledError(
            "cannot write a PNG: Graphviz is not installed (no `dot` on PATH). Install it "
            "(e.g. `apt-get install graphviz` or `brew install graphviz`), or render the "
            "DOT text from plan_to_dot with any Graphviz viewer."
        )
    try:
        subprocess.run(
            [dot, "-Tpng", "-o", os.fspath(path)],
            input=dot_text.encode(),
            capture_output=True,
            check=True,
            timeout=_DOT_TIMEOUT_S,
        )
    except subprocess.CalledProcessError as exc:
        raise KongError(f"dot could not render the plan: {exc.stderr.decode().strip()}") from exc
