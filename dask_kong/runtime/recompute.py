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
`dask.array` random chunks carry their seeds in the graph and qualify. A task that reads or
makes a handle to state (a partd store of dask's disk shuffle) never does: see
`dask_kong.values`. A user whose delayed functions are impure in ways no value shows (a
global counter) switches it off with `kong.wukong.recompute_bytes_per_s: 0`.

Recipes nest: an input the worker itself got from a recipe goes into the new recipe as
that recipe (`RecipeRef`), not as its value. A block of `a @ b` whose factors are random
draws is then published as two seeds and a product, not as the two 1.6 MB factors (what
svd_compressed's 64 blocks of A wrote at full size: 3.2 MB each). The whole chain must
still run faster than its output moves (`Recipe.cost_s`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dask.sizeof import sizeof

from ..planning.plan import Optimization
from .recorder import Phase

if TYPE_CHECKING:
    from ..metrics.records import TaskMetrics
    from .context import RunContext
    from .recorder import Recorder


@dataclass(frozen=True)
class Recipe:
    """What a reader needs to recompute one task's output: its input values, keyed as the
    task's node expects them (an input recomputed in turn is a `RecipeRef`), their size
    (for routing and inlining decisions), and the seconds running it all took."""

    inputs: dict[Any, Any]
    nbytes: int
    cost_s: float = 0.0


@dataclass(frozen=True)
class RecipeRef:
    """An input of a recipe that is itself recomputed: its task and its recipe."""

    task: int
    recipe: Recipe


def _sizeof_recipe(recipe: Recipe) -> int:
    return recipe.nbytes


def _sizeof_recipe_ref(ref: RecipeRef) -> int:
    return ref.recipe.nbytes


# Registered by call, not as decorators: dask's Dispatch.register is untyped.
sizeof.register(Recipe, _sizeof_recipe)
sizeof.register(RecipeRef, _sizeof_recipe_ref)


def recipe_for(
    ctx: RunContext,
    task: int,
    inputs: dict[Any, Any],
    metrics: TaskMetrics,
    known: Mapping[int, Recipe] | None = None,
) -> Recipe | None:
    """A recipe to store in place of `task`'s output, or None to store the output.

    Worth it only when the plan allows it, the output is not one the client reads, the
    output is large (`kong.wukong.recompute_min_bytes`), running the task took less time
    than moving its output would (`output_bytes / kong.wukong.recompute_bytes_per_s`,
    the store's measured throughput), and the inputs are a small fraction of the output
    (`kong.wukong.recompute_input_fraction`). Never in-process: a write there is free.
    Never for a stateful task (`dask_kong.values`): it must not run twice.
    Inputs whose recipes the worker holds (`known`: task -> recipe) go in as recipes."""
    settings = ctx.settings
    if (
        ctx.store.in_process
        or settings.recompute_bytes_per_s <= 0
        or not ctx.plan.has(task, Optimization.RECOMPUTE)
        or task in ctx.output_tasks
        or metrics.stateful
        or metrics.output_bytes < settings.recompute_min_bytes
        or metrics.exec_s * settings.recompute_bytes_per_s > metrics.output_bytes
    ):
        return None
    nested = nest_recipes(ctx, task, inputs, known or {})
    cost_s = metrics.exec_s + sum(
        v.recipe.cost_s for v in nested.values() if isinstance(v, RecipeRef)
    )
    if cost_s * settings.recompute_bytes_per_s > metrics.output_bytes:
        return None
    nbytes = sizeof(nested)
    if nbytes > metrics.output_bytes * settings.recompute_input_fraction:
        return None
    return Recipe(nested, nbytes, cost_s)


def nest_recipes(
    ctx: RunContext, task: int, inputs: dict[Any, Any], known: Mapping[int, Recipe]
) -> dict[Any, Any]:
    """`inputs`, with every input produced by a task of `known` replaced by its recipe."""
    nested = dict(inputs)
    for inp in ctx.dag.inputs[task]:
        if inp.task is not None and inp.task in known and inp.key in nested:
            nested[inp.key] = RecipeRef(inp.task, known[inp.task])
    return nested


def rebuild(ctx: RunContext, task: int, recipe: Recipe, recorder: Recorder) -> Any:
    """Run `task` again from its recipe; the time counts as the reader's recompute time."""
    inputs = {
        key: rebuild(ctx, v.task, v.recipe, recorder) if isinstance(v, RecipeRef) else v
        for key, v in recipe.inputs.items()
    }
    with recorder.timing(Phase.RECOMPUTE):
        return ctx.dag.nodes[task](inputs)
