"""The local Lambda-compatible gateway, exercised for real: HTTP, aiobotocore, processes.

Handlers live in tests/gateway_handlers.py. Every gateway a test starts is stopped by
`running_gateway`, which also checks that each worker PID seen is gone afterwards.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import dask
import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from dask_kong.backends.processes.auth import AccessKey, signed_headers
from dask_kong.backends.processes.gateway import (
    FunctionError,
    FunctionNotFoundError,
    Gateway,
    PayloadTooLargeError,
)
from dask_kong.backends.processes.invocation_queue import InvocationQueue
from dask_kong.backends.processes.pending import PendingInvocation, new_request_id
from dask_kong.backends.processes.resources import ResourceConfig
from dask_kong.backends.processes.settings import GatewaySettings

HANDLER = "tests.gateway_handlers:handle"
REPO = Path(__file__).resolve().parent.parent
SMALL = ResourceConfig("small", memory_mb=256, cpus=1)
LARGE = ResourceConfig("large", memory_mb=512, cpus=2)
TIGHT = ResourceConfig("tight", memory_mb=256, cpus=1, timeout_s=0.5)


def event(op: str, **fields: Any) -> bytes:
    return json.dumps({"op": op, **fields}).encode()


def pid_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `predicate` with backoff until it holds; fail the test at the deadline."""
    deadline = time.monotonic() + timeout_s
    delay = 0.005
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


@contextmanager
def running_gateway(handler: str = HANDLER, **kwargs: Any) -> Iterator[Gateway]:
    """A started gateway; on exit, stop it and check no worker process or thread is left."""
    kwargs.setdefault("resource_configs", [SMALL, LARGE, TIGHT])
    kwargs.setdefault("default_config", "small")
    kwargs.setdefault("keep_warm_s", 30.0)
    kwargs.setdefault("concurrency", 2)
    threads_before = set(threading.enumerate())
    on_worker_lost = kwargs.pop("on_worker_lost", None)
    settings = GatewaySettings.from_config(handler, **kwargs)
    gateway = Gateway(settings, on_worker_lost=on_worker_lost).start()
    seen: set[int] = set()
    try:
        yield gateway
        if gateway.running:
            seen.update(gateway.worker_pids())
    finally:
        gateway.stop()
    leftover = [pid for pid in seen if not pid_is_gone(pid)]
    assert not leftover, f"worker processes left after stop(): {leftover}"
    threads = [t for t in set(threading.enumerate()) - threads_before if t.name.startswith("kong")]
    assert not threads, f"gateway threads left after stop(): {threads}"


@asynccontextmanager
async def lambda_client(gateway: Gateway) -> AsyncIterator[Any]:
    """aiobotocore's Lambda client, signing with the gateway's key pair."""
    session = get_session()
    async with session.create_client(
        "lambda",
        endpoint_url=gateway.url,
        region_name="us-east-1",
        aws_access_key_id=gateway.credentials.access_key_id,
        aws_secret_access_key=gateway.credentials.secret.reveal(),
    ) as client:
        yield client


def signed(gateway: Gateway, url: str, body: bytes, **headers: str) -> dict[str, str]:
    """Headers that sign a raw HTTP POST of `body` to `url` with the gateway's key."""
    return signed_headers(gateway.credentials, url, body, headers)


def invoke_url(gateway: Gateway, function: str) -> str:
    return f"{gateway.url}/2015-03-31/functions/{function}/invocations"


@pytest.fixture(scope="module")
def lost() -> queue.Queue[tuple[str, bytes, int, str]]:
    """What the shared gateway reported to on_worker_lost."""
    return queue.Queue()


@pytest.fixture(scope="module")
def gateway(lost: queue.Queue[tuple[str, bytes, int, str]]) -> Iterator[Gateway]:
    with running_gateway(
        on_worker_lost=lambda *args: lost.put(args), env={"KONG_TEST_MARK": "from-env"}
    ) as shared:
        yield shared


def test_sync_echo_over_http_returns_result_and_lambda_headers(gateway: Gateway) -> None:
    async def call() -> tuple[int, dict[str, str], Any]:
        async with aiohttp.ClientSession() as http:
            url = invoke_url(gateway, "kong") + "?Qualifier=$LATEST"
            body = event("echo", value=42)
            headers = signed(gateway, url, body)
            async with http.post(url, data=body, headers=headers) as response:
                return response.status, dict(response.headers), await response.json()

    status, headers, body = asyncio.run(call())
    assert status == 200
    assert headers["X-Kong-Cold-Start"] in {"0", "1"}
    assert body["event"] == {"op": "echo", "value": 42}
    assert body["request_id"] == headers["x-amzn-RequestId"]
    assert body["function_name"] == "kong"
    assert body["memory_limit_in_mb"] == SMALL.memory_mb
    assert body["arn"].endswith(":function:kong")
    assert 0 < body["remaining_ms"] <= 300_000
    assert body["threads"] == "1"
    assert body["gateway_url"] == gateway.url
    assert body["test_mark"] == "from-env"


def test_aiobotocore_request_response_and_event(gateway: Gateway, tmp_path: Path) -> None:
    marker = tmp_path / "event-ran"

    async def call() -> tuple[dict[str, Any], Any, dict[str, Any], bytes]:
        async with lambda_client(gateway) as client:
            sync = await client.invoke(
                FunctionName="kong-large",
                InvocationType="RequestResponse",
                Payload=event("echo"),
            )
            body = json.loads(await sync["Payload"].read())
            queued = await client.invoke(
                FunctionName="kong",
                InvocationType="Event",
                Payload=event("touch", path=str(marker)),
            )
            return sync, body, queued, await queued["Payload"].read()

    sync, body, queued, queued_body = asyncio.run(call())
    assert sync["StatusCode"] == 200 and "FunctionError" not in sync
    assert body["function_name"] == "kong-large"
    assert body["memory_limit_in_mb"] == LARGE.memory_mb and body["threads"] == "2"
    assert queued["StatusCode"] == 202 and queued_body == b""
    wait_until(marker.exists)


def test_handler_exception_is_unhandled_function_error(gateway: Gateway) -> None:
    async def call() -> tuple[dict[str, Any], dict[str, Any]]:
        async with lambda_client(gateway) as client:
            response = await client.invoke(
                FunctionName="kong", Payload=event("fail", message="bad")
            )
            return response, json.loads(await response["Payload"].read())

    response, error = asyncio.run(call())
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "HandlerFailure"
    assert error["errorMessage"] == "bad"
    assert any("in fail" in line for line in error["stackTrace"])
    with pytest.raises(FunctionError, match="HandlerFailure: bad"):
        gateway.invoke("kong", event("fail", message="bad"))


def test_unknown_function_is_resource_not_found(gateway: Gateway) -> None:
    async def call() -> None:
        async with lambda_client(gateway) as client:
            await client.invoke(FunctionName="no-such-function", Payload=b"{}")

    with pytest.raises(ClientError) as info:
        asyncio.run(call())
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(FunctionNotFoundError):
        gateway.invoke("no-such-function", b"{}")


def test_dry_run_and_payloads_over_lambda_limits(gateway: Gateway) -> None:
    async def post(invocation_type: str, size: int) -> tuple[int, str | None]:
        url, body = invoke_url(gateway, "kong"), b" " * size
        headers = signed(gateway, url, body, **{"X-Amz-Invocation-Type": invocation_type})
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=io.BytesIO(body), headers=headers) as r,
        ):
            await r.read()
            return r.status, r.headers.get("x-amzn-ErrorType")

    assert asyncio.run(post("DryRun", 2)) == (204, None)
    assert asyncio.run(post("RequestResponse", 7 * 1024 * 1024)) == (
        413,
        "RequestTooLargeException",
    )
    assert asyncio.run(post("Event", 2 * 1024 * 1024)) == (413, "RequestTooLargeException")
    with pytest.raises(PayloadTooLargeError):
        gateway.invoke("kong", b" " * (2 * 1024 * 1024), sync=False)


def test_first_invocation_is_cold_and_the_next_warm() -> None:
    with running_gateway() as gateway:
        first = gateway.submit("kong", event("echo")).result(timeout=30)
        second = gateway.submit("kong", event("echo")).result(timeout=30)
        stats = gateway.stats()
    assert (first.cold_start, second.cold_start) == (True, False)
    assert json.loads(first.payload)["cold_start"] is True
    assert json.loads(second.payload)["cold_start"] is False
    assert json.loads(first.payload)["pid"] == json.loads(second.payload)["pid"]
    assert (stats.cold_starts, stats.warm_starts) == (1, 1)
    assert 0 < stats.cold_start_mean_s <= stats.cold_start_max_s


def test_concurrency_limit_queues_invocations_instead_of_failing() -> None:
    nap = 0.3
    with running_gateway(concurrency=2) as gateway:

        async def call_all() -> list[tuple[int, Any]]:
            async with aiohttp.ClientSession() as http:

                async def one() -> tuple[int, Any]:
                    url, body = invoke_url(gateway, "kong"), event("sleep", seconds=nap)
                    headers = signed(gateway, url, body)
                    async with http.post(url, data=body, headers=headers) as r:
                        return r.status, await r.json()

                return await asyncio.gather(*(one() for _ in range(6)))

        started = time.monotonic()
        results = asyncio.run(call_all())
        elapsed = time.monotonic() - started
        stats = gateway.stats()
    assert [status for status, _ in results] == [200] * 6
    assert all(body["slept"] == nap for _, body in results)
    assert elapsed >= 3 * nap  # six naps, two at a time: at least three rounds
    assert stats.max_busy == 2 and stats.max_queued >= 3
    assert len({body["pid"] for _, body in results}) == 2


def test_queued_invocations_start_by_priority_then_arrival(tmp_path: Path) -> None:
    """One slot, held by a sleeping invocation: what waits starts highest priority first,
    and in arrival order among equals (the pipe path from a handler carries a priority
    too: see test_invoke_via_gateway_from_a_handler_starts_another_invocation)."""
    path = tmp_path / "order.txt"
    with running_gateway(concurrency=1) as gateway:
        holder = gateway.submit("kong", event("sleep", seconds=0.5))
        wait_until(lambda: gateway.stats().busy == 1)
        names = ["low", "high", "mid-1", "mid-2", "none"]
        gateway.invoke_many(
            "kong",
            [event("append", path=str(path), text=name) for name in names],
            sync=False,
            priorities=[1, 9, 5, 5, 0],
        )
        holder.result(timeout=10)
        wait_until(lambda: path.exists() and len(path.read_text().split()) == len(names))
    assert path.read_text().split() == ["high", "mid-1", "mid-2", "low", "none"]


def test_an_invocation_past_the_priority_window_goes_before_newer_urgent_ones(
    tmp_path: Path,
) -> None:
    """Priorities reorder only what is younger than kong.gateway.priority_window_s: work
    of a less urgent run still starts, oldest first, however urgent the newer work."""
    path = tmp_path / "order.txt"
    window = {"kong.gateway.priority_window_s": 0.2}
    with dask.config.set(window), running_gateway(concurrency=1) as gateway:
        holder = gateway.submit("kong", event("sleep", seconds=0.6))
        wait_until(lambda: gateway.stats().busy == 1)
        append = [event("append", path=str(path), text=t) for t in ("old", "new")]
        gateway.invoke_many("kong", append[:1], sync=False, priorities=[0])
        time.sleep(0.3)  # "old" is now past the window
        gateway.invoke_many("kong", append[1:], sync=False, priorities=[9])
        holder.result(timeout=10)
        wait_until(lambda: path.exists() and len(path.read_text().split()) == 2)
    assert path.read_text().split() == ["old", "new"]


def test_invocations_from_a_handler_carry_their_priority(tmp_path: Path) -> None:
    """The children wait for the parent's slot (concurrency 1), then start by priority."""
    path = tmp_path / "order.txt"
    ranked = [(0, "last"), (7, "first"), (3, "second")]
    children = [(p, {"op": "append", "path": str(path), "text": t}) for p, t in ranked]
    with running_gateway(concurrency=1) as gateway:
        gateway.invoke("kong", event("fan_out_ranked", function="kong", children=children))
        wait_until(lambda: path.exists() and len(path.read_text().split()) == len(ranked))
    assert path.read_text().split() == ["first", "second", "last"]


def test_queue_skips_what_was_removed_in_either_order() -> None:
    """The queue's two views (priority heap, arrival FIFO) agree on what is queued: a
    removed invocation (cancelled) is never handed out, whichever view reaches it."""
    queue = InvocationQueue(priority_window_s=60.0)
    low, high, high_later = (
        PendingInvocation(new_request_id(), "kong", SMALL, b"{}", None, p) for p in (0, 5, 5)
    )
    for invocation in (low, high, high_later):
        queue.push(invocation)
    queue.remove(high)
    assert queue.oldest_first() == [low, high_later]
    assert [queue.pop() for _ in range(len(queue))] == [high_later, low]
    assert not queue


def test_settings_are_kong_gateway_with_overrides_by_name() -> None:
    """One resolution for every caller: an override wins by its setting's name, the rest
    comes from kong.gateway, and a misspelt name fails as a misspelt keyword would."""
    settings = GatewaySettings.from_config(HANDLER, keep_warm_s=3.0, resource_configs=[LARGE])
    assert settings.pool.keep_warm_s == 3.0
    assert settings.pool.stop_timeout_s == dask.config.get("kong.gateway.stop_timeout_s")
    assert settings.default_config == "large"  # the configured default is not served
    misspelt: dict[str, Any] = {"keep_warm": 3.0}
    with pytest.raises(TypeError, match="keep_warm"):
        GatewaySettings.from_config(HANDLER, **misspelt)
    with pytest.raises(ValueError, match="module:function"):
        GatewaySettings.from_config("no_function_here")


def test_idle_workers_exit_after_keep_warm() -> None:
    with running_gateway(keep_warm_s=0.3) as gateway:
        pid = json.loads(gateway.invoke("kong", event("echo")) or b"")["pid"]
        wait_until(lambda: pid_is_gone(pid) and gateway.stats().live_workers == 0, timeout_s=5)
        stats = gateway.stats()
        again = json.loads(gateway.invoke("kong", event("echo")) or b"")
    assert stats.expired_workers == 1
    assert again["cold_start"] is True and again["pid"] != pid


def test_cold_start_at_the_worker_cap_evicts_an_idle_worker_of_another_config() -> None:
    with running_gateway(concurrency=1) as gateway:
        small_pid = json.loads(gateway.invoke("kong-small", event("echo")) or b"")["pid"]
        large = json.loads(gateway.invoke("kong-large", event("echo")) or b"")
        wait_until(lambda: pid_is_gone(small_pid))
        stats = gateway.stats()
    assert large["cold_start"] is True
    assert stats.evicted_workers == 1
    assert stats.live_by_config == {"small": 0, "large": 1, "tight": 0}


def test_crash_mid_invocation_is_exit_error_and_gateway_keeps_serving(
    gateway: Gateway, lost: queue.Queue[tuple[str, bytes, int, str]]
) -> None:
    with pytest.raises(FunctionError) as info:
        gateway.invoke("kong", event("crash", code=3))
    assert info.value.error_type == "Runtime.ExitError"
    assert "exit status 3" in info.value.error_message
    crash = event("crash", code=4)
    gateway.invoke("kong-large", crash, sync=False)
    function, payload, code, request_id = lost.get(timeout=10)
    assert (function, payload, code) == ("kong-large", crash, 4) and request_id
    assert json.loads(gateway.invoke("kong", event("echo")) or b"")["event"] == {"op": "echo"}
    assert gateway.stats().workers_lost >= 2


def test_invocation_past_its_timeout_is_killed(gateway: Gateway) -> None:
    started = time.monotonic()
    with pytest.raises(FunctionError) as info:
        gateway.invoke("kong-tight", event("sleep", seconds=30))
    assert info.value.error_type == "Sandbox.Timedout"
    assert time.monotonic() - started < 5
    assert json.loads(gateway.invoke("kong-tight", event("echo")) or b"")["cold_start"] is True


def test_memory_limit_of_the_resource_config(gateway: Gateway) -> None:
    small = json.loads(gateway.invoke("kong-small", event("allocate", mb=16)) or b"")
    assert small["allocated_mb"] == 16
    with pytest.raises(FunctionError) as info:
        gateway.invoke("kong-small", event("allocate", mb=2 * SMALL.memory_mb))
    assert info.value.error_type in {"MemoryError", "Runtime.ExitError"}
    fits_large = json.loads(gateway.invoke("kong-large", event("allocate", mb=300)) or b"")
    assert fits_large["allocated_mb"] == 300


def test_invoke_via_gateway_from_a_handler_starts_another_invocation(
    gateway: Gateway, tmp_path: Path
) -> None:
    marker = tmp_path / "child-ran"
    before = gateway.stats().pipe_invocations
    child = {"op": "touch", "path": str(marker), "text": "child"}
    parent = gateway.invoke(
        "kong", event("fan_out", function="kong-large", child=child, wait_for=str(marker))
    )
    result = json.loads(parent or b"")
    assert result["invoked"] == "kong-large"
    assert result["child_seen"] is True  # the child ran while its parent was still busy
    wait_until(lambda: marker.read_text() == "child")
    assert gateway.stats().pipe_invocations == before + 1


def test_worker_stdout_is_logged_without_corrupting_frames(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dask_kong.gateway")
    result = json.loads(gateway.invoke("kong", event("echo", say="marker-7c1f")) or b"")
    assert result["event"]["say"] == "marker-7c1f"
    wait_until(lambda: "marker-7c1f" in caplog.text)


def test_handler_that_cannot_load_fails_invocations_with_import_error() -> None:
    with running_gateway(handler="tests.no_such_module:handle") as gateway:
        with pytest.raises(FunctionError) as info:
            gateway.invoke("kong", b"{}")
        wait_until(lambda: gateway.stats().live_workers == 0)  # the worker exits
    assert info.value.error_type == "Runtime.ImportModuleError"
    assert "tests.no_such_module" in info.value.error_message


def test_stop_ends_every_worker_including_busy_ones() -> None:
    with running_gateway(concurrency=3) as gateway:
        gateway.invoke_many("kong", [event("sleep", seconds=0.2)] * 3, sync=True)
        pids = gateway.worker_pids()
        gateway.invoke("kong", event("sleep", seconds=30), sync=False)
        wait_until(lambda: gateway.stats().busy == 1)
        started = time.monotonic()
        gateway.stop()
        assert time.monotonic() - started < 5
    assert len(pids) == 3 and all(pid_is_gone(pid) for pid in pids)


def test_cli_gateway_serves_and_exits_on_sigterm() -> None:
    command = [sys.executable, "-m", "dask_kong", "gateway", "--port", "0"]
    command += ["--handler", HANDLER, "--keep-warm", "30", "--concurrency", "1"]
    key = AccessKey.generate()
    process = subprocess.Popen(
        command,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **key.environment()},
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the CLI printed no URL within 30 s"
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        invoke = f"{url}/2015-03-31/functions/kong/invocations"
        headers = signed_headers(key, invoke, event("echo"))
        request = urllib.request.Request(invoke, data=event("echo"), headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            worker_pid = json.loads(response.read())["pid"]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert pid_is_gone(worker_pid)
