"""The main loop of one worker process of the local gateway: a warm serverless container.

The gateway starts this module with two pipe file descriptors: it sends invocations on
one and reads results on the other. Both carry length-prefixed frames
(`dask_kong.invocation.pipe`); the worker's stdout and stderr are plain log output that
the gateway forwards to its logger, so a handler's `print` can never corrupt the protocol.

At start the worker applies its resource config (a memory limit; the CPU thread
variables were set in its environment by the gateway before any import), imports the
handler once, reports READY, then answers invocations one at a time until its request
pipe closes (keep-warm expiry or gateway stop). A handler can start other invocations
without HTTP through `invoke_via_gateway`.

This module imports only the standard library and the pipe protocol (standard library
only too; the gateway loads both from their files, not through the dask_kong package),
so a cold start costs an interpreter start plus the handler's own imports.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dask_kong.invocation.pipe import Frame, FrameKind, WorkerChannel, attach

ENV_GATEWAY_URL = "KONG_GATEWAY_URL"

Handler = Callable[[Any, "LambdaContext"], Any]


@dataclass
class WorkerSettings:
    """What the gateway tells a worker on its command line."""

    handler: str
    memory_mb: int
    in_fd: int
    out_fd: int
    max_response_bytes: int
    max_async_bytes: int


@dataclass
class LambdaContext:
    """The `context` argument of a handler, shaped like AWS Lambda's Python context.

    `memory_limit_in_mb` is an int (Lambda's is a numeric string); `cold_start` is ours:
    True for the first invocation this worker process runs.
    """

    function_name: str
    memory_limit_in_mb: int
    aws_request_id: str
    invoked_function_arn: str
    cold_start: bool
    deadline_monotonic: float
    queued_s: float = 0.0  # ours: how long the invocation waited for a concurrency slot
    function_version: str = "$LATEST"
    log_group_name: str = field(default="")
    log_stream_name: str = field(default="")

    def get_remaining_time_in_millis(self) -> int:
        """Milliseconds left before the gateway kills this invocation for its timeout."""
        return max(int((self.deadline_monotonic - time.monotonic()) * 1000), 0)


def lambda_error(error_type: str, message: str, stack: list[str] | None = None) -> bytes:
    """The JSON body Lambda returns for a failed invocation."""
    body = {"errorMessage": message, "errorType": error_type, "stackTrace": stack or []}
    return json.dumps(body).encode()


def exception_error(exc: BaseException, error_type: str | None = None) -> bytes:
    """Lambda's error body for an exception the handler raised, with its stack trace."""
    stack = traceback.format_list(traceback.extract_tb(exc.__traceback__))
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not lose the error itself
        message = f"<unprintable {type(exc).__name__}>"
    return lambda_error(error_type or type(exc).__name__, message, stack)


def apply_memory_limit(memory_mb: int) -> None:
    """Cap this process's memory at `memory_mb`, like the memory size of a Lambda function.

    RLIMIT_DATA, not RLIMIT_AS: RLIMIT_AS counts every reserved address range (glibc's
    64 MB per-thread malloc arenas, shared libraries, PROT_NONE guard regions), so NumPy
    with a few OpenBLAS threads fails far below its real use. RLIMIT_DATA (enforced on
    mmap since Linux 4.7) counts private writable memory: the heap, NumPy arrays, thread
    stacks and BLAS buffers. It is stricter than Lambda's RSS-based limit only by the
    untouched parts of those stacks and buffers (a few tens of MB). An allocation beyond
    it raises MemoryError in the handler. Measured here: a worker that ran a NumPy GEMM
    and SVD holds ~105 MB of it with one OpenBLAS thread, ~150 MB with two.
    """
    limit = memory_mb * 1024 * 1024
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


class InitError(Exception):
    """The handler could not be loaded; `body` is the Lambda error to report."""

    def __init__(self, body: bytes) -> None:
        super().__init__(body.decode(errors="replace"))
        self.body = body


def load_handler(spec: str) -> Handler:
    """Import `module:function` once, so that warm invocations only call it.

    InitError carries Lambda's error types for a malformed name, a module that cannot be
    imported and a missing function; any other exception of the module's own import
    propagates, to be reported under its own type (as Lambda does).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        message = f"Bad handler '{spec}': not of the form module:function"
        raise InitError(lambda_error("Runtime.MalformedHandlerName", message))
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        message = f"Unable to import module '{module_name}': {exc}"
        stack = traceback.format_list(traceback.extract_tb(exc.__traceback__))
        raise InitError(lambda_error("Runtime.ImportModuleError", message, stack)) from exc
    handler: Handler | None = getattr(module, attr, None)
    if not callable(handler):
        message = f"Handler '{attr}' missing on module '{module_name}'"
        raise InitError(lambda_error("Runtime.HandlerNotFound", message))
    return handler


def run_invocation(
    handler: Handler, frame: Frame, settings: WorkerSettings, cold_start: bool
) -> tuple[bool, bytes]:
    """Run the handler on one INVOKE frame: (is error, result JSON or Lambda error JSON)."""
    header = frame.header
    context = LambdaContext(
        function_name=header["fn"],
        memory_limit_in_mb=settings.memory_mb,
        aws_request_id=header["id"],
        invoked_function_arn=header["arn"],
        cold_start=cold_start,
        deadline_monotonic=time.monotonic() + header["timeout_ms"] / 1000,
        queued_s=float(header.get("queued_s", 0.0)),
    )
    try:
        event = json.loads(frame.payload) if frame.payload else {}
    except ValueError as exc:
        return True, exception_error(exc, "Runtime.UnmarshalError")
    try:
        result = handler(event, context)
    except Exception as exc:
        return True, exception_error(exc)
    try:
        body = json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        return True, exception_error(exc, "Runtime.MarshalError")
    if len(body) > settings.max_response_bytes:
        message = (
            f"Response payload size ({len(body)} bytes) exceeded maximum allowed payload "
            f"size ({settings.max_response_bytes} bytes)."
        )
        return True, lambda_error("Function.ResponseSizeTooLarge", message)
    return False, body


def serve(channel: WorkerChannel, handler: Handler, settings: WorkerSettings) -> None:
    """Answer invocations one at a time until the gateway closes the request pipe."""
    cold_start = True
    while (frame := channel.receive()) is not None:
        if frame.kind is not FrameKind.INVOKE:
            raise ValueError(f"unexpected frame {frame.kind!r} from the gateway")
        is_error, body = run_invocation(handler, frame, settings, cold_start)
        cold_start = False
        channel.send(FrameKind.RESULT, {"id": frame.header["id"], "error": is_error}, body)


def parse_args(argv: list[str] | None) -> WorkerSettings:
    """Worker settings from the command line the gateway built."""
    parser = argparse.ArgumentParser(prog="dask_kong.backends.processes.worker_main")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--memory-mb", type=int, required=True)
    parser.add_argument("--in-fd", type=int, required=True)
    parser.add_argument("--out-fd", type=int, required=True)
    parser.add_argument("--max-response-bytes", type=int, required=True)
    parser.add_argument("--max-async-bytes", type=int, required=True)
    args = parser.parse_args(argv)
    return WorkerSettings(
        handler=args.handler,
        memory_mb=args.memory_mb,
        in_fd=args.in_fd,
        out_fd=args.out_fd,
        max_response_bytes=args.max_response_bytes,
        max_async_bytes=args.max_async_bytes,
    )


def main(argv: list[str] | None = None) -> int:
    """Start, load the handler, serve; the exit status tells the gateway how it ended."""
    started = time.monotonic()
    settings = parse_args(argv)
    apply_memory_limit(settings.memory_mb)
    channel = WorkerChannel(settings.in_fd, settings.out_fd)
    attach(channel, settings.max_async_bytes)
    try:
        handler = load_handler(settings.handler)
    except InitError as exc:
        channel.send(FrameKind.INIT_ERROR, {}, exc.body)
        return 1
    except Exception as exc:  # the handler's module raised while being imported
        channel.send(FrameKind.INIT_ERROR, {}, exception_error(exc))
        return 1
    channel.send(FrameKind.READY, {"pid": os.getpid(), "init_s": time.monotonic() - started})
    try:
        serve(channel, handler, settings)
    except BrokenPipeError:  # the gateway is gone: nobody is left to answer
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
