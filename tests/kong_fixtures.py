"""Fixtures that run the correctness suite over every mode.

`kong` yields an open `Kong` session for each mode in MODES, so a test that takes it runs
once per mode. Sessions are shared by the whole test session (a worker process's cold
start is paid once) and closed at its end, which must leave no worker process behind.
Every mode that touches Redis uses the real, private redis-server of `redis_server`; the
cluster modes (CLUSTER_MODES, chosen by representative tests with `on_a_cluster_too` or
`session_of`) the private three-shard Redis Cluster of `redis_cluster`.
Every mode runs two workers at once, whatever the machine's cores: subtree batching is
sized by the concurrency, and tests count the invocations it makes.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator

import dask.config
import pytest

from dask_kong import Kong
from dask_kong.backends.processes.auth import AccessKey
from dask_kong.backends.processes.backend import HANDLER
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.backends.processes.settings import GatewaySettings
from dask_kong.security import KEY_ENV
from dask_kong.store.server import LocalRedisCluster, RedisServer

MODES = ("embedded", "threads-redis", "processes")
#: The Redis modes again, on a private three-shard Redis Cluster (tests/cluster_fixtures.py),
#: opened by one node's URL as a user would. Not in MODES, so the suite does not double:
#: a representative test asks for them with `on_a_cluster_too`, or by name.
CLUSTER_MODES = ("threads-cluster", "processes-cluster")
ALL_MODES = (*MODES, *CLUSTER_MODES)


def on_a_cluster_too(*cluster_modes: str) -> pytest.MarkDecorator:
    """Runs a test that takes `kong` in every mode of MODES and in `cluster_modes`."""
    unknown = set(cluster_modes) - set(CLUSTER_MODES)
    if unknown:
        raise ValueError(f"not cluster modes: {sorted(unknown)}; known: {CLUSTER_MODES}")
    return pytest.mark.parametrize("kong", [*MODES, *cluster_modes], indirect=True)


#: Runs a test that takes `kong` in every mode, both cluster modes included.
ON_A_CLUSTER_TOO = on_a_cluster_too(*CLUSTER_MODES)


def open_mode(mode: str, redis_url: str) -> Kong:
    if mode == "embedded":
        return Kong(backend="threads", store="memory", workers=2)
    if mode in ("threads-redis", "threads-cluster"):
        return Kong(backend="threads", store=redis_url, workers=2)
    return Kong(backend="processes", store=redis_url, workers=2, keep_warm_s=30.0)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="session")
def kong_sessions(redis_server: RedisServer) -> Iterator[Callable[[str], Kong]]:
    """mode -> its shared session, opened on first use (MODES)."""
    yield from shared_sessions(redis_server.url)


@pytest.fixture(scope="session")
def cluster_kong_sessions(redis_cluster: LocalRedisCluster) -> Iterator[Callable[[str], Kong]]:
    """mode -> its shared session on the session's Redis Cluster (CLUSTER_MODES). Closed
    before the cluster stops: it depends on `redis_cluster`."""
    yield from shared_sessions(redis_cluster.url)


def session_of(request: pytest.FixtureRequest, mode: str) -> Kong:
    """The shared session of `mode`, one of ALL_MODES: a cluster mode starts the cluster
    on first use, so a run without one never pays for it."""
    fixture = "cluster_kong_sessions" if mode in CLUSTER_MODES else "kong_sessions"
    sessions: Callable[[str], Kong] = request.getfixturevalue(fixture)
    return sessions(mode)


def shared_sessions(redis_url: str) -> Iterator[Callable[[str], Kong]]:
    """Yields mode -> its session on `redis_url`, opened on first use; then closes them
    all and checks that no worker process is left."""
    sessions: dict[str, Kong] = {}

    def get(mode: str) -> Kong:
        if mode not in sessions:
            sessions[mode] = open_mode(mode, redis_url)
        return sessions[mode]

    yield get
    worker_pids = []
    for session in sessions.values():
        gateway = getattr(session.backend, "gateway", None)
        if gateway is not None:
            worker_pids.extend(gateway.worker_pids())
        session.close()
    assert not [p for p in worker_pids if pid_alive(p)], "worker processes left after close"


@pytest.fixture(params=MODES)
def kong(request: pytest.FixtureRequest) -> Kong:
    """An open session of each mode (of ALL_MODES with `ON_A_CLUSTER_TOO`)."""
    return session_of(request, request.param)


@pytest.fixture
def lambda_gateway(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """A local gateway that serves kong's handler as a Lambda function, for the lambda
    backend (aiobotocore at its endpoint_url); its workers use the session's Redis."""
    yield from serve_lambda(redis_server.url, monkeypatch)


@pytest.fixture
def cluster_lambda_gateway(
    redis_cluster: LocalRedisCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    """`lambda_gateway` whose workers use the session's Redis Cluster."""
    yield from serve_lambda(redis_cluster.url, monkeypatch)


def lambda_session(gateway: Gateway, store_url: str) -> Kong:
    """A session on the lambda backend: aiobotocore against the local `gateway`, its
    store at `store_url`."""
    return Kong(
        backend="lambda",
        store=store_url,
        endpoint_url=gateway.url,
        function=gateway.default_function,
    )


def serve_lambda(store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Gateway]:
    """Yields a started gateway serving kong's handler, its workers' store at
    `store_url`; then stops it and checks that no worker process is left. Its workers
    share the signing key, configured as a Lambda deployment configures it
    (kong.security.key for the client, the same value in the function's environment),
    and the client signs its Invoke calls with the gateway's key pair, from the
    environment as aiobotocore reads it."""
    access_key = AccessKey.generate()
    for name, value in access_key.environment().items():
        monkeypatch.setenv(name, value)
    key = secrets.token_hex(32)
    env = {"DASK_KONG__STORE__URL": store_url, KEY_ENV: key}
    with dask.config.set({"kong.security.key": key}):
        gateway = Gateway(GatewaySettings.from_config(HANDLER, env=env, keep_warm_s=10.0)).start()
        pids: list[int] = []
        try:
            yield gateway
        finally:
            pids = gateway.worker_pids()
            gateway.stop()
            assert not [p for p in pids if pid_alive(p)]
