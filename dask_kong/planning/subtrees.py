"""Subtree batching: one invocation runs a whole exclusive subtree of small tasks.

WUKONG starts one worker per root task. Where the backend runs only a few workers at
once (the local gateway: one per core; the embedded thread pool), thousands of root
invocations buy no parallelism: they queue, and each pays an invocation, a start-up and
a fan-in mark in the store. A tree reduction over 5,000 leaves spends more on that than
on its additions.

An *exclusive subtree* is a task (its *top*) together with every ancestor of it, where
each ancestor's only dependent lies inside the subtree and no ancestor is a requested
output. Such a subtree needs nothing from outside and nobody outside needs anything from
it but the top's output, so one worker can run its members in topological order, keep
every intermediate in memory, and route only the top's dependents the WUKONG way. No
member is run twice, none is written, and no fan-in inside it touches the store.

Planners cut the DAG into subtrees of at most `subtree_max_tasks` tasks, chosen so that
at least `kong.planning.subtree_units_per_slot` units of work remain per concurrency
slot (enough to balance the slots). With unbounded concurrency (AWS Lambda) nothing is
batched: there, a worker per root is the parallelism.
"""

from __future__ import annotations

from .. import config
from ..dag import DAG


def subtree_max_tasks(dag: DAG, concurrency: int | None) -> int:
    """The largest subtree worth batching for `dag` on a backend running `concurrency`
    workers at once (0: batch nothing)."""
    if not concurrency:
        return 0
    units = int(config.get("planning.subtree_units_per_slot"))
    if units <= 0:
        return 0
    return len(dag) // (units * concurrency)


def exclusive_subtrees(dag: DAG, max_tasks: int) -> dict[int, tuple[int, ...]]:
    """Top -> members (its exclusive ancestors, in topological order) of the largest
    exclusive subtrees of at most `max_tasks` tasks, top included. Subtrees do not
    overlap; a task in none runs as WUKONG runs it."""
    if max_tasks < 2:
        return {}
    sizes = closed_subtree_sizes(dag)
    taken = [False] * len(dag)
    subtrees: dict[int, tuple[int, ...]] = {}
    for top in reversed(range(len(dag))):  # dependents first: the largest cut wins
        if taken[top] or not 1 < sizes[top] <= max_tasks:
            continue
        members = ancestors(dag, top)
        for member in members:
            taken[member] = True
        subtrees[top] = members
    return subtrees


def closed_subtree_sizes(dag: DAG) -> list[int]:
    """Per task, how many tasks its exclusive subtree has (itself included), or 0 when
    some ancestor is shared with another dependent or requested (no exclusive subtree)."""
    outputs = dag.output_tasks
    sizes = [0] * len(dag)
    for task, parents in enumerate(dag.parents):  # indices are a topological order
        if all(sizes[p] > 0 and len(dag.children[p]) == 1 and p not in outputs for p in parents):
            sizes[task] = 1 + sum(sizes[p] for p in parents)
    return sizes


def ancestors(dag: DAG, task: int) -> tuple[int, ...]:
    """Every ancestor of `task`, in topological (index) order."""
    seen: set[int] = set()
    stack = list(dag.parents[task])
    while stack:
        parent = stack.pop()
        if parent not in seen:
            seen.add(parent)
            stack.extend(dag.parents[parent])
    return tuple(sorted(seen))


def plan_subtrees(dag: DAG, concurrency: int | None) -> dict[int, tuple[int, ...]]:
    """The subtrees a planner batches for `dag` on a backend of `concurrency`."""
    return exclusive_subtrees(dag, subtree_max_tasks(dag, concurrency))


def workers_with_subtrees(
    workers: tuple[int, ...], subtrees: dict[int, tuple[int, ...]]
) -> tuple[int, ...]:
    """`workers` (one number per task) with every subtree's members on its top's worker,
    renumbered 0, 1, ... in order of first task (as `schedule.assign_workers` numbers)."""
    moved = list(workers)
    for top, members in subtrees.items():
        for member in members:
            moved[member] = workers[top]
    numbers: dict[int, int] = {}
    return tuple(numbers.setdefault(w, len(numbers)) for w in moved)
