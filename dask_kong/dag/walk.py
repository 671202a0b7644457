"""Looking inside a task: the tasks nested in it and the values of its arguments.

dask fuses chains of tasks into one (`_execute_subgraph(inner_graph, out_key, in_keys,
*dependencies)`: the inner tasks refer to their inputs by the keys in `in_keys`, bound to
the outer task's `dependencies` in order), nests tasks in arguments (`List`, `Dict`, a
`Task` argument), and translation lifts large constants out of tasks into the DAG's data
(`TaskRef`s to `DAG.data`). Rules that look for a function or an argument
(`runtime.shippable`) must see through all three; this module is the one place that
knows how.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from dask._task_spec import DataNode, Task, TaskRef, _execute_subgraph


class Scope(NamedTuple):
    """What the keys a fused subgraph's tasks refer to stand for: `in_keys[i]` is the
    enclosing task's argument `bound[i]`, itself read in the `outer` scope."""

    in_keys: tuple[Any, ...]
    bound: tuple[Any, ...]
    outer: Scope | None


def inner_tasks(node: Any) -> Iterator[tuple[Task, Scope | None]]:
    """`node` (when a task) and every task nested in it, fused subgraphs included, each
    with the scope its references are read in (None: the DAG's). A loop over a stack,
    not recursion: it runs on every task of every run."""
    stack: list[tuple[Task, Scope | None]] = [(node, None)] if isinstance(node, Task) else []
    while stack:
        task, scope = stack.pop()
        yield task, scope
        args = task.args
        if task.func is _execute_subgraph:
            args = args[3:]
            sub = Scope(task.args[2], args, scope)
            for inner in task.args[0].values():
                if isinstance(inner, Task):
                    stack.append((inner, sub))
        for value in args:
            if isinstance(value, Task):
                stack.append((value, scope))
        if task.kwargs:
            stack.extend((v, scope) for v in task.kwargs.values() if isinstance(v, Task))


def plain_function(task: Task) -> Any:
    """The function a task calls, without `functools.partial` wrappers."""
    func = task.func
    while isinstance(func, functools.partial):
        func = func.func
    return func


def argument_value(value: Any, scope: Scope | None, data: Mapping[Any, Any]) -> Any:
    """What a task's argument holds as data: a `DataNode`'s value, the value a fused
    subgraph's input is bound to, a lifted constant's value from `data` (the DAG's), or
    the argument itself. A reference to another task's output gives None: its value is
    not known before the run."""
    while isinstance(value, (DataNode, TaskRef)):
        if isinstance(value, DataNode):
            return value.value
        if scope is None:
            return data.get(value.key)
        if value.key in scope.in_keys:
            value = scope.bound[scope.in_keys.index(value.key)]
        scope = scope.outer
    return value
