"""Shared fixtures. Everything that touches Redis uses a real, private redis-server."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from dask_kong import security
from dask_kong.store.redis import RedisStore
from dask_kong.store.server import RedisServer


@pytest.fixture(scope="session", autouse=True)
def client_signing_key() -> None:
    """The test process is a client: it has the signing key a session would generate,
    also for tests that use a store directly (tests that refuse or change keys set
    their own with dask.config)."""
    security.ensure_key()


@pytest.fixture(scope="session", autouse=True)
def no_redis_server_left() -> Iterator[None]:
    """After every other fixture of the test session is torn down (an autouse session
    fixture is set up first, so it ends last): no redis-server this process started may
    still run. One that does is ended by its PID, and the suite fails naming it."""
    yield
    left = child_redis_servers()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"redis-server processes left after the suite: {left} (now killed)"


def child_redis_servers() -> list[int]:
    """PIDs of the live (not zombie) redis-server children of this process, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if comm == "redis-server" and int(ppid) == os.getpid() and state != "Z":
            found.append(int(entry))
    return found


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the whole session (starting one takes ~20 ms, but
    tests share it); tests keep apart by using distinct run ids."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_store(redis_server: RedisServer) -> Iterator[RedisStore]:
    """A fresh `RedisStore` (own connection pool) on the session's server."""
    store = RedisStore(redis_server.url)
    try:
        yield store
    finally:
        store.close()


# A real three-shard Redis Cluster and a store on it (issue #17).
from .cluster_fixtures import cluster_store, redis_cluster  # noqa: E402, F401

# The `kong` fixture (one session per mode: embedded, threads+Redis, processes+Redis).
from .kong_fixtures import (  # noqa: E402, F401
    cluster_kong_sessions,
    cluster_lambda_gateway,
    kong,
    kong_sessions,
    lambda_gateway,
)
