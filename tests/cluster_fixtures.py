"""Fixtures for a real Redis Cluster: three private `redis-server` processes in cluster
mode (`LocalRedisCluster`), started once per test session on first use and stopped by
PID at its end. Forming a cluster takes ~2.5 s (Redis keeps a fresh primary out of
service for 2 s), so every test that needs one shares it; tests keep apart by run id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dask_kong.store.cluster import RedisClusterStore
from dask_kong.store.redis import connect
from dask_kong.store.server import LocalRedisCluster

CLUSTER_SHARDS = 3


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A private three-shard Redis Cluster for the whole session."""
    cluster = LocalRedisCluster(CLUSTER_SHARDS)
    pids = cluster.pids
    try:
        yield cluster
    finally:
        cluster.stop()
        assert not [pid for pid in pids if _alive(pid)], "cluster nodes left after stop"


@pytest.fixture
def cluster_store(redis_cluster: LocalRedisCluster) -> Iterator[RedisClusterStore]:
    """A fresh store on the session's cluster, through the same door users take: the URL
    of one node, recognised as a cluster."""
    store = connect(redis_cluster.url)
    assert isinstance(store, RedisClusterStore)
    try:
        yield store
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
