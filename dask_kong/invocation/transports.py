"""Transports: what delivers an invocation payload to a platform.

* `GatewayPipeTransport`: inside a worker of the local gateway, a frame on the worker's
  pipe (no HTTP: `pipe.invoke_via_gateway`).
* `GatewayDirectTransport`: a client that owns the gateway calls it in-process.
* `LambdaTransport`: the AWS Lambda Invoke API through aiobotocore, against AWS or any
  endpoint that speaks it (the local gateway does, which is how it is tested).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from .. import config
from ..errors import KongError
from .pipe import invoke_via_gateway


class Gateway(Protocol):
    """What the direct transport needs of the local gateway."""

    def invoke_many(
        self,
        function: str,
        payloads: Sequence[bytes],
        *,
        sync: bool,
        priorities: Sequence[int] | None = None,
    ) -> Any: ...


class GatewayDirectTransport:
    """Event invocations through a gateway in this process, without HTTP."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None:
        self.gateway.invoke_many(function, payloads, sync=False, priorities=priorities)

    def close(self) -> None:
        """The backend stops the gateway."""


class GatewayPipeTransport:
    """Inside a gateway worker process: a frame on the worker's pipe, no HTTP."""

    def send(self, function: str, payloads: Sequence[bytes], priorities: Sequence[int]) -> None:
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
            **_gateway_credentials(self.endpoint_url),
            config=AioConfig(
                retries=retries,
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                max_pool_connections=int(config.get("lambda.max_connections")),
            ),
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

    def invoke_sync(self, function: str, payload: bytes) -> tuple[bytes, str | None]:
        """One synchronous (RequestResponse) invocation: the handler's result, and the
        function error ("Unhandled"...) or None. Raises what the API raised (no such
        function: ResourceNotFoundException)."""
        return self._call(self._invoke_sync(function, payload))  # type: ignore[no-any-return]

    async def _invoke_sync(self, function: str, payload: bytes) -> tuple[bytes, str | None]:
        response = await self._client.invoke(
            FunctionName=function, InvocationType="RequestResponse", Payload=payload
        )
        body = await response["Payload"].read()
        return body, response.get("FunctionError")

    def close(self) -> None:
        if self._client_cm is not None:
            self._call(self._client_cm.__aexit__(None, None, None))
            self._client_cm = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()


def _gateway_credentials(endpoint_url: str | None) -> dict[str, str]:
    """The key pair to sign calls to a local gateway with (`kong.gateway.*`, which a
    gateway gives its workers); none for AWS itself or when unset: then aiobotocore's
    usual chain (environment, profile, role) applies."""
    key_id = config.get("gateway.access_key_id")
    secret = config.get("gateway.secret_access_key")
    if not endpoint_url or not key_id or not secret:
        return {}
    return {"aws_access_key_id": str(key_id), "aws_secret_access_key": str(secret)}


def _region_from_env(endpoint_url: str | None) -> str:
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        return region
    if endpoint_url:
        return "local"  # any name works against a custom endpoint; AWS needs a real one
    raise KongError("no AWS region: set kong.lambda.region or AWS_REGION")
