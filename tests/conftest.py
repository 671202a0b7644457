"""Shared fixtures. Everything that touches Redis uses a real, private redis-server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dask_kong.store.redis import RedisStore
from dask_kong.store.server import RedisServer


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
