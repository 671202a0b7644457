"""End-to-end latency of the local gateway: one cold invocation, then warm ones through
the in-process fast path and over HTTP.

    python -m benchmarks.gateway_latency --n 1000 [--handler module:function] [--json]

Starts a gateway (settings from `kong.gateway`), retires its idle workers so that the
first invocation starts cold, then times `n` synchronous invocations each way and
prints milliseconds: the cold one, the gateway's mean cold start, and mean, p50 and p99
of each warm series. The default handler is `echo` below, which answers at once; its
module imports only the standard library when a worker loads it, so the cold start is
the gateway's own (interpreter start plus worker loop). Pass
`--handler dask_kong.handler:lambda_handler` (wherever kong's worker handler lives) to
time kong's own cold start instead.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the gateway is imported when measuring, not when a worker loads echo
    from dask_kong.backends.processes.gateway import Gateway

HANDLER = "benchmarks.gateway_latency:echo"


def echo(event: Any, context: Any) -> Any:
    """The handler timed by default: the event back, nothing else."""
    return event


def percentiles(samples_s: list[float], prefix: str) -> dict[str, float]:
    """Mean, p50 and p99 of `samples_s`, in milliseconds, named `<prefix>_<stat>_ms`."""
    ordered = sorted(samples_s)
    return {
        f"{prefix}_mean_ms": statistics.fmean(ordered) * 1000,
        f"{prefix}_p50_ms": ordered[len(ordered) // 2] * 1000,
        f"{prefix}_p99_ms": ordered[min(int(len(ordered) * 0.99), len(ordered) - 1)] * 1000,
    }


def time_http_invocations(gateway: Gateway, function: str, payload: bytes, n: int) -> list[float]:
    """Seconds per synchronous invocation over HTTP, on one keep-alive connection (what
    an SDK client reuses), so connection set-up is not counted in each."""
    from dask_kong import config
    from dask_kong.backends.processes.auth import signed_headers
    from dask_kong.backends.processes.gateway import (
        HEADER_FUNCTION_ERROR,
        HEADER_INVOCATION_TYPE,
        INVOKE_ROUTE,
        GatewayError,
        InvocationType,
    )

    url = urllib.parse.urlsplit(gateway.url)
    path = INVOKE_ROUTE.format(name=urllib.parse.quote(function, safe=""))
    headers = {HEADER_INVOCATION_TYPE: InvocationType.REQUEST_RESPONSE.value}
    # Signed once: the gateway accepts a signature for kong.gateway.signature_max_age_s,
    # and checking it is part of what each invocation costs.
    headers = signed_headers(gateway.credentials, gateway.url + path, payload, headers)
    timeout = float(config.get("gateway.sync_wait_s"))
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    samples = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            connection.request("POST", path, body=payload, headers=headers)
            response = connection.getresponse()
            response.read()
            samples.append(time.perf_counter() - started)
            if response.status != 200 or response.getheader(HEADER_FUNCTION_ERROR):
                raise GatewayError(f"latency probe failed with HTTP {response.status}")
    finally:
        connection.close()
    return samples


def time_fast_path_invocations(
    gateway: Gateway, function: str, payload: bytes, n: int
) -> list[float]:
    """Seconds per synchronous invocation through the gateway's in-process fast path."""
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        gateway.invoke(function, payload)
        samples.append(time.perf_counter() - started)
    return samples


def time_cold_invocation(gateway: Gateway, function: str, payload: bytes) -> tuple[float, bool]:
    """Seconds of one invocation after every idle worker was retired, and whether the
    gateway says it started cold."""
    from dask_kong import config
    from dask_kong.backends.processes.gateway import FunctionError

    gateway.retire_idle_workers()
    started = time.perf_counter()
    wait_s = float(config.get("gateway.sync_wait_s"))
    outcome = gateway.submit(function, payload).result(timeout=wait_s)
    elapsed = time.perf_counter() - started
    if outcome.function_error:
        raise FunctionError(outcome.request_id, outcome.payload)
    return elapsed, bool(outcome.cold_start)


def measure_latency(
    gateway: Gateway, n: int, *, function: str | None = None, payload: bytes = b"{}"
) -> dict[str, float]:
    """End-to-end latency of synchronous invocations: one cold (idle workers retired
    first), then `n` warm through the fast path and `n` warm over HTTP. Milliseconds.

    The handler should answer `payload` at once (an echo); its own time is included.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    function = function or gateway.default_function
    cold_s, was_cold = time_cold_invocation(gateway, function, payload)
    fast = time_fast_path_invocations(gateway, function, payload, n)
    http_samples = time_http_invocations(gateway, function, payload, n)
    return {
        "n": float(n),
        "cold_invoke_ms": cold_s * 1000,
        "cold_was_cold": float(was_cold),
        "cold_start_mean_ms": gateway.stats().cold_start_mean_s * 1000,
        **percentiles(fast, "warm_fast_path"),
        **percentiles(http_samples, "warm_http"),
    }


def main(argv: list[str] | None = None) -> int:
    from dask_kong.backends.processes.gateway import Gateway
    from dask_kong.backends.processes.settings import GatewaySettings

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="warm invocations per path")
    parser.add_argument("--handler", default=HANDLER, help="module:function to invoke")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    with Gateway(GatewaySettings.from_config(args.handler)) as gateway:
        result = measure_latency(gateway, args.n)
    if args.json:
        print(json.dumps(result))
    else:
        for name, value in result.items():
            print(f"{name:28} {value:10.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
