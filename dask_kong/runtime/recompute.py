"""Recompute instead of transfer: store a cheap task's small inputs, not its large output.

A task such as a `dask.array.random` chunk draws 8 MB in a few milliseconds from a seed of
a few bytes. Writing those 8 MB to the store and reading them back costs several times
more than drawing them again (this machine moves about 250 MB/s through Redis, pickling
included: 8 MB is ~30 ms each way). When the plan allows it (`Optimization.RECOMPUTE`), a
worker that finished such a task writes a `Recipe` (the task's input values) in place of
its output, and passes the recipe inline to the workers it invokes; whoever needs the
value runs the task again from the recipe.

This trades compute for store traffic exactly like WUKONG's task-dup, and rests on the
same assumption dask itself makes (dask's docs: tasks should be pure; distributed reruns
them after a worker loss): running a task twice on the same inputs gives the same value.
`dask.array` random chunks carry their seeds in the graph and qualify. A user whose
delayed functions are impure switches it off with `kong.wukong.recompute_bytes_per_s: 0`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask.sizeof import sizeof

from ..planning import Optimization

if TYPE_CHECKING:
    from ..metrics.records import TaskMetrics
    from .context import RunContext


@dataclass(frozen=True)
class Recipe:
    """What a reader needs to recompute one task's output: its input values, keyed as the
    task's node expects them, and their size (for routing and inlining decisions)."""

    inputs: dict[Any, Any]
    nbytes: int


@sizeof.register(Recipe)
def _sizeof_recipe(recipe: Recipe) -> int:
    return recipe.nbytes


def recipe_for(
    ctx: RunContext, task: int, inputs: dict[Any, Any], metrics: TaskMetrics
) -> Recipe | None:
    """A recipe to store in place of `task`'s output, or None to store the output.

    Worth it only when the plan allows it, the output is not one the client reads, the
    output is large (`kong.wukong.recompute_min_bytes`), running the task took less time
    than moving its output would (`output_bytes / kong.wukong.recompute_bytes_per_s`,
    the store's measured throughput), and the inputs are a small fraction of the output
    (`kong.wukong.recompute_input_fraction`). Never in-process: a write there is free."""
    settings = ctx.settings
    if (
        ctx.store.in_process
        or settings.recompute_bytes_per_s <= 0
        or not ctx.plan.has(task, Optimization.RECOMPUTE)
        or task in ctx.output_tasks
        or metrics.output_bytes < settings.recompute_min_bytes
        or metrics.exec_s * settings.recompute_bytes_per_s > metrics.output_bytes
    ):
        return None
    nbytes = sizeof(inputs)
    if nbytes > metrics.output_bytes * settings.recompute_input_fraction:
        return None
    return Recipe(dict(inputs), nbytes)


def rebuild(ctx: RunContext, task: int, recipe: Recipe, metrics: TaskMetrics) -> Any:
    """Run `task` again from its recipe; the time counts as the reader's recompute time."""
    started = time.perf_counter()
    value = ctx.dag.nodes[task](recipe.inputs)
    metrics.recompute_s += time.perf_counter() - started
    return value
