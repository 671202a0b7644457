"""A local gateway that speaks the AWS Lambda Invoke API and runs handlers in processes.

`Gateway(GatewaySettings.from_config("module:function"))` serves
`POST /2015-03-31/functions/{name}/invocations` on an aiohttp server whose event loop
runs in a background thread, so aiobotocore's Lambda client (`endpoint_url=gateway.url`)
works against it unchanged; its settings come from `kong.gateway` (`settings.py`). Each invocation
runs in a worker process of the pool (`pool.py`): warm pools per resource config, cold
starts, keep-warm expiry, a concurrency limit with a priority queue, memory limits and
timeouts. It is generic: it knows nothing of Dask, only `handler(event, context)`.

A client in the same process can skip HTTP: `invoke`, `invoke_many` and `submit` hop
straight onto the gateway's loop. Lambda's wire behaviour reproduced here:

- `X-Amz-Invocation-Type: RequestResponse` (default) -> 200 and the handler's JSON; when
  the handler failed, 200 with `X-Amz-Function-Error: Unhandled` and a body
  `{"errorMessage", "errorType", "stackTrace"}`. `Event` -> 202 at once, empty body.
  `DryRun` -> 204.
- Unknown function -> 404 `ResourceNotFoundException`; payload above 6 MB (sync) or
  1 MB (async) -> 413 `RequestTooLargeException`; both with `x-amzn-ErrorType`.
- Every response carries `x-amzn-RequestId`; synchronous ones `X-Kong-Cold-Start: 1/0`.
- Every request must be signed (AWS SigV4) with the gateway's access key pair
  (`auth.py`), else 403 with Lambda's error type; refusals are logged with the caller's
  address and key id, never a secret. A gateway configured with no pair generates one
  (`Gateway.credentials`, also in its workers' environment, as Lambda gives a function
  its role's keys) and refuses to bind a non-loopback address.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import dataclasses
import enum
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web

from ... import config
from ...errors import KongError
from .auth import AccessKey, Refusal, SignedRequest, check_body, check_headers
from .pending import InvocationOutcome, PendingInvocation, new_request_id
from .pool import InvocationMatcher, WorkerLostCallback, WorkerPool
from .resources import FunctionTable, ResourceConfig, function_arn
from .settings import GatewaySettings
from .stats import GatewayStats

logger = logging.getLogger("dask_kong.gateway")

T = TypeVar("T")

INVOKE_ROUTE = "/2015-03-31/functions/{name}/invocations"
HEADER_INVOCATION_TYPE = "X-Amz-Invocation-Type"
HEADER_FUNCTION_ERROR = "X-Amz-Function-Error"
HEADER_EXECUTED_VERSION = "X-Amz-Executed-Version"
HEADER_REQUEST_ID = "x-amzn-RequestId"
HEADER_ERROR_TYPE = "x-amzn-ErrorType"
HEADER_COLD_START = "X-Kong-Cold-Start"
JSON_CONTENT_TYPE = "application/json"


class InvocationType(enum.StrEnum):
    """Values of the `X-Amz-Invocation-Type` header."""

    REQUEST_RESPONSE = "RequestResponse"
    EVENT = "Event"
    DRY_RUN = "DryRun"


class GatewayError(KongError):
    """The gateway refused an invocation, or is not running."""


class FunctionNotFoundError(GatewayError):
    """No function of that name (Lambda's ResourceNotFoundException)."""


class PayloadTooLargeError(GatewayError):
    """The payload exceeds Lambda's limit for its invocation type (RequestTooLargeException)."""


class FunctionError(GatewayError):
    """A synchronous invocation ended in a Lambda error: the handler raised, its worker
    died (`Runtime.ExitError`) or it timed out (`Sandbox.Timedout`)."""

    def __init__(self, request_id: str, payload: bytes) -> None:
        try:
            body = json.loads(payload)
        except ValueError:
            body = {"errorType": "Unknown", "errorMessage": payload.decode(errors="replace")}
        self.request_id = request_id
        self.payload = payload
        self.error_type: str = body.get("errorType", "Unknown")
        self.error_message: str = body.get("errorMessage", "")
        self.stack_trace: list[str] = list(body.get("stackTrace", []))
        super().__init__(f"{self.error_type}: {self.error_message}")


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str]) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=JSON_CONTENT_TYPE,
        headers=headers,
    )


def _api_error(status: int, error_type: str, message: str, request_id: str) -> web.Response:
    """An error of the Invoke API itself (not of the function), as Lambda sends it."""
    headers = {HEADER_REQUEST_ID: request_id, HEADER_ERROR_TYPE: error_type}
    body = {"Type": "User", "Message": message, "message": message}
    return _json_response(status, body, headers)


class Gateway:
    """A Lambda-compatible HTTP endpoint plus a pool of worker processes.

    `on_worker_lost(function, payload, exitcode, request_id)` is called for every Event
    invocation lost with its worker (died, killed for its timeout or its memory, or the
    handler failed to load); `exitcode` follows `Popen.returncode` (negative: the
    signal); `request_id` names the lost delivery (its worker's `aws_request_id`). It
    runs on the gateway's event loop thread: it must return quickly and must not wait
    on a synchronous invocation. `settings` come from `GatewaySettings.from_config`.
    """

    def __init__(
        self, settings: GatewaySettings, *, on_worker_lost: WorkerLostCallback | None = None
    ) -> None:
        #: the key pair every Invoke request must be signed with
        self.credentials = _credentials_for(settings)
        self.settings = _with_worker_credentials(settings, self.credentials)
        self.function_table = FunctionTable(
            self.settings.function_prefix,
            self.settings.resource_configs,
            self.settings.default_config,
        )
        self.on_worker_lost = on_worker_lost
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._pool: WorkerPool | None = None
        self._url: str | None = None
        self._started = False
        self._stopped = False

    # -- lifecycle ------------------------------------------------------------------

    def start(self) -> Gateway:
        """Bind the HTTP server and return once it accepts connections."""
        with self._lock:
            if self._started:
                raise GatewayError("this gateway was already started")
            self._started = True
            bound: concurrent.futures.Future[str] = concurrent.futures.Future()
            self._thread = threading.Thread(
                target=self._run_loop, args=(bound,), name="kong-gateway", daemon=True
            )
            self._thread.start()
            try:
                self._url = bound.result(timeout=self._loop_call_timeout_s)
            except BaseException:
                self._stopped = True
                if self._loop is not None and not bound.done():  # bind still hanging
                    self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(timeout=self._loop_call_timeout_s)
                raise
            atexit.register(self.stop)
        logger.info("gateway on %s serving %s", self._url, ", ".join(self.functions))
        return self

    def stop(self) -> None:
        """Stop serving, end every worker process (by PID), join the loop thread.

        Idempotent. Running invocations get `kong.gateway.close_drain_s` to finish;
        then pending synchronous invocations fail with `Gateway.Stopped`, and queued or
        still running Event invocations are dropped (and counted).
        """
        if threading.current_thread() is self._thread:
            raise GatewayError("stop() cannot run on the gateway's own event loop thread")
        with self._lock:
            if self._stopped or not self._started:
                self._stopped = True
                return
            self._stopped = True
        atexit.unregister(self.stop)
        loop, thread = self._loop, self._thread
        assert loop is not None and thread is not None
        pool = self._pool
        deadline = self.settings.pool.close_drain_s + 4 * self.settings.pool.stop_timeout_s
        try:
            asyncio.run_coroutine_threadsafe(self._close(), loop).result(timeout=deadline)
        except Exception:
            logger.exception("gateway did not close cleanly within %ss; killing workers", deadline)
            if pool is not None:
                pool.kill_all_now(self.settings.pool.stop_timeout_s)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=self._loop_call_timeout_s)
        if thread.is_alive():
            logger.error("gateway loop thread did not end within %ss", self._loop_call_timeout_s)

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """`http://host:port` of the running gateway."""
        if self._url is None:
            raise GatewayError("the gateway is not started")
        return self._url

    @property
    def running(self) -> bool:
        """Started and not stopped."""
        return self._started and not self._stopped

    @property
    def functions(self) -> list[str]:
        """The function names this gateway serves, the default one first."""
        return self.function_table.names()

    @property
    def default_function(self) -> str:
        """The function of the default resource config: the prefix alone."""
        return self.settings.function_prefix

    @property
    def _loop_call_timeout_s(self) -> float:
        # The loop answers at once unless wedged; stop_timeout_s bounds that wait too.
        return self.settings.pool.stop_timeout_s

    def _run_loop(self, bound: concurrent.futures.Future[str]) -> None:
        """Body of the loop thread: open the server, serve until stop()."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open(bound))
            if bound.done() and bound.exception() is None:
                loop.run_forever()
        finally:
            _cancel_remaining_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _open(self, bound: concurrent.futures.Future[str]) -> None:
        """Start the HTTP server and the pool; report the URL or the error to start()."""
        settings = self.settings
        app = web.Application(
            client_max_size=max(
                settings.pool.max_sync_payload_bytes, settings.pool.max_async_payload_bytes
            )
        )
        app.router.add_post(INVOKE_ROUTE, self._handle_invoke)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.pool.stop_timeout_s)
        try:
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port)
            await site.start()
            host, port = runner.addresses[0][:2]
            url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
            self._pool = WorkerPool(settings.pool, self.function_table, url, self.on_worker_lost)
        except BaseException as exc:
            await runner.cleanup()
            bound.set_exception(exc)
            return
        self._runner = runner
        bound.set_result(url)

    async def _close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- HTTP -----------------------------------------------------------------------

    async def _handle_invoke(self, request: web.Request) -> web.Response:
        """POST /2015-03-31/functions/{name}/invocations (the Qualifier is ignored)."""
        request_id = new_request_id()
        name = request.match_info["name"]
        raw_type = request.headers.get(HEADER_INVOCATION_TYPE, InvocationType.REQUEST_RESPONSE)
        try:
            invocation_type = InvocationType(raw_type)
        except ValueError:
            message = f"Invalid invocation type {raw_type!r}"
            return _api_error(400, "InvalidParameterValueException", message, request_id)
        signed = self._check_headers(request, request_id)
        if isinstance(signed, web.Response):
            return signed
        payload = await self._read_payload(request, invocation_type, request_id)
        if isinstance(payload, web.Response):
            return payload
        refused = self._check_body(request, payload, signed, request_id)
        if refused is not None:
            return refused
        resolved = self.function_table.resolve(name)
        if resolved is None:
            message = f"Function not found: {function_arn(name)}"
            return _api_error(404, "ResourceNotFoundException", message, request_id)
        function, resource_config = resolved
        if invocation_type is InvocationType.DRY_RUN:
            return web.Response(status=204, headers={HEADER_REQUEST_ID: request_id})
        if invocation_type is InvocationType.EVENT:
            self._submit([PendingInvocation(request_id, function, resource_config, payload, None)])
            return web.Response(status=202, headers={HEADER_REQUEST_ID: request_id})
        outcome = await self._run_sync(request_id, function, resource_config, payload)
        return self._sync_response(outcome)

    async def _read_payload(
        self, request: web.Request, invocation_type: InvocationType, request_id: str
    ) -> bytes | web.Response:
        """The request's body, or a 413 when it exceeds the invocation type's limit
        (kong.gateway.max_sync_payload_bytes / max_async_payload_bytes): refused from its
        Content-Length before a byte is read, and a body without one (chunked) is read
        only until it passes the limit."""
        limit = self._payload_limit(sync=invocation_type is not InvocationType.EVENT)
        too_large = _api_error(
            413,
            "RequestTooLargeException",
            f"Request must be smaller than {limit} bytes for the InvokeFunction operation",
            request_id,
        )
        # The unread body is not drained: the connection closes after the answer.
        too_large.force_close()
        if request.content_length is not None and request.content_length > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
            size += len(chunk)
        return too_large

    def _check_headers(self, request: web.Request, request_id: str) -> SignedRequest | web.Response:
        """What the SigV4 headers say (`auth.check_headers`), checked before the body is
        read; a 403 for a request without the gateway's key id, or one signed too long
        ago, refused without reading its body."""
        signed = check_headers(self.credentials, request.headers, self.settings.signature_max_age_s)
        if isinstance(signed, Refusal):
            return self._refused(request, signed, request_id)
        return signed

    def _check_body(
        self, request: web.Request, payload: bytes, signed: SignedRequest, request_id: str
    ) -> web.Response | None:
        """A 403 when the signature is not the gateway's key pair's signature of this
        request and body (`auth.check_body`); None for a signed one."""
        url = f"{request.scheme}://{request.host}{request.raw_path}"
        refusal = check_body(
            self.credentials, request.method, url, request.headers, payload, signed
        )
        return None if refusal is None else self._refused(request, refusal, request_id)

    def _refused(self, request: web.Request, refusal: Refusal, request_id: str) -> web.Response:
        """The 403 for `refusal`, logged: who, which function, why; never the signature
        or a secret. The connection closes after it (an unread body is not drained)."""
        logger.warning(
            "refused invocation %s of %s from %s: %s (%s)",
            request_id,
            request.match_info["name"],
            request.remote,
            refusal.error_type,
            refusal.message,
        )
        response = _api_error(403, refusal.error_type, refusal.message, request_id)
        response.force_close()
        return response

    async def _run_sync(
        self, request_id: str, function: str, resource_config: ResourceConfig, payload: bytes
    ) -> InvocationOutcome:
        """Run one synchronous invocation from the loop; the HTTP client bounds the wait."""
        future: asyncio.Future[InvocationOutcome] = asyncio.get_running_loop().create_future()

        def deliver(outcome: InvocationOutcome) -> None:
            if not future.done():
                future.set_result(outcome)

        self._submit([PendingInvocation(request_id, function, resource_config, payload, deliver)])
        return await future

    @staticmethod
    def _sync_response(outcome: InvocationOutcome) -> web.Response:
        headers = {HEADER_REQUEST_ID: outcome.request_id, HEADER_EXECUTED_VERSION: "$LATEST"}
        if outcome.cold_start is not None:
            headers[HEADER_COLD_START] = "1" if outcome.cold_start else "0"
        if outcome.function_error:
            headers[HEADER_FUNCTION_ERROR] = "Unhandled"
        return web.Response(
            status=200, body=outcome.payload, content_type=JSON_CONTENT_TYPE, headers=headers
        )

    def _payload_limit(self, *, sync: bool) -> int:
        pool = self.settings.pool
        return pool.max_sync_payload_bytes if sync else pool.max_async_payload_bytes

    # -- fast path (same process, no HTTP) ------------------------------------------

    def invoke(
        self, function: str, payload: bytes, *, sync: bool = True, timeout_s: float | None = None
    ) -> bytes | None:
        """Invoke without HTTP. sync: the handler's JSON result (FunctionError when it
        failed). Not sync (Event): None at once. `timeout_s` bounds the whole wait,
        queueing included (default `kong.gateway.sync_wait_s`)."""
        if not sync:
            self.invoke_many(function, [payload], sync=False)
            return None
        outcome = self.submit(function, payload).result(timeout=self._sync_wait_s(timeout_s))
        return self._result_or_raise(outcome)

    def invoke_many(
        self,
        function: str,
        payloads: Sequence[bytes],
        *,
        sync: bool = False,
        timeout_s: float | None = None,
        priorities: Sequence[int] | None = None,
    ) -> list[bytes] | None:
        """Invoke once per payload in one hop onto the loop (fan-out). Not sync: None at
        once, and `priorities` (one per payload, higher first) order them in the queue.
        sync: the results in order, once all finished; FunctionError for the first that
        failed."""
        name, resource_config = self._resolve(function)
        for payload in payloads:
            self._check_size(payload, sync=sync)
        if not sync:
            ranks = [0] * len(payloads) if priorities is None else priorities
            self._submit_threadsafe(
                [
                    PendingInvocation(new_request_id(), name, resource_config, p, None, rank)
                    for p, rank in zip(payloads, ranks, strict=True)
                ]
            )
            return None
        futures = self._submit_sync_threadsafe(name, resource_config, payloads)
        deadline = time.monotonic() + self._sync_wait_s(timeout_s)
        outcomes = [f.result(timeout=max(deadline - time.monotonic(), 0)) for f in futures]
        return [self._result_or_raise(o) for o in outcomes]

    def submit(self, function: str, payload: bytes) -> concurrent.futures.Future[InvocationOutcome]:
        """Start a synchronous invocation; the future gives its full outcome (result or
        Lambda error body, cold start flag) without raising for function errors."""
        name, resource_config = self._resolve(function)
        self._check_size(payload, sync=True)
        return self._submit_sync_threadsafe(name, resource_config, [payload])[0]

    def _submit_sync_threadsafe(
        self, function: str, resource_config: ResourceConfig, payloads: Sequence[bytes]
    ) -> list[concurrent.futures.Future[InvocationOutcome]]:
        futures: list[concurrent.futures.Future[InvocationOutcome]] = []
        invocations = []
        for payload in payloads:
            future: concurrent.futures.Future[InvocationOutcome] = concurrent.futures.Future()
            futures.append(future)
            invocations.append(
                PendingInvocation(
                    new_request_id(), function, resource_config, payload, _deliver_to(future)
                )
            )
        self._submit_threadsafe(invocations)
        return futures

    def _submit_threadsafe(self, invocations: list[PendingInvocation]) -> None:
        loop = self._running_loop()
        if threading.current_thread() is self._thread:
            self._submit(invocations)
        else:
            loop.call_soon_threadsafe(self._submit, invocations)

    def _submit(self, invocations: list[PendingInvocation]) -> None:
        """On the loop thread: hand invocations to the pool."""
        assert self._pool is not None
        for invocation in invocations:
            self._pool.submit(invocation)

    def _resolve(self, function: str) -> tuple[str, ResourceConfig]:
        resolved = self.function_table.resolve(function)
        if resolved is None:
            raise FunctionNotFoundError(f"Function not found: {function_arn(function)}")
        return resolved

    def _check_size(self, payload: bytes, *, sync: bool) -> None:
        limit = self._payload_limit(sync=sync)
        if len(payload) > limit:
            raise PayloadTooLargeError(f"payload of {len(payload)} bytes exceeds {limit} bytes")

    def _sync_wait_s(self, timeout_s: float | None) -> float:
        return float(config.get("gateway.sync_wait_s", timeout_s))

    @staticmethod
    def _result_or_raise(outcome: InvocationOutcome) -> bytes:
        if outcome.function_error:
            raise FunctionError(outcome.request_id, outcome.payload)
        return outcome.payload

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None or self._pool is None or self._stopped:
            raise GatewayError("the gateway is not running")
        return self._loop

    # -- introspection --------------------------------------------------------------

    def _call_in_loop(self, fn: Callable[[WorkerPool], T]) -> T:
        """Run `fn(pool)` on the loop thread (where pool state lives); return its result."""
        loop = self._running_loop()
        pool = self._pool
        assert pool is not None
        if threading.current_thread() is self._thread:
            return fn(pool)

        async def call() -> T:
            return fn(pool)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(self._loop_call_timeout_s)

    def stats(self) -> GatewayStats:
        """Counts since start (invocations, cold/warm starts, ...) and current occupancy."""
        return self._call_in_loop(lambda pool: pool.stats())

    def worker_pids(self) -> list[int]:
        """PIDs of the worker processes alive now."""
        return self._call_in_loop(lambda pool: pool.worker_pids())

    def cancel(self, matches: InvocationMatcher) -> list[int]:
        """Take back every queued or running invocation for which `matches(function,
        payload)` is true: queued ones are dropped, the workers running (or starting
        for) the others are killed and their slots freed at once. A sync caller gets a
        `Gateway.Cancelled` error. Returns the PIDs of the workers killed."""
        return self._call_in_loop(lambda pool: pool.cancel(matches))

    def retire_idle_workers(self) -> int:
        """End every idle worker now, so that the next invocations start cold."""
        return self._call_in_loop(lambda pool: pool.retire_idle())


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def _credentials_for(settings: GatewaySettings) -> AccessKey:
    """The configured key pair; a generated one on loopback; refusal elsewhere."""
    if settings.credentials is not None:
        return settings.credentials
    if not is_loopback(settings.host):
        raise GatewayError(
            f"refusing to serve {settings.host} without credentials: anyone who reaches it "
            "could run code. Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
            "kong.gateway.access_key_id/secret_access_key) to the pair callers sign with"
        )
    return AccessKey.generate()


def _with_worker_credentials(settings: GatewaySettings, key: AccessKey) -> GatewaySettings:
    """`settings` whose workers also get the key pair, to invoke the gateway over HTTP as
    a Lambda function invokes with its role's keys (an explicit `env` still wins). Under
    kong's own names (`kong.gateway.*`), not AWS's: a task that reads S3 in a worker
    uses the user's AWS credentials, as in the caller's process."""
    env = {**key.kong_environment(), **settings.pool.env}
    return dataclasses.replace(settings, pool=dataclasses.replace(settings.pool, env=env))


def _cancel_remaining_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what still runs on the stopped loop (idle keep-alive connections, say) and
    let it unwind, as asyncio.run does, so that nothing is destroyed while pending."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


def _deliver_to(
    future: concurrent.futures.Future[InvocationOutcome],
) -> Callable[[InvocationOutcome], None]:
    """An outcome callback resolving a thread-safe future (unless its caller cancelled)."""

    def deliver(outcome: InvocationOutcome) -> None:
        if future.set_running_or_notify_cancel():
            future.set_result(outcome)

    return deliver
