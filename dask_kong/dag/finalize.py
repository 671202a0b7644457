"""Dask's finalize tasks run in the client: split off at translation (`translate`).

`dask.compute` adds one `finalize-<token>` task per collection: it joins the chunks into
the result (`concatenate3` for an array, a list concatenation for a bag, `_concat` for a
dataframe). Run by a worker, it reads every chunk, writes the joined result to the store,
and the client reads that back: the result crosses the store twice. Run in the client, the
chunks cross once and the join happens where the result is wanted anyway (dask's threaded
scheduler also joins in the calling process; distributed ships the joined result to the
client). GEMM 4096: 134 MB written and read less, and a serial 1.8 s tail gone
(docs/benchmarks.md). `kong.run.finalize_in_client: false` restores the worker-side join.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dask._task_spec import GraphNode, Task

from .. import config
from .model import Key


def client_finals(graph: Mapping[Key, GraphNode], wanted: list[Key]) -> dict[Key, Task]:
    """The requested keys that are dask finalize tasks the client runs itself."""
    if not config.get("run.finalize_in_client"):
        return {}
    return {
        key: node
        for key in wanted
        if isinstance(key, str)
        and key.startswith("finalize-")
        and isinstance(node := graph.get(key), Task)
    }


def keys_to_run(wanted: list[Key], finals: Mapping[Key, Task]) -> list[Key]:
    """What the workers compute: the requested keys, with each finalize task replaced by
    its dependencies."""
    keys: dict[Key, None] = {}
    for key in wanted:
        if key in finals:
            keys.update(dict.fromkeys(sorted(finals[key].dependencies, key=str)))
        else:
            keys[key] = None
    return list(keys)


def run_finals(finals: Mapping[Key, Task], values: dict[Key, Any]) -> None:
    """Run each finalize task on the computed values, adding its result to `values`."""
    for key, node in finals.items():
        values[key] = node({dep: values[dep] for dep in node.dependencies})
