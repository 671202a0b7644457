"""Submitted calls as one Dask graph: what a `Client` runs for many `submit`s at once.

`submit` and `map` do not start a run each: the calls made since the last run started
are taken together (`Submission`s) and become one graph, one run (`build_graph`). A
call's Future arguments become graph dependencies when the key is computed in the same
batch, or data nodes when it was computed earlier: holding the value, or, when it stayed
in the session's store (`StoredPart`), its `StoredValue`, which the workers read there.

With a store outside this process the batch's values stay in the store (the run keeps
them: `Kong.get_keeping`), so the client cannot see which calls failed by looking at
them: each kept output gets a small status task next to it (`failures_in`), which the
client reads instead.

One call failing must fail only its own Future and those depending on it, as in
distributed, not the whole batch: each task runs through `guarded_call`, which returns a
`TaskFailure` instead of raising, and a task whose input is a `TaskFailure` passes it on
without running.
"""

from __future__ import annotations

import collections
import traceback as tb
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import DataNode, Task, TaskRef

from .. import serialize
from ..dag.model import StoredValue
from ..errors import RemoteTaskError
from .future import Future, StoredPart

# Argument types that never hold a Future.
_ATOMIC = frozenset({int, float, str, bytes, bool, type(None), complex})


@dataclass
class Submission:
    """One `submit` call: `func(*args, **kwargs)` computed under `key`; `args` and
    `kwargs` may hold Futures anywhere inside lists, tuples, sets and dicts."""

    key: Any
    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: Keys of the Futures among the arguments (filled by `find_futures`).
    needs: set[Any] = field(default_factory=set)
    #: The key's `FutureState`, settled when the batch ran (set when recorded).
    state: Any = None
    #: Times the call runs again after raising, in its worker (`retries=`).
    retries: int = 0


class TaskFailure:
    """A guarded task's exception, carried as its value so that only its dependents fail.

    Pickles with the exception when the exception pickles, else with a `RemoteTaskError`
    naming it (a worker process must still report the failure)."""

    def __init__(self, error: BaseException, traceback: str) -> None:
        self.error = error
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        error = self.error
        if not serialize.can_serialize(error):  # as the one serializer would carry it
            error = RemoteTaskError(f"{type(error).__name__}: {error}")
        return (TaskFailure, (error, self.traceback))


def guarded_call(
    func: Callable[..., Any],
    inputs: list[Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retries: int = 0,
) -> Any:
    """`func(*args, **kwargs)`, or the `TaskFailure` of the first failed input, or this
    call's own failure after `retries` more tries. Only `Exception`s are caught: an
    interrupt still stops the run."""
    for value in inputs:
        if isinstance(value, TaskFailure):
            return value
    for attempt in range(retries + 1):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            if attempt == retries:
                return TaskFailure(exc, tb.format_exc())
    raise AssertionError("unreachable: the last try returns")


def walk_futures(value: Any, replace: Callable[[Any], Any], kind: type = Future) -> Any:
    """`value` with every Future (or other instance of `kind`: the `InputSlot`s a worker
    fills) inside it (lists, tuples, sets, dicts, nested) replaced by `replace(it)`: the
    one walker over a call's arguments."""
    if type(value) in _ATOMIC:  # most arguments of a large map: nothing to walk
        return value
    if isinstance(value, kind):
        return replace(value)
    container = type(value)
    if container in (list, tuple, set, frozenset):
        return container(walk_futures(v, replace, kind) for v in value)
    if container is dict:
        return {k: walk_futures(v, replace, kind) for k, v in value.items()}
    return value


def find_futures(submission: Submission) -> Any:
    """Record in `submission.needs` the key of every Future among its arguments; returns
    the Futures themselves (the caller keeps them alive until the batch ran)."""
    found: list[Any] = []

    def note(future: Any) -> Any:
        submission.needs.add(future.key)
        found.append(future)
        return future

    walk_futures((submission.args, submission.kwargs), note)
    return found


@dataclass
class BatchGraph:
    """A batch as one graph: `graph` computes `keys`; `places[k]` says where the value of
    submitted key k is among them: (its own key, None), or (a chunk's key, its index);
    `status[key]` names the status task of each of `keys` (`failures_in`), when asked."""

    graph: dict[Any, Any]
    keys: list[Any]
    places: dict[Any, tuple[Any, int | None]]
    status: dict[Any, str] = field(default_factory=dict)


def failures_in(value: Any, packed: bool) -> dict[int | None, TaskFailure]:
    """The failed calls of a task's value, by index in a packed chunk (`run_calls`), or
    under None for a single call: what the client reads of a value kept in the store."""
    if packed:
        return {i: v for i, v in enumerate(value) if isinstance(v, TaskFailure)}
    return {None: value} if isinstance(value, TaskFailure) else {}


@dataclass(frozen=True)
class InputSlot:
    """A Future argument as its call travels: the `position`-th input of the call's
    task, whole (`index` None) or item `index` of it (a packed chunk's value)."""

    position: int
    index: int | None = None


#: One call as its task carries it: function, arguments with `InputSlot`s where the
#: Futures were, keyword arguments, retries, and the slots of every Future it takes.
Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], int, tuple[InputSlot, ...]]


def run_calls(calls: list[Call], *inputs: Any) -> list[Any]:
    """A packed task: each call's value (or its `TaskFailure`), in order, its Futures'
    values filled in from `inputs`. One plain list of calls, not a task per call:
    10,000 calls would otherwise cost 10,000 task objects to build, pickle and unpack."""

    def value_of(slot: InputSlot) -> Any:
        value = inputs[slot.position]
        return value if slot.index is None else value[slot.index]

    return [
        guarded_call(
            func,
            [value_of(slot) for slot in takes],
            walk_futures(args, value_of, InputSlot),
            walk_futures(kwargs, value_of, InputSlot),
            retries,
        )
        for func, args, kwargs, retries, takes in calls
    ]


def run_call(call: Call, *inputs: Any) -> Any:
    """A task of one call: its value (or `TaskFailure`)."""
    return run_calls([call], *inputs)[0]


def calls_node(
    key: Any, chunk: list[Submission], find: Mapping[Any, tuple[Any, int | None]]
) -> Task:
    """The task running the calls of `chunk` (`run_calls`; one call: `run_call`, whose
    value is the call's own). `find` says where each Future's value is: a node of the
    graph, whole or an item of it; each node the chunk reads is one input of the task."""
    nodes: dict[Any, int] = {}

    def slot(future: Any) -> InputSlot:
        node, index = find.get(future.key, (future.key, None))
        return InputSlot(nodes.setdefault(node, len(nodes)), index)

    calls = [
        (
            s.func,
            walk_futures(s.args, slot),
            walk_futures(s.kwargs, slot),
            s.retries,
            tuple(slot(_KeyOnly(k)) for k in sorted(s.needs, key=str)),
        )
        for s in chunk
    ]
    refs = [TaskRef(node) for node in nodes]
    if len(chunk) == 1:
        return Task(key, run_call, DataNode(None, calls[0]), *refs)
    return Task(key, run_calls, DataNode(None, calls), *refs)


def build_graph(
    batch: list[Submission],
    done_values: Mapping[Any, Any],
    calls_per_task: int,
    with_status: bool = False,
    tasks_wanted: int | None = None,
) -> BatchGraph:
    """One graph computing every submission of `batch`. A Future argument computed in
    the batch is a dependency, one computed earlier a data node with its value (or its
    `StoredPart`, see `input_nodes`). Calls run several to a task (`run_calls`):
    thousands of tiny calls would otherwise cost thousands of invocations. Calls are
    packed by depth (`by_depth`: calls of one depth never take each other's results),
    each depth's in chunks of `chunk_size`. `with_status`: a status task per key
    (`failures_in`)."""
    graph: dict[Any, Any] = {}
    earlier: dict[Any, tuple[Any, int | None]] = {}
    for key in {k for s in batch for k in s.needs} & done_values.keys():
        nodes, earlier[key] = input_nodes(key, done_values[key])
        graph.update(nodes)
    places: dict[Any, tuple[Any, int | None]] = {}
    find = collections.ChainMap(places, earlier)  # where each input's value is
    for group in by_depth(batch):
        size = chunk_size(len(group), calls_per_task, tasks_wanted)
        for start in range(0, len(group), size):
            chunk = group[start : start + size]
            if len(chunk) == 1:
                graph[chunk[0].key] = calls_node(chunk[0].key, chunk, find)
                places[chunk[0].key] = (chunk[0].key, None)
                continue
            chunk_key = f"kong-calls-{chunk[0].key}"
            graph[chunk_key] = calls_node(chunk_key, chunk, find)
            places.update({s.key: (chunk_key, i) for i, s in enumerate(chunk)})
    keys = list(dict.fromkeys(place for place, _ in places.values()))
    built = BatchGraph(graph, keys, places)
    if with_status:
        add_status_tasks(built)
    return built


def by_depth(batch: list[Submission]) -> list[list[Submission]]:
    """The calls of `batch` grouped by depth, shallowest first, each group in submission
    order: depth 0 takes nothing computed in the batch, depth d+1 takes a depth-d result
    (a tree of submits: one group per level)."""
    depth: dict[Any, int] = {}
    groups: dict[int, list[Submission]] = {}
    for s in batch:  # submission order: a call's inputs were submitted before it
        depth[s.key] = 1 + max((depth[k] for k in s.needs if k in depth), default=-1)
        groups.setdefault(depth[s.key], []).append(s)
    return [groups[d] for d in sorted(groups)]


def chunk_size(calls: int, calls_per_task: int, tasks_wanted: int | None) -> int:
    """Calls per task for `calls` independent calls: enough tasks to keep `tasks_wanted`
    going (every worker busy: a map of 8 slow calls on 8 workers runs 8 tasks), at most
    `calls_per_task` to a task; `calls_per_task` when the workers are unbounded (None)."""
    if tasks_wanted is None:
        return calls_per_task
    return max(1, min(calls_per_task, -(-calls // max(1, tasks_wanted))))


def input_nodes(key: Any, value: Any) -> tuple[dict[Any, Any], tuple[Any, int | None]]:
    """The data node giving a later batch the value of an earlier key, and where the
    value is (that node, and its index in it or None): the value itself, or where it
    stays in the store (a `StoredValue` the workers read there; of a packed chunk, the
    whole chunk, which each call taking an item indexes inline: no task per item). The
    caller keeps the key's `StoredPart` until the run ended: its pin keeps the value in
    the store."""
    if not isinstance(value, StoredPart):
        return {key: DataNode(key, value)}, (key, None)
    # A handle without the pin: the run pins what it reads while it runs, and the
    # session's last-run summary, which keeps the graph, must not keep the value.
    handle = StoredValue(value.ref.scope, value.ref.key)
    if value.index is None:
        return {key: DataNode(key, handle)}, (key, None)
    whole = f"kong-stored-{value.ref.key}"
    return {whole: DataNode(whole, handle)}, (whole, value.index)


def add_status_tasks(built: BatchGraph) -> None:
    """A `failures_in` task next to each of `built.keys`."""
    packed = {where for where, index in built.places.values() if index is not None}
    for key in built.keys:
        name = built.status[key] = f"kong-status-{key}"
        built.graph[name] = Task(name, failures_in, TaskRef(key), key in packed)


@dataclass(frozen=True)
class _KeyOnly:
    """A stand-in with only a `key`, for inputs named by key rather than by Future."""

    key: Any
