"""Translate what Dask hands a scheduler into a Kong `DAG`.

`translate` is the one way through for a scheduler call: it rewrites what cannot run where
the workers are (`shuffle.py`), normalises the graph once, splits off the finalize tasks
the client runs itself (`finalize.py`) and builds the DAG of the rest (`dag_from_graph`).

Accepted inputs: an expression (anything with `__dask_graph__()`), a HighLevelGraph, or a
dict of `dask._task_spec` nodes or legacy tuples. Steps, each its own function:

1. `normalise_graph`: to a plain dict of task-spec nodes (dask's `convert_legacy_graph`).
2. `cull`: keep only what the requested keys need, raising on a missing dependency.
3. `resolve_sources`: every key resolves to a task, a data entry, or (through aliases) one
   of those; an alias cycle is reported as a cycle.
4. `lift_constants`: large arrays embedded in tasks become data entries, also the data
   that dask's linear fusion folded into a task's subgraph (`da.from_array` chunks
   fused with their first operation): each is then stored once and read only by the
   worker whose task needs it, instead of riding inside the DAG every worker fetches.
5. `topological_order` numbers tasks; a cycle raises `ValueError` naming a key on it.

Tasks are numbered in one canonical order, the same in every interpreter: keys sorted by
name and block index (`canonical_order`), a task's dependencies (a frozenset) read in that
order too. Neither a set's order nor the graph's own is stable: both change with
PYTHONHASHSEED from one interpreter to the next, and task numbers break planners' ties.
TSQR-SVD ran its Q-block chains in another order, wrote 478 MB instead of 326 MB and took
1.35x as long, depending on the process it was translated in.

The caller's graph is never mutated: nodes are only read, and a lifted task is a new node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask._task_spec import (
    Alias,
    DataNode,
    GraphNode,
    Task,
    TaskRef,
    _execute_subgraph,
    convert_legacy_graph,
)
from dask.core import flatten
from dask.sizeof import sizeof

from .. import config
from ..gc_pause import paused_gc
from .finalize import client_finals, keys_to_run, run_finals
from .model import DAG, Key, Output, StoredValue, TaskInput
from .shuffle import without_disk_shuffle


@dataclass(frozen=True)
class Translation:
    """What a scheduler call becomes: the DAG the workers compute, the finalize tasks the
    client runs on their values (`finalize.py`), and, where a rewrite renamed requested
    keys (`shuffle.py`), each new key's original."""

    dag: DAG
    finals: dict[Key, Task]
    renamed: dict[Key, Key]

    def results(self, values: dict[Key, Any]) -> dict[Key, Any]:
        """`values` of the DAG's outputs, completed with the finalize tasks' results and
        the requested keys under the names dask asked for."""
        run_finals(self.finals, values)
        values.update({old: values[new] for new, old in self.renamed.items()})
        return values


def translate(dsk: Any, keys: Any, *, shares_disk: bool = True) -> Translation:
    """The one way from what dask hands a scheduler to a DAG: an expression whose disk
    shuffle cannot run where workers share no disk is rewritten first, the graph is
    normalised once, and the finalize tasks the client runs are split off."""
    wanted = list(flatten(keys)) if isinstance(keys, list) else [keys]
    renamed: dict[Key, Key] = {}
    with paused_gc():  # hundreds of thousands of objects that all stay alive
        if not shares_disk:
            dsk, renamed = without_disk_shuffle(dsk, wanted)
        run_keys = list(renamed) or wanted
        graph = normalise_graph(dsk)
        finals = client_finals(graph, run_keys)
        dag = dag_from_graph(graph, keys_to_run(run_keys, finals))
    return Translation(dag, finals, renamed)


def to_dag(dsk: Any, keys: Any, *, constant_bytes: int | None = None) -> DAG:
    """Build the DAG computing the (possibly nested) `keys` of `dsk`."""
    return dag_from_graph(normalise_graph(dsk), keys, constant_bytes=constant_bytes)


def dag_from_graph(
    graph: dict[Key, GraphNode], keys: Any, *, constant_bytes: int | None = None
) -> DAG:
    """The DAG computing `keys` of a normalised graph (steps 2 to 5 above)."""
    wanted = list(dict.fromkeys(flatten(keys) if isinstance(keys, list) else [keys]))
    canonical = canonical_order(graph)
    position = {k: i for i, k in enumerate(canonical)}
    needed = cull(graph, wanted, canonical)
    sources = resolve_sources(graph, needed)
    threshold = config.get("data.constant_bytes", constant_bytes)
    tasks, data = split_tasks_and_data(graph, needed, sources, threshold)
    deps = {k: dependencies_in_order(node, position) for k, node in tasks.items()}
    order = topological_order(tasks, sources, deps)
    return assemble(order, tasks, data, sources, wanted, deps)


def normalise_graph(dsk: Any) -> dict[Key, GraphNode]:
    """A plain dict of task-spec nodes, whatever form Dask handed us."""
    if hasattr(dsk, "__dask_graph__"):
        dsk = dsk.__dask_graph__()
    if not isinstance(dsk, Mapping):
        raise TypeError(f"expected a Dask graph or collection, got {type(dsk).__name__}")
    plain = dict(dsk)
    if all(isinstance(v, GraphNode) for v in plain.values()):
        return plain
    converted: dict[Key, GraphNode] = convert_legacy_graph(plain)
    return converted


def cull(graph: Mapping[Key, GraphNode], wanted: list[Key], canonical: list[Key]) -> list[Key]:
    """Keys needed to compute `wanted`, in `canonical` order. An absent
    requested key raises KeyError, an absent dependency ValueError, each naming the key."""
    needed: set[Key] = set()
    stack: list[tuple[Key, Key | None]] = [(k, None) for k in wanted]
    while stack:
        key, dependent = stack.pop()
        if key in needed:
            continue
        node = graph.get(key)
        if node is None:
            if dependent is None:  # dask's get contract: an unknown key is a KeyError
                raise KeyError(f"requested key {key!r} is not in the graph")
            raise ValueError(f"missing dependency {key!r} of task {dependent!r}")
        needed.add(key)
        stack.extend((dep, key) for dep in node.dependencies)
    return [k for k in canonical if k in needed]


def canonical_order(keys: Iterable[Key]) -> list[Key]:
    """`keys` sorted by name, then block index: ('x', 2, 0) before ('x', 10, 0)."""
    keys = list(keys)
    try:
        return sorted(keys, key=_name_and_index)
    except TypeError:  # block indices of mixed types under one name: any fixed order will do
        return sorted(keys, key=repr)


def _name_and_index(key: Key) -> tuple[Any, ...]:
    return (key[0], key[1:]) if isinstance(key, tuple) else (key, ())


def resolve_sources(graph: Mapping[Key, GraphNode], needed: list[Key]) -> dict[Key, Key]:
    """Map every needed key to the key that really produces its value (aliases followed).

    A chain of aliases that loops back on itself is a cycle.
    """
    sources: dict[Key, Key] = {}
    for key in needed:
        chain = []
        current = key
        while isinstance(graph[current], Alias) and current not in sources:
            if current in chain:
                raise ValueError(f"cycle detected through alias {current!r}")
            chain.append(current)
            current = graph[current].target  # type: ignore[attr-defined]
        final = sources.get(current, current)
        for alias in chain:
            sources[alias] = final
        sources[current] = final
    return sources


def split_tasks_and_data(
    graph: Mapping[Key, GraphNode],
    needed: list[Key],
    sources: Mapping[Key, Key],
    constant_bytes: int,
) -> tuple[dict[Key, GraphNode], dict[Key, Any]]:
    """Separate runnable tasks from data; lift large constants out of tasks into data."""
    tasks: dict[Key, GraphNode] = {}
    data: dict[Key, Any] = {}
    for key in needed:
        if sources[key] != key:
            continue  # an alias: costs nothing, resolved through `sources`
        node = graph[key]
        if isinstance(node, DataNode):
            data[key] = node.value
        else:
            tasks[key] = lift_constants(node, data, constant_bytes)
    return tasks, data


# Argument types that are never lifted: checked first because they are most arguments.
_NEVER_LARGE = frozenset({int, float, str, bool, type(None), TaskRef, tuple, slice})


def lift_constants(node: GraphNode, data: dict[Key, Any], constant_bytes: int) -> GraphNode:
    """Replace top-level array arguments of at least `constant_bytes` by references to new
    data entries, so a remote mode stores each once and ships it only to its reader."""
    if type(node) is not Task:
        return node
    if node.func is _execute_subgraph:
        return lift_fused_data(node, data, constant_bytes)
    lifted: dict[int | str, Key] = {}
    for slot, value in enumerate(node.args):
        if _is_large_constant(value, constant_bytes):
            lifted[slot] = _lift(node, slot, value, data)
    for name, value in node.kwargs.items():
        if _is_large_constant(value, constant_bytes):
            lifted[name] = _lift(node, name, value, data)
    if not lifted:
        return node
    args = [TaskRef(lifted[i]) if i in lifted else a for i, a in enumerate(node.args)]  # type: ignore[arg-type]
    kwargs = {k: TaskRef(lifted[k]) if k in lifted else v for k, v in node.kwargs.items()}  # type: ignore[arg-type]
    return Task(node.key, node.func, *args, _data_producer=node.data_producer, **kwargs)


def lift_fused_data(node: Task, data: dict[Key, Any], constant_bytes: int) -> GraphNode:
    """A fused task (dask's `Task.fuse`: `_execute_subgraph(inner, outkey, inkeys, *deps)`)
    with its large `DataNode`s (and persisted `StoredValue`s) taken out of the subgraph:
    each becomes a data entry under its own key and reaches the subgraph as one more
    external input, as `Task.fuse` passes the others. dask fuses every `da.from_array`
    chunk into its first operation, so without this a NumPy array's bytes would travel
    inside the DAG to every worker process."""
    inner, outkey, inkeys, *deps = node.args
    lifted = [
        key
        for key, inner_node in inner.items()
        if isinstance(inner_node, DataNode) and _is_data(inner_node.value, constant_bytes)
    ]
    if not lifted:
        return node
    for key in lifted:
        data[key] = inner[key].value
    kept = {key: inner_node for key, inner_node in inner.items() if key not in lifted}
    refs = [TaskRef(key) for key in lifted]
    return Task(
        node.key,
        _execute_subgraph,
        kept,
        outkey,
        (*inkeys, *lifted),
        *deps,
        *refs,
        _data_producer=node.data_producer,
    )


def _lift(node: Task, slot: int | str, value: Any, data: dict[Key, Any]) -> Key:
    const_key = ("kong-constant", node.key, slot)
    data[const_key] = value
    return const_key


def _is_data(value: Any, constant_bytes: int) -> bool:
    """Whether a value folded into a fused task is lifted out as a data entry: a large
    one, or a persisted value (only the workers can read it, from the store)."""
    return isinstance(value, StoredValue) or sizeof(value) >= constant_bytes


def _is_large_constant(value: Any, constant_bytes: int) -> bool:
    if type(value) in _NEVER_LARGE:
        return False
    if isinstance(value, StoredValue):
        return True
    nbytes = getattr(value, "nbytes", None)
    if isinstance(value, (bytes, bytearray)):
        nbytes = len(value)
    return isinstance(nbytes, int) and nbytes >= constant_bytes


def topological_order(
    tasks: Mapping[Key, GraphNode], sources: Mapping[Key, Key], deps: Mapping[Key, list[Key]]
) -> list[Key]:
    """Tasks in dependency order (Kahn), stable in the canonical order; `deps` holds each
    task's dependencies in that order (`dependencies_in_order`)."""
    parents = {k: _task_parents(deps[k], tasks, sources) for k in tasks}
    children: dict[Key, list[Key]] = {k: [] for k in tasks}
    missing = {k: len(p) for k, p in parents.items()}
    for key, ps in parents.items():
        for p in ps:
            children[p].append(key)
    ready = [k for k, n in missing.items() if n == 0]
    order: list[Key] = []
    while ready:
        key = ready.pop()
        order.append(key)
        for child in children[key]:
            missing[child] -= 1
            if missing[child] == 0:
                ready.append(child)
    if len(order) != len(tasks):
        raise ValueError(
            f"cycle detected: task {_key_on_cycle(parents, missing)!r} depends on itself"
        )
    return order


def _task_parents(
    deps: list[Key], tasks: Mapping[Key, GraphNode], sources: Mapping[Key, Key]
) -> tuple[Key, ...]:
    """Distinct task keys among a task's dependencies `deps` (data entries excluded)."""
    found = dict.fromkeys(sources.get(d, d) for d in deps)
    return tuple(p for p in found if p in tasks)


def dependencies_in_order(node: GraphNode, position: Mapping[Key, int]) -> list[Key]:
    """`node.dependencies` (a frozenset) in canonical order; keys the graph does not
    hold (lifted constants) last, by their text."""
    if len(node.dependencies) < 2:
        return list(node.dependencies)
    return sorted(
        node.dependencies,
        key=lambda k: (0, position[k], "") if k in position else (1, 0, str(k)),
    )


def _key_on_cycle(parents: Mapping[Key, tuple[Key, ...]], missing: Mapping[Key, int]) -> Key:
    """Walk parents among unsorted tasks until a key repeats: that key is on a cycle."""
    current = next(k for k, n in missing.items() if n > 0)
    seen: set[Key] = set()
    while current not in seen:
        seen.add(current)
        current = next(p for p in parents[current] if missing[p] > 0)
    return current


def assemble(
    order: list[Key],
    tasks: Mapping[Key, GraphNode],
    data: Mapping[Key, Any],
    sources: Mapping[Key, Key],
    wanted: list[Key],
    deps: Mapping[Key, list[Key]],
) -> DAG:
    """Number tasks and data, and resolve every input and output to its source."""
    index = {k: i for i, k in enumerate(order)}
    data_names = {k: f"d{j}" for j, k in enumerate(data)}
    inputs = tuple(tuple(_input(dep, sources, index, data_names) for dep in deps[k]) for k in order)
    parents = tuple(
        tuple(dict.fromkeys(i.task for i in ins if i.task is not None)) for ins in inputs
    )
    children: list[list[int]] = [[] for _ in order]
    for i, ps in enumerate(parents):
        for p in ps:
            children[p].append(i)
    outputs = tuple(Output(**vars(_input(k, sources, index, data_names))) for k in wanted)
    return DAG(
        keys=tuple(order),
        nodes=tuple(tasks[k] for k in order),
        inputs=inputs,
        parents=parents,
        children=tuple(tuple(c) for c in children),
        data={data_names[k]: v for k, v in data.items()},
        outputs=outputs,
    )


def _input(
    key: Key, sources: Mapping[Key, Key], index: Mapping[Key, int], data_names: Mapping[Key, str]
) -> TaskInput:
    source = sources.get(key, key)  # lifted constants are their own source
    if source in index:
        return TaskInput(key=key, task=index[source])
    return TaskInput(key=key, data=data_names[source])
