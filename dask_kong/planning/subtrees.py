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

A subtree may also take in *duplicable roots*, root tasks several subtrees read, such
as the random blocks of a GEMM: a GEMM's output block then becomes one subtree (its 8
input blocks, its 4 block products, their sum) and no block product crosses the store.
The planners choose them (`planners.duplicable_roots`): roots the metrics history saw
publish recipes (cheaper to run again than to move, `runtime.recompute`) are run again
by each subtree; roots it has never seen are run once, by the first subtree to claim
one, which publishes it for the others (`Plan.shared_roots`). A duplicable root is
taken in only where every one of its dependents lies in a subtree that runs it.

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


def exclusive_subtrees(
    dag: DAG, max_tasks: int, duplicable: frozenset[int] = frozenset()
) -> dict[int, tuple[int, ...]]:
    """Top -> members (its ancestors, in topological order) of the largest subtrees of at
    most `max_tasks` tasks of their own (top included, duplicated roots not counted).

    `duplicable` are root tasks several subtrees may take in (see the module docstring):
    a subtree may include one although it feeds other tasks too; this is allowed only
    where every dependent of the root lies in a subtree that includes it (nobody outside
    waits for it). Other members belong to one subtree only."""
    if max_tasks < 2:
        return {}
    outputs = dag.output_tasks
    dup = frozenset(d for d in duplicable if not dag.parents[d] and d not in outputs)
    while True:
        subtrees = cut_subtrees(dag, max_tasks, dup)
        uncovered = uncovered_duplicates(dag, subtrees, dup)
        if not uncovered:
            return subtrees
        # Cut again without them: the subtrees inside the ones that took them in count.
        dup -= uncovered


def cut_subtrees(dag: DAG, max_tasks: int, dup: frozenset[int]) -> dict[int, tuple[int, ...]]:
    """The cut itself: walking from dependents towards roots, each task not yet taken
    whose subtree has 2 to `max_tasks` tasks of its own takes its ancestors."""
    weights = closed_subtree_sizes(dag, dup)
    taken = [False] * len(dag)
    subtrees: dict[int, tuple[int, ...]] = {}
    for top in reversed(range(len(dag))):  # dependents first: the largest cut wins
        if taken[top] or not 1 < weights[top] <= max_tasks:
            continue
        members = ancestors(dag, top)
        for member in members:
            taken[member] = member not in dup
        subtrees[top] = members
    return subtrees


def closed_subtree_sizes(dag: DAG, duplicable: frozenset[int] = frozenset()) -> list[int]:
    """Per task, how many tasks its subtree has of its own (itself included; duplicated
    roots not counted), or 0 when some ancestor is shared with another dependent or
    requested and is not a duplicable root (no subtree ends at this task)."""
    outputs = dag.output_tasks
    sizes = [0] * len(dag)
    for task, parents in enumerate(dag.parents):  # indices are a topological order
        size = 1
        for p in parents:
            if sizes[p] > 0 and len(dag.children[p]) == 1 and p not in outputs:
                size += sizes[p]  # an exclusive member
            elif p not in duplicable:
                size = 0
                break
        sizes[task] = size
    return sizes


def uncovered_duplicates(
    dag: DAG, subtrees: dict[int, tuple[int, ...]], duplicable: frozenset[int]
) -> frozenset[int]:
    """Duplicable roots some subtree takes in although one of their dependents lies in no
    subtree that does (that dependent would wait for a root nobody runs)."""
    inside: dict[int, set[int]] = {}  # duplicated root -> tasks of subtrees running it
    for top, members in subtrees.items():
        for member in members:
            if member in duplicable:
                inside.setdefault(member, set()).update(members, (top,))
    return frozenset(d for d, tasks in inside.items() if not set(dag.children[d]) <= tasks)


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


def plan_subtrees(
    dag: DAG, concurrency: int | None, duplicable: frozenset[int] = frozenset()
) -> dict[int, tuple[int, ...]]:
    """The subtrees a planner batches for `dag` on a backend of `concurrency`."""
    return exclusive_subtrees(dag, subtree_max_tasks(dag, concurrency), duplicable)


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
