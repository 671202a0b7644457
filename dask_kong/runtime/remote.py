"""Shipping a run to workers in other processes: what travels in an invocation payload.

A Lambda event is JSON, so a payload is a small JSON object; binary parts (the run spec,
inline inputs) are pickles in base64. A run is prepared once by the client:

* the `RunSpec` (DAG without its large data, plan, settings) is pickled once; it travels
  inline when small, else it is stored once under the run's `dag` key and every worker
  process fetches it once and caches it by run id;
* large data entries (DataNodes, constants lifted out of `da.from_array` tasks) are
  stored once, each under its own key, and fetched only by the worker whose task reads it.

Pickle memoization keeps a function shared by many tasks once in the spec.
"""

from __future__ import annotations

import base64
import functools
import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from dask._task_spec import GraphNode
from dask.sizeof import sizeof

from .. import config, serialize
from ..constants import DAG_KEY, data_key
from ..dag import DAG
from ..errors import KongError, SerializationError
from ..planning import Plan
from .context import Invocation, RunContext, RunSettings

PAYLOAD_VERSION = 1


@dataclass(frozen=True)
class RunSpec:
    """Everything a remote worker needs about a run besides its inputs."""

    dag: DAG
    plan: Plan
    settings: RunSettings
    output_tasks: frozenset[int]


@dataclass(frozen=True)
class InvokerSpec:
    """How a worker starts further workers: through the local gateway's pipe, or with
    the AWS Lambda API (aiobotocore) at `endpoint_url` (None: AWS itself)."""

    kind: str  # "gateway" or "lambda"
    function: str
    endpoint_url: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class Shipment:
    """A prepared run: how invocations refer to its spec, and how workers invoke."""

    spec_inline: str | None  # base64 pickle of the RunSpec, or None when stored
    invoker: InvokerSpec


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
    check_shippable(dag, shares_machine=invoker.kind == "gateway")
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
    return Shipment(spec_inline=_b64(blob) if inline else None, invoker=invoker)


def dumps_spec(spec: RunSpec) -> bytes:
    """Pickle the spec; when that fails, name the first task that cannot be pickled."""
    try:
        return serialize.dumps(spec, what="the run's DAG")
    except SerializationError:
        for key, node in zip(spec.dag.keys, spec.dag.nodes, strict=True):
            serialize.dumps(node, what=f"task {key!r}")  # raises naming the task
        raise


def encode_invocation(invocation: Invocation, shipment: Shipment) -> bytes:
    """The JSON payload of one invocation."""
    body: dict[str, Any] = {
        "kong": PAYLOAD_VERSION,
        "run": invocation.run_id,
        "start": invocation.start,
        "sent": invocation.sent_at,
        "invoker": asdict(shipment.invoker),
    }
    if invocation.inputs:
        body["inputs"] = _b64(serialize.dumps(invocation.inputs, what="inline inputs"))
    if shipment.spec_inline is not None:
        body["spec"] = shipment.spec_inline
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class DecodedInvocation:
    """An invocation, the run spec when it travelled inline (base64, passed on as is to
    the workers this one invokes), and how to invoke further workers."""

    invocation: Invocation
    spec_b64: str | None
    invoker: InvokerSpec

    @property
    def spec_inline(self) -> bytes | None:
        return None if self.spec_b64 is None else base64.b64decode(self.spec_b64)


def decode_invocation(event: dict[str, Any]) -> DecodedInvocation:
    """Inverse of `encode_invocation`; a payload of another version is refused."""
    if event.get("kong") != PAYLOAD_VERSION:
        raise ValueError(f"not a dask-kong v{PAYLOAD_VERSION} invocation: {sorted(event)}")
    inputs = serialize.loads(base64.b64decode(event["inputs"])) if "inputs" in event else {}
    return DecodedInvocation(
        invocation=Invocation(
            event["run"], int(event["start"]), inputs, sent_at=float(event.get("sent", 0.0))
        ),
        spec_b64=event.get("spec"),
        invoker=InvokerSpec(**event["invoker"]),
    )


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")
