"""Preparing a run for workers in other processes (the client's side of shipping).

`prepare_remote_run` checks that the DAG can run where the workers are, stores the run's
large data and (when large) its spec once, and returns the `Shipment` every invocation
refers to; the payload format itself is `dask_kong.invocation.payload`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dask.sizeof import sizeof

from .. import config
from ..constants import DAG_KEY, data_key
from ..invocation.model import InvokerSpec
from ..invocation.payload import RunSpec, Shipment, b64, dumps_spec
from .context import RunContext
from .shippable import check_shippable


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
