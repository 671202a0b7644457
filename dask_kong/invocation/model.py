"""What an invocation is, and what delivers it.

`Invocation` is one start of a worker on one branch of a run; `InvokerSpec` says how a
worker starts further workers; a `Transport` delivers payloads to a platform.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Invocation:
    """Start a branch of run `run_id` at task `start`.

    `attempt` counts deliveries the client or a worker made on purpose (1 for the first;
    a re-invocation of a lost branch is the next); a platform's own duplicate delivery
    repeats an attempt. `inputs` maps parent task index -> value inline. For the metrics
    history's start-up samples: `sent_at` is the wall clock when the invocation was made,
    `queued_s` how long it then waited for a free concurrency slot (known to the backend
    that queues it), `cold` whether it started a new worker.

    `resumed` (recovery, issue #13): the branch may redo work of a worker that was lost,
    so it reads outputs already published instead of running their tasks, takes back
    fan-ins the lost worker completed, and invokes its own dependents resumed too (the
    lost worker may have completed fan-ins further down the same way). Set on the
    client's re-invocation of a lost branch and on everything that branch invokes.

    `delivery` tells apart two deliveries of one invocation (at-least-once platforms,
    `kong.faults.duplicate_fraction`): the platform's request id (the local gateway's
    for each delivery; Lambda's `aws_request_id`, which a retry repeats with the next
    attempt), else a nonce the worker draws (`with_delivery`). Empty until delivered:
    it never travels in a payload, since a platform's duplicate repeats the payload."""

    run_id: str
    start: int
    inputs: dict[int, Any] = field(default_factory=dict)
    sent_at: float = field(default_factory=time.time)
    queued_s: float = 0.0
    cold: bool = False
    attempt: int = 1
    resumed: bool = False
    delivery: str = ""

    @property
    def id(self) -> str:
        """Run-relative name of this delivery of a branch attempt,
        `<start task>.<attempt>/<delivery>`: what its claims are held in and its
        heartbeats (its lease) are named by, so that the loss of one delivery frees
        its own claims and never those of a live duplicate."""
        return f"{self.start}.{self.attempt}/{self.delivery}"

    @classmethod
    def from_id(cls, run_id: str, invocation_id: str) -> Invocation:
        """The invocation (start, attempt, delivery; nothing inline) `id` names: what the
        client knows of a worker from its heartbeats alone (`runtime.leases`)."""
        branch, _, delivery = invocation_id.partition("/")
        start, _, attempt = branch.partition(".")
        return cls(run_id, int(start), attempt=int(attempt), delivery=delivery)

    def with_delivery(self, delivery: str | None = None) -> Invocation:
        """This invocation as delivered under `delivery` (the platform's request id);
        None or empty: a fresh nonce, for a platform that names no deliveries."""
        return dataclasses.replace(self, delivery=delivery or secrets.token_hex(8))

    def without_inputs(self) -> Invocation:
        """The same invocation with nothing inline (its inputs went to the store)."""
        return dataclasses.replace(self, inputs={})


@dataclass(frozen=True)
class InvokerSpec:
    """How a worker starts further workers: through the local gateway's pipe, or with
    the AWS Lambda API (aiobotocore) at `endpoint_url` (None: AWS itself)."""

    kind: str  # "gateway" or "lambda"
    function: str
    endpoint_url: str | None = None
    region: str | None = None

    @property
    def shares_machine(self) -> bool:
        """Whether every worker runs on this machine (its disk is theirs): the gateway's."""
        return self.kind == "gateway"

    @property
    def holds_leases(self) -> bool:
        """Whether its invocations hold leases (`runtime.leases`): on Lambda, where nobody
        reports a lost worker; the local gateway reports each one at once."""
        return self.kind == "lambda"


class Transport(Protocol):
    """Delivers asynchronous (Event) invocations of `function`.

    `priorities` (one per payload, higher first) order invocations that wait for a
    concurrency slot; a transport to a backend without such a queue ignores them."""

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None:
        """Deliver every payload; never waits for the invocations to run."""
        ...

    def close(self) -> None:
        """Release what the transport holds (connections, an event loop)."""
        ...


# The event a pre-warm invocation carries: the handler returns at once.
PREWARM_PAYLOAD = b'{"kong-warm": true}'
# A pre-warm is sent when the plan predicts a worker of its config will soon be needed;
# queued behind the run's work (priorities are successor counts, at most len(dag)) it
# would start that worker too late to help, so it goes first.
PREWARM_PRIORITY = 2**31 - 1


def function_for(base: str, resource: str) -> str:
    """The function serving `resource`: one function per resource config, named
    <base>-<config> (as the local gateway names them); "default" is <base> itself."""
    return base if resource in ("", "default") else f"{base}-{resource}"
