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
from ..invocation.payload import (
    RunSpec,
    Shipment,
    b64,
    caller_dask_config,
    dumps_spec,
    spec_parts,
)
from .context import RunContext
from .shippable import check_shippable


def prepare_remote_run(ctx: RunContext, invoker: InvokerSpec) -> Shipment:
    """Store the run's large data and (when large) its spec once; return the shipment.
    Data entries the client uploads into the session's scope (`ctx.data_refs`,
    `runtime.upload`) stay out of both; other large ones are stored in the run."""
    dag = ctx.dag
    check_shippable(dag, shares_machine=invoker.shares_machine)
    threshold = ctx.settings.inline_input_bytes
    uploaded = ctx.data_refs.keys if ctx.data_refs is not None else {}
    large = {
        name: v for name, v in dag.data.items() if name not in uploaded and sizeof(v) > threshold
    }
    inline_data = {k: v for k, v in dag.data.items() if k not in large and k not in uploaded}
    spec = RunSpec(
        dag=replace(dag, data=inline_data),
        plan=ctx.plan,
        settings=ctx.settings,
        output_tasks=ctx.output_tasks,
        data_refs=ctx.data_refs,
        dask_config=caller_dask_config(),
    )
    # Signed once: for the payload when it travels inline, else by the store as the
    # run's `dag` value (bound to this run's key as any stored value is).
    parts = spec_parts(spec)
    inline = len(parts[1]) <= int(config.get("payload.inline_dag_bytes"))
    data_bytes = store_in_run(ctx, {data_key(name): v for name, v in large.items()})
    spec_bytes = 0 if inline else store_in_run(ctx, {DAG_KEY: parts})
    return Shipment(
        spec_inline=b64(dumps_spec(parts, ctx.run_id)) if inline else None,
        invoker=invoker,
        spec_bytes=spec_bytes,
        data_bytes=data_bytes,
    )


def store_in_run(ctx: RunContext, writes: dict[str, Any]) -> int:
    """Write `writes` into the run; the bytes the store wrote."""
    return ctx.store.commit(ctx.run_id, writes).bytes_written if writes else 0
