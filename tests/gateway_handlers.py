"""Lambda-style handlers the gateway tests run in worker processes.

`handle` dispatches on `event["op"]`, so that one gateway (one handler) serves every
test; each op is a small function of its own.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from dask_kong.backends.processes.worker_main import LambdaContext
from dask_kong.invocation.pipe import invoke_via_gateway


def echo(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The event back, plus what the worker and its context look like."""
    if "say" in event:  # a line on stdout, which the gateway must log, not choke on
        print(f"echo handler in pid {os.getpid()} says {event['say']}")
    return {
        "event": event,
        "pid": os.getpid(),
        "cold_start": context.cold_start,
        "function_name": context.function_name,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining_ms": context.get_remaining_time_in_millis(),
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "gateway_url": os.environ.get("KONG_GATEWAY_URL"),
        "test_mark": os.environ.get("KONG_TEST_MARK"),
    }


def sleep(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Hold the worker busy for `seconds`."""
    time.sleep(float(event["seconds"]))
    return {"pid": os.getpid(), "slept": event["seconds"]}


class HandlerFailure(Exception):
    """What `fail` raises."""


def fail(event: dict[str, Any], context: LambdaContext) -> None:
    """Raise, as a buggy handler would."""
    raise HandlerFailure(event.get("message", "boom"))


def crash(event: dict[str, Any], context: LambdaContext) -> None:
    """Kill the worker process mid-invocation, without any cleanup."""
    os._exit(int(event.get("code", 3)))


def allocate(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Allocate and touch `mb` megabytes."""
    size = int(event["mb"]) * 1024 * 1024
    block = bytearray(size)
    block[::4096] = b"x" * len(range(0, size, 4096))
    return {"pid": os.getpid(), "allocated_mb": event["mb"]}


def fan_out(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Invoke `function` with `event["child"]` through the parent gateway's pipe, then
    stay busy until the file `wait_for` exists (at most 10 s): proof that the gateway ran
    the child while this invocation was still running."""
    invoke_via_gateway(event["function"], json.dumps(event["child"]).encode())
    deadline = time.monotonic() + 10
    while "wait_for" in event and not os.path.exists(event["wait_for"]):
        if time.monotonic() > deadline:
            return {"pid": os.getpid(), "invoked": event["function"], "child_seen": False}
        time.sleep(0.01)
    return {"pid": os.getpid(), "invoked": event["function"], "child_seen": True}


def touch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Write `text` to `path`: a side effect a test can wait for after an Event."""
    with open(event["path"], "w") as f:
        f.write(event.get("text", str(os.getpid())))
    return {"pid": os.getpid()}


def fan_out_ranked(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Invoke `function` once per (priority, child) pair of `children`, through the pipe."""
    for priority, child in event["children"]:
        invoke_via_gateway(event["function"], json.dumps(child).encode(), priority)
    return {"pid": os.getpid(), "invoked": len(event["children"])}


def append(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Append the line `text` to `path`: the order invocations ran in."""
    with open(event["path"], "a") as f:
        f.write(event["text"] + "\n")
    return {"pid": os.getpid()}


OPS = {
    "echo": echo,
    "sleep": sleep,
    "fail": fail,
    "crash": crash,
    "allocate": allocate,
    "fan_out": fan_out,
    "touch": touch,
    "append": append,
    "fan_out_ranked": fan_out_ranked,
}


def handle(event: dict[str, Any], context: LambdaContext) -> Any:
    """Run the op the event names (echo when it names none)."""
    return OPS[event.get("op", "echo")](event, context)
