"""AWS Lambda backend: workers are invocations of a Lambda function, started through the
Lambda Invoke API with aiobotocore (InvocationType="Event").

The function runs `dask_kong.handler.lambda_handler` and reaches the
same Redis as the client (its URL in the function's environment as
DASK_KONG__STORE__URL). At start the backend checks that with one synchronous
invocation (`probe.probe_function`; kong.lambda.probe). `endpoint_url` points the
client, and the workers, at any endpoint that speaks the Invoke API: the local gateway
does, which is how this backend is tested end to end without AWS.
"""

from __future__ import annotations

from collections.abc import Sequence

from ... import config, security
from ...errors import KongError
from ...invocation.invoker import RemoteInvoker
from ...invocation.model import Invocation, InvokerSpec
from ...invocation.transports import LambdaTransport
from ...planning import ResourceSpec
from ...runtime.context import RunContext
from ...runtime.remote import prepare_remote_run
from ...store.base import Store
from .probe import probe_function


class LambdaBackend:
    """Invokes one Lambda per branch; workers invoke each other the same way."""

    name = "lambda"

    def __init__(
        self,
        store: Store,
        *,
        function: str | None = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        if store.in_process:
            raise KongError("backend='lambda' needs a Redis store reachable by the functions")
        if security.signing_enabled() and security.configured_key() is None:
            raise KongError(
                "backend='lambda' needs kong.security.key (or DASK_KONG__SECURITY__KEY) set "
                "here and to the same value in the function's environment: workers refuse "
                "payloads not signed with it (docs/security.md)"
            )
        transport = LambdaTransport(endpoint_url, region)
        self.spec = InvokerSpec(
            kind="lambda",
            function=str(config.get("lambda.function", function)),
            endpoint_url=transport.endpoint_url,
            region=transport.region,
        )
        self.invoker = RemoteInvoker(transport)
        if config.get("lambda.probe"):
            try:
                probe_function(store, transport, self.spec.function)
            except BaseException:
                self.invoker.close()
                raise

    def prepare_run(self, ctx: RunContext) -> None:
        ctx.shipment = prepare_remote_run(ctx, self.spec)

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.invoker.invoke(ctx, invocations)

    def resources(self) -> tuple[ResourceSpec, ...]:
        """The configs of `kong.lambda.resources` (one function each), default first."""
        specs = config.get("lambda.resources") or {"default": {"memory_mb": 1769, "cpus": 1}}
        return tuple(ResourceSpec(n, int(s["memory_mb"]), int(s["cpus"])) for n, s in specs.items())

    def concurrency(self) -> int | None:
        """Lambda scales out; a reserved-concurrency cap can be set in kong.lambda."""
        limit = config.get("lambda.concurrency")
        return None if limit is None else int(limit)

    def prewarm(self, resource: str) -> None:
        self.invoker.prewarm(self.spec.function, resource)

    def cancel_run(self, ctx: RunContext) -> None:
        """Lambda cannot stop a running invocation, and a reserved slot frees itself when
        the invocation returns: the run's cancel flag stops its branches at their next
        task boundary, which is all there is to do."""

    def close(self) -> None:
        self.invoker.close()
