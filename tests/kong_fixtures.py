"""Fixtures that run the correctness suite over every mode.

`kong` yields an open `Kong` session for each mode in MODES, so a test that takes it runs
once per mode. Sessions are shared by the whole test session (a worker process's cold
start is paid once) and closed at its end, which must leave no worker process behind.
Every mode that touches Redis uses the real, private redis-server of `redis_server`.
Every mode runs two workers at once, whatever the machine's cores: subtree batching is
sized by the concurrency, and tests count the invocations it makes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from dask_kong import Kong
from dask_kong.backends.processes.backend import HANDLER
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.backends.processes.settings import GatewaySettings
from dask_kong.store.server import RedisServer

MODES = ("embedded", "threads-redis", "processes")


def open_mode(mode: str, redis_url: str) -> Kong:
    if mode == "embedded":
        return Kong(backend="threads", store="memory", workers=2)
    if mode == "threads-redis":
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
    """mode -> its shared session, opened on first use."""
    sessions: dict[str, Kong] = {}

    def get(mode: str) -> Kong:
        if mode not in sessions:
            sessions[mode] = open_mode(mode, redis_server.url)
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
def kong(request: pytest.FixtureRequest, kong_sessions: Callable[[str], Kong]) -> Kong:
    """An open session of each mode."""
    return kong_sessions(request.param)


@pytest.fixture
def lambda_gateway(redis_server: RedisServer) -> Iterator[Gateway]:
    """A local gateway that serves kong's handler as a Lambda function, for the lambda
    backend (aiobotocore at its endpoint_url); its workers use the session's Redis."""
    env = {"DASK_KONG__STORE__URL": redis_server.url}
    gateway = Gateway(GatewaySettings.from_config(HANDLER, env=env, keep_warm_s=10.0)).start()
    pids: list[int] = []
    try:
        yield gateway
    finally:
        pids = gateway.worker_pids()
        gateway.stop()
        assert not [p for p in pids if pid_alive(p)]
