"""Submitted calls as one Dask graph: what a `Client` runs for many `submit`s at once.

`submit` and `map` do not start a run each: the calls made since the last run started
are taken together (`Submission`s) and become one graph, one run (`build_graph`). A
call's Future arguments become graph dependencies when the key is computed in the same
batch, or data nodes holding the value when it was computed earlier.

One call failing must fail only its own Future and those depending on it, as in
distributed, not the whole batch: each task runs through `guarded_call`, which returns a
`TaskFailure` instead of raising, and a task whose input is a `TaskFailure` passes it on
without running.
"""

from __future__ import annotations

import pickle
import traceback as tb
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dask._task_spec import DataNode, Task, TaskRef, parse_input

from ..errors import RemoteTaskError


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


class TaskFailure:
    """A guarded task's exception, carried as its value so that only its dependents fail.

    Pickles with the exception when the exception pickles, else with a `RemoteTaskError`
    naming it (a worker process must still report the failure)."""

    def __init__(self, error: BaseException, traceback: str) -> None:
        self.error = error
        self.traceback = traceback

    def __reduce__(self) -> tuple[Any, ...]:
        try:
            pickle.dumps(self.error)
            error = self.error
        except Exception:
            error = RemoteTaskError(f"{type(self.error).__name__}: {self.error}")
        return (TaskFailure, (error, self.traceback))


def guarded_call(
    func: Callable[..., Any], inputs: list[Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """`func(*args, **kwargs)`, or the `TaskFailure` of the first failed input, or this
    call's own failure. Only `Exception`s are caught: an interrupt still stops the run."""
    for value in inputs:
        if isinstance(value, TaskFailure):
            return value
    try:
        return func(*args, **kwargs)
    except Exception as exc:
        return TaskFailure(exc, tb.format_exc())


def walk_futures(value: Any, replace: Callable[[Any], Any]) -> Any:
    """`value` with every Future inside it (lists, tuples, sets, dicts, nested) replaced
    by `replace(future)`: the one walker over a call's arguments."""
    from .future import Future

    if isinstance(value, Future):
        return replace(value)
    kind = type(value)
    if kind in (list, tuple, set, frozenset):
        return kind(walk_futures(v, replace) for v in value)
    if kind is dict:
        return {k: walk_futures(v, replace) for k, v in value.items()}
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


def build_graph(batch: list[Submission], done_values: Mapping[Any, Any]) -> dict[Any, Any]:
    """One graph computing every submission of `batch`: a Future argument computed in
    the batch is a dependency, one computed earlier a data node with its value."""
    graph: dict[Any, Any] = {}
    for key in {k for s in batch for k in s.needs} & done_values.keys():
        graph[key] = DataNode(key, done_values[key])
    for s in batch:
        args = walk_futures(s.args, lambda f: TaskRef(f.key))
        kwargs = walk_futures(s.kwargs, lambda f: TaskRef(f.key))
        inputs = [TaskRef(k) for k in sorted(s.needs, key=str)]
        graph[s.key] = Task(
            s.key,
            guarded_call,
            s.func,
            parse_input(inputs),
            parse_input(args),
            parse_input(kwargs),
        )
    return graph
