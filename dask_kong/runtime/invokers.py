"""Invoking workers in other processes: one `RemoteInvoker`, several transports.

The invoker turns invocations into JSON payloads (see `remote.py`) and hands them to a
transport: the local gateway's pipe (inside a gateway worker), the gateway's in-process
fast path (a client that owns the gateway), or the AWS Lambda Invoke API through
aiobotocore (AWS itself, or any endpoint that speaks it, such as our gateway).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from .. import config
from ..constants import output_key
from ..errors import KongError
from .context import Invocation, RunContext
from .remote import encode_invocation

logger = logging.getLogger("dask_kong.invokers")


class Transport(Protocol):
    """Delivers asynchronous (Event) invocations of `function`.

    `priorities` (one per payload, higher first) order invocations that wait for a
    concurrency slot; a transport to a backend without such a queue ignores them."""

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None: ...

    def close(self) -> None: ...


class RemoteInvoker:
    """`Invoker` for workers in other processes."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.max_bytes = int(config.get("payload.max_async_bytes"))

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        shipment = ctx.shipment
        if shipment is None:
            raise KongError(f"run {ctx.run_id} was not prepared for remote workers")
        by_function: dict[str, tuple[list[bytes], list[int]]] = {}
        urgency = ctx.dag.successors
        for inv in invocations:
            function = function_for(shipment.invoker.function, ctx.plan.tasks[inv.start].resource)
            payloads, priorities = by_function.setdefault(function, ([], []))
            payloads.append(self._payload(ctx, inv))
            priorities.append(urgency[inv.start])
        for function, (payloads, priorities) in by_function.items():
            self.transport.send(function, payloads, priorities)

    def prewarm(self, base_function: str, resource: str) -> None:
        """An empty invocation that only starts (warms) a worker of `resource`."""
        self.transport.send(
            function_for(base_function, resource), [PREWARM_PAYLOAD], [PREWARM_PRIORITY]
        )

    def _payload(self, ctx: RunContext, invocation: Invocation) -> bytes:
        """The payload; inline inputs that would break the size limit go to the store."""
        payload = encode_invocation(invocation, ctx.shipment)
        if len(payload) <= self.max_bytes or not invocation.inputs:
            return payload
        writes = {output_key(t): v for t, v in invocation.inputs.items()}
        ctx.store.commit(ctx.run_id, writes)
        slim = Invocation(invocation.run_id, invocation.start, sent_at=invocation.sent_at)
        payload = encode_invocation(slim, ctx.shipment)
        if len(payload) > self.max_bytes:
            raise KongError(
                f"invocation payload of {len(payload)} bytes exceeds the limit of "
                f"{self.max_bytes} even without inline inputs; raise "
                "kong.payload.max_async_bytes or lower kong.payload.inline_dag_bytes"
            )
        return payload

    def close(self) -> None:
        self.transport.close()


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


class GatewayPipeTransport:
    """Inside a gateway worker process: a frame on the worker's pipe, no HTTP."""

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None:
        from ..backends.processes.worker_main import invoke_via_gateway

        for payload, priority in zip(payloads, priorities, strict=True):
            invoke_via_gateway(function, payload, priority)

    def close(self) -> None:
        """Nothing to release: the pipe belongs to the worker process."""


class LambdaTransport:
    """The AWS Lambda Invoke API through aiobotocore, on a private event loop thread so
    synchronous worker code can fire many invocations concurrently."""

    def __init__(self, endpoint_url: str | None = None, region: str | None = None) -> None:
        self.endpoint_url = endpoint_url or config.get("lambda.endpoint_url")
        self.region = region or config.get("lambda.region") or _region_from_env(self.endpoint_url)
        self.timeout_s = float(config.get("lambda.invoke_timeout_s"))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kong-lambda-invoker", daemon=True
        )
        self._thread.start()
        self._client: Any = None
        self._client_cm: Any = None
        self._call(self._open())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout_s)

    async def _open(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        session = get_session()
        retries = {"max_attempts": int(config.get("lambda.max_attempts")), "mode": "standard"}
        self._client_cm = session.create_client(
            "lambda",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            config=AioConfig(
                retries=retries,
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                max_pool_connections=int(config.get("lambda.max_connections")),
            ),
            **_local_credentials(self.endpoint_url),
        )
        self._client = await self._client_cm.__aenter__()

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None:
        """Lambda starts every Event invocation at once (up to the account's concurrency)
        and has no queue to order: `priorities` are not sent."""
        self._call(self._send_all(function, payloads))

    async def _send_all(self, function: str, payloads: Sequence[bytes]) -> None:
        responses = await asyncio.gather(
            *(
                self._client.invoke(FunctionName=function, InvocationType="Event", Payload=p)
                for p in payloads
            )
        )
        refused = [r["StatusCode"] for r in responses if r["StatusCode"] != 202]
        if refused:
            raise KongError(f"Lambda refused {len(refused)} invocations of {function}: {refused}")

    def close(self) -> None:
        if self._client_cm is not None:
            self._call(self._client_cm.__aexit__(None, None, None))
            self._client_cm = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def _region_from_env(endpoint_url: str | None) -> str:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if endpoint_url:
        return "local"  # any name works against a custom endpoint; AWS needs a real one
    raise KongError("no AWS region: set kong.lambda.region or AWS_REGION")


def _local_credentials(endpoint_url: str | None) -> dict[str, str]:
    """Against a local endpoint without AWS credentials, sign with placeholders (the
    local gateway does not check signatures); against AWS use the normal chain."""
    has_env = "AWS_ACCESS_KEY_ID" in os.environ or "AWS_PROFILE" in os.environ
    if endpoint_url and not has_env:
        return {"aws_access_key_id": "kong-local", "aws_secret_access_key": "kong-local"}
    return {}
