"""Serverless behaviour: workers in other processes, through Redis and the gateway."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask
import dask.array as da
import numpy as np
import pytest

from dask_kong import Kong, last_run
from dask_kong.backends.aws_lambda.backend import LambdaBackend
from dask_kong.backends.processes import backend as backend_module
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.errors import SerializationError, WorkerLostError
from dask_kong.planning.history import Metric
from dask_kong.store.server import LocalRedisCluster, RedisServer

from .kong_fixtures import lambda_session, pid_alive, session_of

if TYPE_CHECKING:
    from dask_kong.dag import DAG
    from dask_kong.planning.plan import Plan, PlanningContext


@pytest.fixture
def processes(kong_sessions: Callable[[str], Kong]) -> Kong:
    return kong_sessions("processes")


@pytest.fixture(params=["processes", "processes-cluster"])
def processes_too_on_a_cluster(request: pytest.FixtureRequest) -> Kong:
    """The shared worker-process session, and its twin on the Redis Cluster."""
    return session_of(request, request.param)


def die(value: int) -> int:
    os._exit(3)


def inc(value: int) -> int:
    return value + 1


def test_dead_worker_fails_the_run_naming_the_task(processes_too_on_a_cluster: Kong) -> None:
    processes = processes_too_on_a_cluster
    """A task that kills its worker every time: invoked again until kong.run.max_attempts
    (3), then the run fails naming the task, its attempts and the cause."""
    dsk = {"a": (inc, 1), "b": (die, "a"), "c": (inc, "b")}
    started = time.monotonic()
    # the branch starts at 'a' and goes on to 'b' in the same worker, which dies in 'b':
    # the error names 'b' (the task it was running), its branch's start and the cause
    lost = r"task 'b' lost its worker 3 times.*starts at task 'a'.*code 3"
    with pytest.raises(WorkerLostError, match=lost):
        processes.get(dsk, "c")
    assert time.monotonic() - started < 60  # three cold starts, on a busy machine
    assert processes.store.run_keys(processes.last_run_id or "") == []
    assert processes.get({"a": (inc, 1)}, "a") == 2  # the gateway replaced the worker


def test_unpicklable_task_is_named(processes: Kong) -> None:
    lock = threading.Lock()
    dsk = {"a": (inc, 1), "b": (lambda v, lk: v, "a", lock)}
    with pytest.raises(SerializationError, match="task 'b'"):
        processes.get(dsk, "b")


def test_unpicklable_output_fails_with_serialization_error(processes: Kong) -> None:
    dsk = {"a": (threading.Lock,), "b": (lambda v: 1, "a"), "c": (lambda v: 2, "a")}
    with pytest.raises(SerializationError):
        processes.get(dsk, ["b", "c"])


def test_tree_reduction_with_4096_leaves(processes: Kong) -> None:
    x = da.arange(4096, chunks=1, dtype="f8")
    assert x.sum(split_every=2).compute(scheduler=processes.get) == 4096 * 4095 / 2
    summary = last_run()
    assert summary is not None and summary.tasks >= 4096


@pytest.mark.filterwarnings("ignore::dask.array.core.PerformanceWarning")
def test_gemm_with_over_1000_tasks_and_embedded_chunks(processes: Kong) -> None:
    data = np.random.default_rng(0).random((320, 320))
    x = da.from_array(data, chunks=32)  # 100 chunks embedded in the graph as constants
    y = x @ x
    assert len(y.__dask_graph__()) > 1000
    np.testing.assert_allclose(y.compute(scheduler=processes.get), data @ data)


def test_large_constants_are_fetched_only_by_their_readers(processes: Kong) -> None:
    data = np.random.default_rng(1).random((512, 512))  # 8 chunks of 256 KB
    x = da.from_array(data, chunks=(64, 512))
    sums = [x.blocks[i].sum() for i in range(8)]
    got = dask.compute(*sums, scheduler=processes.get)
    np.testing.assert_allclose(got, [data[i * 64 : (i + 1) * 64].sum() for i in range(8)])
    summary = last_run()
    assert summary is not None
    # every worker read only its own chunk: the bytes read are one copy of the data
    assert summary.bytes_read - summary.client_bytes_read < 1.2 * data.nbytes


def test_first_tasks_of_invocations_report_their_start_up(processes: Kong) -> None:
    """Every invocation's first task measures its start-up (invocation to start, less
    any wait for a concurrency slot), and the history keeps them for the planners."""
    dsk: dict[str, Any] = {f"x{i}": (inc, i) for i in range(8)}
    dsk["total"] = (sum, [f"x{i}" for i in range(8)])
    assert processes.get(dsk, "total") == sum(range(1, 9))
    summary = last_run()
    assert summary is not None
    started = [m for m in summary.task_metrics.values() if m.startup_s > 0]
    assert len(started) == summary.invocations
    assert all(m.startup_s < 30 for m in started)
    stats = processes.history.resource_stats([started[0].resource])[started[0].resource]
    assert stats.count(Metric.STARTUP_S) >= len(started)


def test_finalize_runs_in_the_client(processes: Kong) -> None:
    """dask's finalize task (joining the chunks) runs in the client: the chunks cross the
    store once instead of twice (to a joining worker, then joined back to the client)."""
    x = da.random.default_rng(3).random((1024, 1024), chunks=256)
    expected = x.compute(scheduler="sync")
    np.testing.assert_array_equal(x.compute(scheduler=processes.get), expected)
    in_client = last_run()
    with dask.config.set({"kong.run.finalize_in_client": False}):
        np.testing.assert_array_equal(x.compute(scheduler=processes.get), expected)
    in_worker = last_run()
    assert in_client is not None and in_worker is not None
    assert not any(str(k).startswith("finalize-") for k in in_client.dag.keys)
    assert any(str(k).startswith("finalize-") for k in in_worker.dag.keys)
    assert in_client.client_bytes_read > expected.nbytes  # the 16 chunks
    moved = in_worker.bytes_read + in_worker.bytes_written
    assert in_client.bytes_read + in_client.bytes_written < 0.6 * moved


def test_lambda_backend_end_to_end_through_aiobotocore(
    lambda_gateway: Gateway, redis_server: RedisServer
) -> None:
    run_on_lambda(lambda_gateway, redis_server.url)


def test_lambda_backend_end_to_end_on_a_redis_cluster(
    cluster_lambda_gateway: Gateway, redis_cluster: LocalRedisCluster
) -> None:
    """Lambda workers find the cluster from one node's URL, as on ElastiCache."""
    run_on_lambda(cluster_lambda_gateway, redis_cluster.url)


def run_on_lambda(lambda_gateway: Gateway, store_url: str) -> None:
    """A tree sum and a GEMM on the lambda backend (aiobotocore at the gateway), its
    store at `store_url`: right results, invocations over HTTP, no key left."""
    with lambda_session(lambda_gateway, store_url) as kong:
        assert isinstance(kong.backend, LambdaBackend)
        x = da.random.default_rng(3).random((200, 200), chunks=50)
        got = dask.compute(x.sum(split_every=2), x @ x.T, scheduler=kong.get)
        want = dask.compute(x.sum(split_every=2), x @ x.T, scheduler="sync")
        np.testing.assert_allclose(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1])
        stats = lambda_gateway.stats()
        assert stats.invocations >= 16  # client and workers invoked over HTTP
        assert kong.store.run_keys(kong.last_run_id or "") == []


def test_session_with_private_redis_leaves_no_server() -> None:
    with Kong(backend="threads", store="redis") as kong:
        server = kong.store._owned_server  # type: ignore[attr-defined]
        pid = server.pid
        assert kong.get({"a": (inc, 1)}, "a") == 2
    assert pid is not None and not pid_alive(pid)


def test_tasks_run_on_their_planned_resource_config_and_prewarm_warms_it(
    processes: Kong, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    from dask_kong.planning import PLANNERS, Optimization
    from dask_kong.planning.planners import plan_wukong

    def plan_large_with_prewarm(dag: DAG, context: PlanningContext) -> Plan:
        plan = plan_wukong(dag, context)
        large = replace(plan.tasks[0], resource="large")
        flagged = replace(large, optimizations=large.optimizations | {Optimization.PREWARM})
        return replace(plan, planner="test-large", tasks=(flagged,) * len(dag))

    monkeypatch.setitem(PLANNERS, "test-large", plan_large_with_prewarm)
    gateway = processes.backend.gateway  # type: ignore[attr-defined]
    dsk: dict[str, Any] = {f"x{i}": (inc, i) for i in range(6)}
    dsk["total"] = (sum, [f"x{i}" for i in range(6)])
    assert processes.get(dsk, "total", planner="test-large") == sum(range(1, 7))
    summary = last_run()
    assert summary is not None
    assert {m.resource for m in summary.task_metrics.values()} == {"large"}
    assert gateway.stats().live_by_config["large"] >= 1


def block(seed: int) -> np.ndarray:
    return np.full(100_000, seed, dtype=np.float64)


def slow_block(seed: int) -> np.ndarray:
    time.sleep(0.5)
    return block(seed)


def test_outputs_done_early_are_read_while_the_run_goes_on(processes: Kong) -> None:
    dsk = {f"b-{i}": (block, i) for i in range(4)}
    dsk["slow"] = (slow_block, 9)
    keys = [*(f"b-{i}" for i in range(4)), "slow"]
    results = processes.get(dsk, keys)
    assert [float(r[0]) for r in results] == [0.0, 1.0, 2.0, 3.0, 9.0]
    summary = last_run()
    assert summary is not None
    assert summary.outputs_prefetched >= 4  # the fast blocks, read before "slow" ended
    assert summary.client_bytes_read >= 5 * 800_000  # prefetched reads are counted too
    assert processes.store.run_keys(processes.last_run_id or "") == []


def test_the_memory_store_is_not_prefetched() -> None:
    with Kong() as session:
        session.get({"a": (block, 1)}, "a")
    summary = last_run()
    assert summary is not None and summary.outputs_prefetched == 0


@pytest.mark.parametrize(("cores", "large_cpus"), [(2, 1), (4, 2), (1, 1)])
def test_gateway_configs_count_only_their_share_of_the_cores(
    processes: Kong, monkeypatch: pytest.MonkeyPatch, cores: int, large_cpus: int
) -> None:
    """Two slots: on 2 cores a 2-cpu worker can count on one (its BLAS threads only
    contend with the other slot's), on 4 cores on both (kong.yaml: small 1, large 2)."""
    monkeypatch.setattr(backend_module, "host_cpus", lambda: cores)
    monkeypatch.setattr(processes.backend, "concurrency", lambda: 2)
    cpus = {r.name: r.cpus for r in processes.backend.resources()}
    assert cpus == {"small": 1, "large": large_cpus}


def fail(value: int) -> int:
    raise ValueError(f"bad value {value}")


def test_a_failed_run_stops_the_prefetch_quietly(
    processes: Kong, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dask_kong")
    dsk = {"a": (block, 1), "b": (fail, 2)}
    with pytest.raises(ValueError, match="bad value 2"):
        processes.get(dsk, ["a", "b"])
    assert "prefetch" not in caplog.text
    assert processes.store.run_keys(processes.last_run_id or "") == []
