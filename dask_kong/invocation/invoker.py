"""`RemoteInvoker`: how the runtime starts workers in other processes.

It turns invocations into payloads (`payload.encode_invocation`), groups them by the
function of their resource config, and hands them to a transport (`transports`). An
inline input that would push a payload past the platform's limit goes to the store
instead, and the payload carries nothing inline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .. import config
from ..constants import output_key
from ..dag import DAG
from ..errors import KongError
from ..planning.plan import Plan
from ..store.base import Store
from .model import PREWARM_PAYLOAD, PREWARM_PRIORITY, Invocation, Transport, function_for
from .payload import RunSettings, Shipment, encode_invocation


class InvokedRun(Protocol):
    """What the invoker reads of a run (the runtime's `RunContext` is one)."""

    @property
    def run_id(self) -> str: ...
    @property
    def dag(self) -> DAG: ...
    @property
    def plan(self) -> Plan: ...
    @property
    def store(self) -> Store: ...
    @property
    def shipment(self) -> Shipment | None: ...
    @property
    def settings(self) -> RunSettings: ...


class RemoteInvoker:
    """The runtime's `Invoker` for workers in other processes."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.max_bytes = int(config.get("payload.max_async_bytes"))

    def invoke(self, run: InvokedRun, invocations: Sequence[Invocation]) -> None:
        """Send every invocation, grouped by function; the most urgent (most tasks
        waiting on it, `DAG.urgency`) first where a queue orders them."""
        shipment = run.shipment
        if shipment is None:
            raise KongError(f"run {run.run_id} was not prepared for remote workers")
        by_function: dict[str, tuple[list[bytes], list[int]]] = {}
        urgency = run.dag.urgency
        faults = run.settings.faults
        for inv in invocations:
            function = function_for(shipment.invoker.function, run.plan.tasks[inv.start].resource)
            payloads, priorities = by_function.setdefault(function, ([], []))
            payload = self._payload(run, shipment, inv)
            # fault injection (kong.faults.duplicate_fraction): at-least-once delivery
            copies = 2 if faults.duplicates(run.run_id, inv.start, inv.attempt) else 1
            payloads += [payload] * copies
            priorities += [urgency[inv.start]] * copies
        for function, (payloads, priorities) in by_function.items():
            self.transport.send(function, payloads, priorities)

    def prewarm(self, base_function: str, resource: str) -> None:
        """An empty invocation that only starts (warms) a worker of `resource`."""
        self.transport.send(
            function_for(base_function, resource), [PREWARM_PAYLOAD], [PREWARM_PRIORITY]
        )

    def _payload(self, run: InvokedRun, shipment: Shipment, invocation: Invocation) -> bytes:
        """The payload; inline inputs that would break the size limit go to the store."""
        payload = encode_invocation(invocation, shipment)
        if len(payload) <= self.max_bytes or not invocation.inputs:
            return payload
        writes = {output_key(t): v for t, v in invocation.inputs.items()}
        run.store.commit(run.run_id, writes)
        payload = encode_invocation(invocation.without_inputs(), shipment)
        if len(payload) > self.max_bytes:
            raise KongError(
                f"invocation payload of {len(payload)} bytes exceeds the limit of "
                f"{self.max_bytes} even without inline inputs; raise "
                "kong.payload.max_async_bytes or lower kong.payload.inline_dag_bytes"
            )
        return payload

    def close(self) -> None:
        self.transport.close()
