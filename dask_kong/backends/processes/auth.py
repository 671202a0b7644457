"""Who may invoke the local gateway: AWS Signature Version 4, checked against one key pair.

AWS Lambda runs only Invoke calls signed (SigV4) by a principal IAM allows; the gateway
is as strict with the one access key pair it is configured with (`AccessKey`): the
pair aiobotocore signs with, from `kong.gateway.access_key_id/secret_access_key` or the
usual `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, or one generated for a gateway a
session starts for itself. The check has two stages, so that a caller without the key
never makes the gateway read a body: `check_headers` (the Authorization header's shape,
the key id, X-Amz-Date within the allowed skew) before the body is read, `check_body`
after, which recomputes the request's signature with botocore's own signer (canonical
request, string to sign, derived key) over exactly the headers the caller signed, and
compares in constant time: no hand-rolled crypto, and whatever aiobotocore sends
verifies.

Refusals use Lambda's error types: no Authorization header ->
`MissingAuthenticationTokenException`, a malformed one -> `IncompleteSignatureException`,
another key id -> `UnrecognizedClientException`, a wrong signature, a body that is not
the signed one, or an X-Amz-Date outside `kong.gateway.signature_max_age_s` ->
`InvalidSignatureException`; all 403.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from botocore.auth import SIGV4_TIMESTAMP, SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from ... import config
from ...security import Secret

ALGORITHM = "AWS4-HMAC-SHA256"
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
GATEWAY_KEY_ENV = "DASK_KONG__GATEWAY__ACCESS_KEY_ID"
GATEWAY_SECRET_ENV = "DASK_KONG__GATEWAY__SECRET_ACCESS_KEY"
_CONTENT_SHA256 = "x-amz-content-sha256"


@dataclass(frozen=True)
class AccessKey:
    """An access key pair; the secret never shows in a repr."""

    #: the public half, sent in every request's Credential scope (safe to log)
    access_key_id: str
    #: the signing secret
    secret: Secret

    @classmethod
    def generate(cls) -> AccessKey:
        """A fresh random pair, shaped like AWS's (an `AKIA...` id, a 40-character secret)."""
        return cls("AKIAKONG" + secrets.token_hex(6).upper(), Secret(secrets.token_urlsafe(30)))

    @classmethod
    def from_config(cls) -> AccessKey | None:
        """`kong.gateway.access_key_id`/`secret_access_key`, else the AWS environment
        variables; None when neither gives both halves."""
        key_id = config.get("gateway.access_key_id") or os.environ.get(ACCESS_KEY_ENV)
        secret = config.get("gateway.secret_access_key") or os.environ.get(SECRET_KEY_ENV)
        if not key_id or not secret:
            return None
        return cls(str(key_id), Secret(str(secret)))

    def environment(self) -> dict[str, str]:
        """The pair as the AWS SDKs read it from the environment."""
        return {ACCESS_KEY_ENV: self.access_key_id, SECRET_KEY_ENV: self.secret.reveal()}

    def kong_environment(self) -> dict[str, str]:
        """The pair as kong's config reads it (`kong.gateway.*`) from the environment:
        for workers, whose own AWS credentials (a task reading S3) must stay theirs."""
        return {
            GATEWAY_KEY_ENV: self.access_key_id,
            GATEWAY_SECRET_ENV: self.secret.reveal(),
        }


class Refusal(NamedTuple):
    """Why a request is refused: Lambda's error type and message (no secret in either)."""

    error_type: str
    message: str


class SignedRequest(NamedTuple):
    """What a request's SigV4 headers say, once `check_headers` accepted them."""

    #: the names of the headers the caller signed (lower case, `host` among them)
    signed: list[str]
    #: the credential scope's region and service (`us-east-1`, `lambda`)
    region: str
    service: str
    #: the request's X-Amz-Date
    amz_date: str
    #: the signature the caller sent (hex)
    signature: str


def check_headers(
    key: AccessKey, headers: Mapping[str, str], max_age_s: float
) -> Refusal | SignedRequest:
    """What can be checked before the body is read: an Authorization header of the
    right shape, `key`'s key id, an X-Amz-Date within `max_age_s` of now, and every
    signed header present. A `Refusal`, or what `check_body` then needs."""
    authorization = headers.get("Authorization")
    if not authorization:
        return Refusal("MissingAuthenticationTokenException", "Missing Authentication Token")
    fields = _authorization_fields(authorization)
    amz_date = headers.get("X-Amz-Date", "")
    scope = fields.get("Credential", "").split("/")
    signed = [h for h in fields.get("SignedHeaders", "").split(";") if h]
    if len(scope) != 5 or "host" not in signed or not fields.get("Signature") or not amz_date:
        return Refusal(
            "IncompleteSignatureException",
            f"Authorization must be {ALGORITHM} with Credential, SignedHeaders (host "
            "included) and Signature, and the request must carry X-Amz-Date",
        )
    key_id, day, region, service, _ = scope
    scope_refusal = _scope_refusal(key, key_id) or _date_refusal(amz_date, day, max_age_s)
    if scope_refusal is not None:
        return scope_refusal
    missing = [h for h in signed if h not in headers]
    if missing:
        return Refusal("InvalidSignatureException", f"signed headers missing: {missing}")
    return SignedRequest(signed, region, service, amz_date, fields["Signature"])


def check_body(
    key: AccessKey,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    signed: SignedRequest,
) -> Refusal | None:
    """None when `signed.signature` (headers accepted by `check_headers`) is `key`'s
    SigV4 signature of this request with this body (`url` as received: scheme, Host,
    raw path and query); else why not."""
    claimed = headers.get(_CONTENT_SHA256)
    if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
        return Refusal("InvalidSignatureException", "the body is not the one that was signed")
    request = AWSRequest(method=method, url=url, data=body)
    for name in signed.signed:
        request.headers[name] = headers[name]
    request.context["timestamp"] = signed.amz_date
    expected = _signature(key, request, signed.service, signed.region)
    if not hmac.compare_digest(expected.encode(), signed.signature.encode()):
        return Refusal(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method.",
        )
    return None


def check_signature(
    key: AccessKey,
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    max_age_s: float,
) -> Refusal | None:
    """Both checks at once (`check_headers`, then `check_body`): for callers that hold
    the body already."""
    signed = check_headers(key, headers, max_age_s)
    if isinstance(signed, Refusal):
        return signed
    return check_body(key, method, url, headers, body, signed)


def _signature(key: AccessKey, request: AWSRequest, service: str, region: str) -> str:
    """The signature `key` gives `request` (its headers: exactly the signed ones), by
    botocore's signer."""
    signer = SigV4Auth(Credentials(key.access_key_id, key.secret.reveal()), service, region)
    canonical = signer.canonical_request(request)
    signature: str = signer.signature(signer.string_to_sign(request, canonical), request)
    return signature


def _authorization_fields(authorization: str) -> dict[str, str]:
    """`Credential`, `SignedHeaders` and `Signature` of a SigV4 Authorization header
    (empty when it is of another algorithm)."""
    algorithm, _, rest = authorization.partition(" ")
    if algorithm != ALGORITHM:
        return {}
    fields = {}
    for part in rest.split(","):
        name, _, value = part.strip().partition("=")
        fields[name] = value
    return fields


def _scope_refusal(key: AccessKey, key_id: str) -> Refusal | None:
    """A refusal when the request was signed with another key id than `key`'s."""
    if hmac.compare_digest(key_id.encode(), key.access_key_id.encode()):
        return None
    return Refusal(
        "UnrecognizedClientException", "The security token included in the request is invalid."
    )


def _date_refusal(amz_date: str, scope_day: str, max_age_s: float) -> Refusal | None:
    """A refusal when X-Amz-Date is malformed, disagrees with the scope's day, or is
    further than `max_age_s` from now (a replay of an old request, or a skewed clock)."""
    try:
        signed_at = datetime.datetime.strptime(amz_date, SIGV4_TIMESTAMP).replace(
            tzinfo=datetime.UTC
        )
    except ValueError:
        return Refusal("IncompleteSignatureException", f"X-Amz-Date {amz_date!r} is malformed")
    if scope_day != amz_date[:8]:
        return Refusal(
            "InvalidSignatureException", "the credential scope's day is not X-Amz-Date's"
        )
    age = abs((datetime.datetime.now(datetime.UTC) - signed_at).total_seconds())
    if age > max_age_s:
        return Refusal(
            "InvalidSignatureException",
            f"Signature expired: X-Amz-Date {amz_date} is {age:.0f} s from the gateway's "
            f"clock (at most {max_age_s:.0f} s allowed)",
        )
    return None


def signed_headers(
    key: AccessKey,
    url: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    region: str = "us-east-1",
) -> dict[str, str]:
    """`headers` plus the SigV4 ones (Authorization, X-Amz-Date) that sign a POST of
    `body` to `url` with `key`, as aiobotocore would: for callers that speak HTTP
    themselves (raw HTTP clients, the latency benchmark)."""
    request = AWSRequest(method="POST", url=url, data=body, headers=dict(headers or {}))
    SigV4Auth(Credentials(key.access_key_id, key.secret.reveal()), "lambda", region).add_auth(
        request
    )
    return dict(request.headers.items())
