"""The start-up probe of a Lambda deployment: one synchronous invocation that proves the
function exists, runs a dask-kong this client can talk to, and reaches the same store.

The client opens a probe run in its store and writes a random marker there; the worker
reads it back through its own store (its DASK_KONG__STORE__URL). A worker on another
Redis, or none, or one that cannot import its handler, is named here in seconds, instead
of leaving the first computation to wait for a stall. `LambdaBackend` probes at start
(`kong.lambda.probe`); `python -m dask_kong probe` runs the same check as a deploy smoke
test.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from ... import __version__
from ...constants import PROBE_KEY
from ...errors import MisconfiguredError
from ...invocation.payload import PAYLOAD_VERSION
from ...invocation.transports import LambdaTransport
from ...store.base import Store


@dataclass(frozen=True)
class ProbeResult:
    """What the probe learned: the function's dask-kong version and how long it took."""

    function: str
    kong_version: str
    seconds: float


def probe_function(store: Store, transport: LambdaTransport, function: str) -> ProbeResult:
    """Invoke `function` once, synchronously; `MisconfiguredError` naming what is wrong
    (missing function, handler failure, other payload version, other store)."""
    run_id = f"probe-{secrets.token_hex(8)}"
    token = secrets.token_hex(16)
    started = time.monotonic()
    store.open_run(run_id)
    try:
        store.commit(run_id, {PROBE_KEY: token})
        answer = invoke_probe(transport, function, run_id)
    finally:
        store.delete_run(run_id)
    check_answer(function, answer, token, store)
    return ProbeResult(function, str(answer.get("kong")), time.monotonic() - started)


def invoke_probe(transport: LambdaTransport, function: str, run_id: str) -> dict[str, Any]:
    """The worker's answer, or `MisconfiguredError` when there is none."""
    payload = json.dumps({"kong-probe": True, "run": run_id}).encode()
    try:
        body, function_error = transport.invoke_sync(function, payload)
    except Exception as exc:  # ResourceNotFoundException, no endpoint, no credentials
        raise MisconfiguredError(
            f"Lambda function {function!r} could not be invoked: {type(exc).__name__}: {exc}"
        ) from exc
    if function_error:
        raise MisconfiguredError(
            f"Lambda function {function!r} failed to start an invocation ({function_error}): "
            f"{body[:2000].decode(errors='replace')}"
        )
    answer = json.loads(body) if body else None
    if not isinstance(answer, dict) or "kong" not in answer:
        raise MisconfiguredError(
            f"Lambda function {function!r} does not run dask_kong.handler.lambda_handler "
            f"(its answer: {body[:200]!r})"
        )
    return answer


def check_answer(function: str, answer: dict[str, Any], token: str, store: Store) -> None:
    where = getattr(store, "address", "the client's store")
    if answer.get("payload") != PAYLOAD_VERSION:
        raise MisconfiguredError(
            f"Lambda function {function!r} runs dask-kong {answer.get('kong')} (payload "
            f"v{answer.get('payload')}); this client is {__version__} (payload "
            f"v{PAYLOAD_VERSION}): deploy the same version"
        )
    if "SignatureError" in str(answer.get("store_error", "")):
        raise MisconfiguredError(
            f"Lambda function {function!r} does not share the client's signing key: "
            f"{answer['store_error']} (set DASK_KONG__SECURITY__KEY in the function's "
            "environment to the client's kong.security.key)"
        )
    if "store_error" in answer:
        raise MisconfiguredError(
            f"Lambda function {function!r} cannot reach its store: {answer['store_error']} "
            f"(the client uses {where}; set DASK_KONG__STORE__URL in the function's "
            "environment)"
        )
    if answer.get("marker") != token:
        raise MisconfiguredError(
            f"Lambda function {function!r} reaches another store than the client's "
            f"({where}): its DASK_KONG__STORE__URL must name the same Redis"
        )
