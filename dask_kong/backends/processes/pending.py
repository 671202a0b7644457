"""An invocation as the local gateway holds it, from acceptance to its outcome.

`PendingInvocation` is what the queue orders, a worker runs and the pool completes;
`InvocationOutcome` is what its caller gets back. Shared by `invocation_queue.py`,
`worker_process.py`, `pool.py` and `gateway.py`, and nothing else lives here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from .resources import ResourceConfig

#: Delivers an invocation's outcome to whoever waits for it (a future, an HTTP reply).
OutcomeCallback = Callable[["InvocationOutcome"], None]


def new_request_id() -> str:
    """A Lambda-style request id (a UUID)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class InvocationOutcome:
    """How one invocation ended: the handler's JSON result, or a Lambda error body."""

    #: the id the caller got when the invocation was accepted
    request_id: str
    #: the handler's result JSON, or a Lambda error body when `function_error`
    payload: bytes
    #: the handler raised, its worker died or timed out, or the gateway gave it up
    function_error: bool
    #: whether a cold worker ran it; None when no worker did (lost while starting,
    #: gateway stopped, cancelled while queued)
    cold_start: bool | None


@dataclass(eq=False)
class PendingInvocation:
    """An invocation from the moment it is accepted until its outcome is delivered.

    Compared by identity (`eq=False`): the queue keeps it in a set and a heap.
    """

    #: Lambda-style request id (`new_request_id`)
    request_id: str
    #: canonical function name (`FunctionTable.resolve`)
    function: str
    #: the resource config that function runs on
    config: ResourceConfig
    #: the event, as the caller sent it
    payload: bytes
    #: who gets the outcome; None for Event invocations, whose outcome nobody awaits
    on_complete: OutcomeCallback | None
    #: higher starts first when invocations wait for a slot (kong: DAG.urgency)
    priority: int = 0
    #: set when a worker takes it: cold (a new process) or warm
    cold_start: bool | None = None
    #: it was given a concurrency slot (left the queue); the slot is freed on completion
    holds_slot: bool = False
    #: its outcome was delivered; every later outcome is ignored
    done: bool = False
    #: monotonic time the gateway accepted it
    accepted_at: float = field(default_factory=time.monotonic)
    #: deliveries of this Event invocation that failed before this one (Lambda's
    #: asynchronous retries: the same request id and payload, delivered again)
    retried: int = 0
    #: monotonic time it got a slot; the wait since `accepted_at` is reported to the
    #: handler as `context.queued_s`, so start-up samples leave queueing out
    started_at: float = 0.0

    @property
    def sync(self) -> bool:
        """Somebody waits for the outcome (RequestResponse), as opposed to an Event."""
        return self.on_complete is not None
