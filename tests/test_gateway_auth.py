"""Only callers with the key invoke the gateway: AWS SigV4 checked (issue #18).

Real aiobotocore clients and raw HTTP against a real gateway: unsigned, wrongly signed,
signed by another key, a body swapped under a valid signature, and a replay after the
allowed age are all refused with Lambda's 403 error shape, and logged without secrets.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from dask_kong.backends.processes.auth import GATEWAY_KEY_ENV, AccessKey, signed_headers
from dask_kong.backends.processes.gateway import Gateway, GatewayError
from dask_kong.backends.processes.resources import ResourceConfig
from dask_kong.backends.processes.settings import GatewaySettings
from dask_kong.security import Secret

HANDLER = "tests.gateway_handlers:handle"
ECHO = json.dumps({"op": "echo"}).encode()


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    settings = GatewaySettings.from_config(
        HANDLER,
        resource_configs=[ResourceConfig("small", memory_mb=256, cpus=1)],
        concurrency=1,
        credentials=AccessKey.generate(),
    )
    with Gateway(settings) as started:
        yield started


def invoke_url(gateway: Gateway) -> str:
    return f"{gateway.url}/2015-03-31/functions/kong/invocations"


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    """Status, headers and JSON body of a raw HTTP POST (errors included)."""
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def invoke_with(gateway: Gateway, key: AccessKey) -> Any:
    """Invoke echo through aiobotocore signing with `key`."""

    async def call() -> Any:
        async with get_session().create_client(
            "lambda",
            endpoint_url=gateway.url,
            region_name="eu-west-1",
            aws_access_key_id=key.access_key_id,
            aws_secret_access_key=key.secret.reveal(),
        ) as client:
            response = await client.invoke(FunctionName="kong", Payload=ECHO)
            return json.loads(await response["Payload"].read())

    return asyncio.run(call())


def assert_refused(status: int, headers: dict[str, str], body: Any, error_type: str) -> None:
    assert status == 403
    assert headers["x-amzn-ErrorType"] == error_type
    assert body["Type"] == "User" and body["message"] == body["Message"]


def test_aiobotocore_signing_with_the_gateway_key_is_served(gateway: Gateway) -> None:
    assert invoke_with(gateway, gateway.credentials)["event"] == {"op": "echo"}


def test_another_key_id_is_refused_as_unrecognized(gateway: Gateway) -> None:
    with pytest.raises(ClientError) as info:
        invoke_with(gateway, AccessKey.generate())
    assert info.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_the_right_key_id_with_a_wrong_secret_is_refused(gateway: Gateway) -> None:
    forged = AccessKey(gateway.credentials.access_key_id, Secret("not-the-secret-at-all"))
    with pytest.raises(ClientError) as info:
        invoke_with(gateway, forged)
    assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


def test_an_unsigned_request_is_refused_with_lambdas_error_shape(gateway: Gateway) -> None:
    status, headers, body = post(invoke_url(gateway), ECHO, {})
    assert_refused(status, headers, body, "MissingAuthenticationTokenException")


def test_a_body_swapped_under_a_valid_signature_is_refused(gateway: Gateway) -> None:
    url = invoke_url(gateway)
    headers = signed_headers(gateway.credentials, url, ECHO)
    evil = json.dumps({"op": "echo", "value": "swapped"}).encode()
    assert_refused(*post(url, evil, headers), "InvalidSignatureException")
    status, _, body = post(url, ECHO, headers)  # the signed body itself is served
    assert status == 200 and body["event"] == {"op": "echo"}


def test_a_replay_after_the_allowed_age_is_refused() -> None:
    settings = GatewaySettings.from_config(
        HANDLER, credentials=AccessKey.generate(), signature_max_age_s=1.0
    )
    with Gateway(settings) as strict:
        url = invoke_url(strict)
        headers = signed_headers(strict.credentials, url, ECHO)
        time.sleep(2.1)  # 1 s allowed; X-Amz-Date has one-second resolution
        status, response_headers, body = post(url, ECHO, headers)
    assert_refused(status, response_headers, body, "InvalidSignatureException")
    assert "Signature expired" in body["Message"]


def send_head(
    gateway: Gateway, headers: dict[str, str], body: bytes = b""
) -> tuple[int, dict[str, str], Any]:
    """Send an Invoke request's head (and `body`, often less than the Content-Length it
    announces) with http.client, then wait at most 10 s for the answer: a gateway that
    waited for the rest of the body would time out here."""
    address = urllib.parse.urlsplit(gateway.url)
    connection = http.client.HTTPConnection(str(address.hostname), address.port, timeout=10)
    try:
        connection.putrequest("POST", INVOKE_PATH, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        if body:
            connection.send(body)
        response = connection.getresponse()
        return response.status, dict(response.headers), json.loads(response.read())
    finally:
        connection.close()


INVOKE_PATH = "/2015-03-31/functions/kong/invocations"


@pytest.mark.parametrize("caller", ["unsigned", "another-key", "expired"])
def test_a_caller_without_the_key_is_refused_before_its_body_is_read(
    gateway: Gateway, caller: str
) -> None:
    """The head announces 5000 bytes of body and none follow: the refusal comes from
    the headers alone (before, the gateway read the body first, and so waited)."""
    url = invoke_url(gateway)
    key = gateway.credentials if caller == "expired" else AccessKey.generate()
    headers = {} if caller == "unsigned" else signed_headers(key, url, b"x" * 5000)
    if caller == "expired":
        headers["X-Amz-Date"] = "20200101T000000Z"
    headers["Content-Length"] = "5000"
    expected = {
        "unsigned": "MissingAuthenticationTokenException",
        "another-key": "UnrecognizedClientException",
        "expired": "InvalidSignatureException",
    }
    status, response_headers, body = send_head(gateway, headers)
    assert_refused(status, response_headers, body, expected[caller])
    assert response_headers["Connection"] == "close"  # the unread body is not drained


def test_an_oversize_body_is_refused_from_its_content_length_without_reading_it(
    gateway: Gateway,
) -> None:
    limit = gateway.settings.pool.max_sync_payload_bytes  # kong.gateway.max_sync_payload_bytes
    headers = signed_headers(gateway.credentials, invoke_url(gateway), b"")
    headers["Content-Length"] = str(limit + 1)
    status, response_headers, body = send_head(gateway, headers)
    assert status == 413 and response_headers["x-amzn-ErrorType"] == "RequestTooLargeException"
    assert f"smaller than {limit} bytes" in body["Message"]


def test_a_chunked_body_is_read_only_up_to_the_limit(gateway: Gateway) -> None:
    """No Content-Length: the gateway reads a chunked Event body until it passes
    kong.gateway.max_async_payload_bytes, then answers 413 (the rest is never sent)."""
    limit = gateway.settings.pool.max_async_payload_bytes
    headers = signed_headers(gateway.credentials, invoke_url(gateway), b"")
    headers.update({"Transfer-Encoding": "chunked", "X-Amz-Invocation-Type": "Event"})
    # one chunk announced far larger than the limit; just past the limit of it is sent
    head = f"{10 * limit:x}\r\n".encode()
    status, _, body = send_head(gateway, headers, head + b"x" * (limit + 1))
    assert status == 413 and f"smaller than {limit} bytes" in body["Message"]
    status, _, body = post(
        invoke_url(gateway), ECHO, signed_headers(gateway.credentials, invoke_url(gateway), ECHO)
    )
    assert status == 200 and body["event"] == {"op": "echo"}  # the gateway serves on


def test_refusals_are_logged_without_secrets(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    url = invoke_url(gateway)
    forged = AccessKey(gateway.credentials.access_key_id, Secret("wrong-secret-0123456789"))
    headers = signed_headers(forged, url, ECHO)
    with caplog.at_level(logging.WARNING, logger="dask_kong.gateway"):
        status, _, _ = post(url, ECHO, headers)
    assert status == 403
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused invocation" in logged and "InvalidSignatureException" in logged
    signature = headers["Authorization"].rpartition("Signature=")[2]
    for secret in (gateway.credentials.secret.reveal(), "wrong-secret-0123456789", signature):
        assert secret not in logged


def test_no_credentials_on_a_public_address_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    settings = GatewaySettings.from_config(HANDLER, host="0.0.0.0")
    assert settings.credentials is None
    with pytest.raises(GatewayError, match=r"refusing to serve 0\.0\.0\.0 without credentials"):
        Gateway(settings)
    loopback = Gateway(GatewaySettings.from_config(HANDLER))  # generates its own pair
    assert loopback.credentials.access_key_id.startswith("AKIA")
    worker_env = loopback.settings.pool.env
    assert worker_env[GATEWAY_KEY_ENV] == loopback.credentials.access_key_id
    assert "AWS_ACCESS_KEY_ID" not in worker_env  # the user's own stay the workers'
    assert loopback.credentials.secret.reveal() not in repr(loopback.settings)


def test_the_cli_refuses_to_serve_without_credentials() -> None:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-m", "dask_kong", "gateway", "--handler", HANDLER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "AWS_ACCESS_KEY_ID" in done.stderr


def test_a_sessions_own_gateway_refuses_unsigned_requests(kong_sessions: Any) -> None:
    session = kong_sessions("processes")
    gateway = session.backend.gateway
    assert gateway.credentials.access_key_id.startswith("AKIAKONG")
    url = f"{gateway.url}/2015-03-31/functions/kong/invocations"
    assert_refused(*post(url, ECHO, {}), "MissingAuthenticationTokenException")


def read_aws_key_id(_: Any) -> Any:
    import os

    return os.environ.get("AWS_ACCESS_KEY_ID")


def test_workers_keep_the_users_aws_credentials(
    redis_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The session's gateway key pair reaches its workers under kong's names: a task that
    reads S3 in a worker signs with the user's AWS credentials, as in the caller."""
    import dask

    from dask_kong import Kong

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUSERSOWNKEY")
    with Kong(backend="processes", store=redis_server.url, workers=1) as session:
        seen = dask.compute(dask.delayed(read_aws_key_id)(0), scheduler=session.get)
    assert seen == ("AKIAUSERSOWNKEY",)
