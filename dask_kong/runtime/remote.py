"""Preparing a run for workers in other processes (the client's side of shipping).

`prepare_remote_run` checks that the DAG can run where the workers are, stores the run's
large data and (when large) its spec once, and returns the `Shipment` every invocation
refers to; the payload format itself is `dask_kong.invocation.payload`.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

from dask._task_spec import GraphNode
from dask.sizeof import sizeof

from .. import config
from ..constants import DAG_KEY, data_key
from ..dag import DAG
from ..errors import KongError
from ..invocation.model import InvokerSpec
from ..invocation.payload import RunSpec, Shipment, b64, dumps_spec
from .context import RunContext


def check_shippable(dag: DAG, shares_machine: bool) -> None:
    """Refuse graphs whose tasks share state through one machine's disk where workers do
    not share a machine (AWS Lambda).

    dask's disk shuffles (the default of bags, and of dataframes without a distributed
    client) create a `partd` store, a temporary directory, in one task and append to it
    in others: on one machine every worker reaches the directory (`dask_kong.values`
    keeps that correct), on Lambda each worker would append to its own disk and the
    result would be silently incomplete."""
    if shares_machine:
        return
    for key, node in zip(dag.keys, dag.nodes, strict=True):
        if uses_local_disk(node):
            raise KongError(
                f"task {key!r} belongs to dask's disk shuffle, which needs every worker on "
                "one machine; on AWS Lambda use the task-based shuffle: "
                "dask.config.set({'dataframe.shuffle.method': 'tasks'}), or "
                "bag.groupby(..., shuffle='tasks')"
            )


def uses_local_disk(node: Any) -> bool:
    """Whether a task (or a task nested in its arguments) calls into `partd` or dask's
    `maybe_buffered_partd`: state on the local disk."""
    func = getattr(node, "func", None)
    while isinstance(func, functools.partial):
        func = func.func
    owner = func if isinstance(func, type) else type(func)
    if owner.__name__ == "maybe_buffered_partd" or owner.__module__.startswith("partd"):
        return True
    module = getattr(func, "__module__", None) or ""
    if module.startswith("partd"):
        return True
    nested = [*getattr(node, "args", ()), *getattr(node, "kwargs", {}).values()]
    return any(uses_local_disk(arg) for arg in nested if isinstance(arg, GraphNode))


def prepare_remote_run(ctx: RunContext, invoker: InvokerSpec) -> Shipment:
    """Store the run's large data and (when large) its spec once; return the shipment."""
    dag = ctx.dag
    check_shippable(dag, shares_machine=invoker.shares_machine)
    threshold = ctx.settings.inline_input_bytes
    large = {name: v for name, v in dag.data.items() if sizeof(v) > threshold}
    spec = RunSpec(
        dag=replace(dag, data={k: v for k, v in dag.data.items() if k not in large}),
        plan=ctx.plan,
        settings=ctx.settings,
        output_tasks=ctx.output_tasks,
    )
    blob = dumps_spec(spec)
    writes: dict[str, Any] = {data_key(name): v for name, v in large.items()}
    inline = len(blob) <= int(config.get("payload.inline_dag_bytes"))
    if not inline:
        writes[DAG_KEY] = blob
    if writes:
        ctx.store.commit(ctx.run_id, writes)
    return Shipment(spec_inline=b64(blob) if inline else None, invoker=invoker)
