"""Metrics history: bounded summaries in memory and in a real Redis, percentiles, cost."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dask_kong.dag import DAG, to_dag
from dask_kong.dag.model import task_digests
from dask_kong.metrics.records import RunSummary, TaskMetrics
from dask_kong.planning import MemoryHistory, Plan, RedisHistory, TaskPlan, record_run
from dask_kong.planning.history import Metric, Stats, percentile, task_profile_name
from dask_kong.store.server import RedisServer

WINDOW = 64


def work(*args: object) -> int:
    return 1


def fan_in_dag(width: int) -> DAG:
    """`width` loads, each processed, all joined: functions load, process, join."""
    dsk: dict[str, Any] = {f"load-{i}": (work,) for i in range(width)}
    dsk.update({f"process-{i}": (work, f"load-{i}") for i in range(width)})
    dsk["join-0"] = (work, *[f"process-{i}" for i in range(width)])
    return to_dag(dsk, "join-0")


def observed_run(dag: DAG, seed: int = 0, makespan_s: float = 1.0) -> RunSummary:
    """A run in which every metric the history reads has a value, varied by `seed`."""
    metrics = {}
    for task in range(len(dag)):
        scale = 1 + (seed * 7 + task) % 13
        metrics[task] = TaskMetrics(
            worker=f"w{task % 4}",
            start=100.0 + task * 0.001,
            end=100.0 + task * 0.001 + 0.01 * scale,
            read_s=0.001 * scale,
            read_bytes=1000 * scale,
            exec_s=0.01 * scale,
            write_s=0.002 * scale,
            written_bytes=2000 * scale,
            invoke_s=0.003,
            invocations=1,
            output_bytes=500 * scale,
        )
    return RunSummary(
        run_id=f"run-{seed}",
        tasks=len(dag),
        workers=4,
        invocations=len(dag),
        makespan_s=makespan_s,
        bytes_written=0,
        bytes_read=0,
        planner="uniform",
        backend="threads",
        store="memory",
        shape_hash=dag.shape_hash,
        task_metrics=metrics,
    )


def plan_for(dag: DAG, resource: str = "default", makespan_s: float | None = 1.5) -> Plan:
    return Plan(
        planner="uniform",
        tasks=tuple(TaskPlan(resource=resource) for _ in range(len(dag))),
        predicted_makespan_s=makespan_s,
    )


@pytest.fixture
def redis_history(redis_server: RedisServer) -> Iterator[RedisHistory]:
    """A RedisHistory under a prefix of its own on the session's real redis-server."""
    history = RedisHistory(redis_server.url, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        yield history
    finally:
        history.close()


def history_keys(history: RedisHistory) -> list[bytes]:
    return list(history._client.scan_iter(match=history.prefix + "*", count=1000))


def test_memory_history_stays_the_same_size_over_10000_runs() -> None:
    dag = fan_in_dag(3)
    plan = plan_for(dag)
    history = MemoryHistory(samples=WINDOW)
    for seed in range(100):
        history.record(dag, observed_run(dag, seed), plan)
    size_after_100 = history.stored_size()
    for seed in range(100, 10_000):
        history.record(dag, observed_run(dag, seed), plan)
    assert history.stored_size() == size_after_100
    groups, samples = size_after_100
    # three functions, one config, one shape (and its one planner), and a profile per
    # distinct task structure
    assert groups == 3 + 1 + 2 + len(set(dag.task_digests))
    assert samples <= groups * len(Metric) * WINDOW
    stats = history.function_stats([("load", "default")])[("load", "default")]
    assert stats.count(Metric.EXEC_S) == 3 * 10_000  # counts keep counting
    assert len(stats.samples[Metric.EXEC_S]) == WINDOW  # samples do not


def test_memory_history_drops_least_recent_groups_beyond_its_cap() -> None:
    history = MemoryHistory(max_groups=4)
    for i in range(10):
        history.record_startup(f"config{i}", cold=True, seconds=1.0)
    assert history.stored_size()[0] == 4
    assert set(history.resource_stats([f"config{i}" for i in range(10)])) == {
        "config6",
        "config7",
        "config8",
        "config9",
    }


def test_redis_history_stays_the_same_size_over_10000_concurrent_runs(
    redis_history: RedisHistory,
) -> None:
    dag = fan_in_dag(1)
    plan = plan_for(dag)
    for seed in range(100):
        redis_history.record(dag, observed_run(dag, seed), plan)
    keys_after_100 = sorted(history_keys(redis_history))
    # Four recorders at once, as several clients of one Redis would: nothing is lost.
    with ThreadPoolExecutor(4) as pool:
        runs = (observed_run(dag, seed) for seed in range(100, 10_000))
        list(pool.map(lambda summary: redis_history.record(dag, summary, plan), runs))
    keys = sorted(history_keys(redis_history))
    assert keys == keys_after_100
    client = redis_history._client
    lists = [k for k in keys if client.type(k) == b"list"]
    hashes = [k for k in keys if client.type(k) == b"hash"]
    # functions, config, shape (and its one planner), a profile per distinct task structure
    assert len(hashes) == 3 + 1 + 2 + len(set(dag.task_digests))
    assert lists and all(client.llen(k) <= WINDOW for k in lists)
    assert max(client.llen(k) for k in lists) == WINDOW
    assert all(len(client.hkeys(k)) <= 2 * len(Metric) for k in hashes)
    assert all(0 < client.ttl(k) <= redis_history.ttl_s for k in keys)  # expire, not run-scoped
    stats = redis_history.function_stats([("join", "default")])[("join", "default")]
    assert stats.count(Metric.EXEC_S) == 10_000


def test_redis_and_memory_histories_summarise_a_run_alike(redis_history: RedisHistory) -> None:
    dag = fan_in_dag(4)
    memory = MemoryHistory()
    for seed in range(3):
        for history in (memory, redis_history):
            history.record(dag, observed_run(dag, seed), plan_for(dag))
    pairs = [(f, "default") for f in ("load", "process", "join")]
    for pair in pairs:
        in_memory = memory.function_stats(pairs)[pair]
        in_redis = redis_history.function_stats(pairs)[pair]
        for metric in (Metric.EXEC_S, Metric.EXEC_S_PER_BYTE, Metric.OUTPUT_RATIO):
            assert in_redis.count(metric) == in_memory.count(metric)
            if not in_memory.count(metric):
                continue  # roots have no input bytes, hence no per-byte metrics
            assert in_redis.mean(metric) == pytest.approx(in_memory.mean(metric), rel=1e-5)
            assert sorted(in_redis.samples.get(metric, ())) == pytest.approx(
                sorted(in_memory.samples.get(metric, ())), rel=1e-5
            )
    shape = redis_history.shape_stats(dag.shape_hash)
    assert shape is not None and shape.count(Metric.MAKESPAN_S) == 3
    assert shape.mean(Metric.MAKESPAN_ERROR) == pytest.approx(0.5)


def test_history_without_output_sizes_records_per_task_time_only() -> None:
    """Today's runtime reports output_bytes = 0: no per-byte rates may be invented."""
    dag = fan_in_dag(2)
    summary = observed_run(dag)
    for m in summary.task_metrics.values():
        m.output_bytes = 0
    history = MemoryHistory()
    history.record(dag, summary, plan_for(dag))
    stats = history.function_stats([("process", "default")])[("process", "default")]
    assert stats.count(Metric.EXEC_S) == 2
    assert stats.count(Metric.EXEC_S_PER_BYTE) == 0
    assert stats.count(Metric.OUTPUT_BYTES) == 0


def test_startup_samples_are_kept_per_config_and_temperature() -> None:
    history = MemoryHistory()
    history.record_startup("small", cold=True, seconds=1.5)
    history.record_startup("small", cold=False, seconds=0.05)
    stats = history.resource_stats(["small"])["small"]
    assert stats.mean(Metric.STARTUP_COLD_S) == 1.5
    assert stats.mean(Metric.STARTUP_WARM_S) == 0.05


def test_small_transfers_are_latency_samples_and_large_ones_throughput() -> None:
    """300 bytes in 0.3 ms is a round-trip, not a 1 MB/s store: it must not predict 8 s
    for an 8 MB block. Start-ups of first tasks are kept per temperature and mixed."""
    dag = fan_in_dag(2)
    summary = observed_run(dag)
    for task, m in summary.task_metrics.items():
        big = task % 2 == 0
        m.read_bytes, m.read_s = (8_000_000, 0.025) if big else (300, 0.0003)
        m.written_bytes, m.write_s = 0, 0.0
        m.startup_s, m.cold_start = (0.6, True) if task == 0 else (0.002, False)
    history = MemoryHistory()
    history.record(dag, summary, plan_for(dag))
    stats = history.resource_stats(["default"])["default"]
    big_reads = sum(1 for t in summary.task_metrics if t % 2 == 0)
    assert stats.count(Metric.READ_BPS) == big_reads
    assert stats.mean(Metric.READ_BPS) == pytest.approx(8_000_000 / 0.025)
    assert stats.count(Metric.READ_S) == len(dag) - big_reads
    assert stats.mean(Metric.READ_S) == pytest.approx(0.0003)
    assert stats.mean(Metric.STARTUP_COLD_S) == 0.6
    assert stats.count(Metric.STARTUP_WARM_S) == len(dag) - 1
    assert stats.count(Metric.STARTUP_S) == len(dag)


def test_percentile_interpolates_like_numpy() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([1, 2, 3, 4], 0) == 1
    assert percentile([1, 2, 3, 4], 100) == 4
    assert percentile([5], 90) == 5
    skewed = [1.0] * 80 + [10.0] * 20
    stats = Stats({Metric.EXEC_S: 100}, {Metric.EXEC_S: 280.0}, {Metric.EXEC_S: tuple(skewed)})
    assert stats.percentile(Metric.EXEC_S, 50) == 1.0
    assert stats.percentile(Metric.EXEC_S, 90) == 10.0
    assert stats.mean(Metric.EXEC_S) == 2.8


def test_record_run_skips_missing_history_and_survives_a_dead_redis() -> None:
    dag = fan_in_dag(1)
    assert record_run(None, dag, plan_for(dag), observed_run(dag)) is False
    # Nothing listens on port 1: the history's retries give up, the run is not failed.
    client = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    dead = RedisHistory(client)
    dead._retry = type(dead._retry)(retries=0, base_s=0.0, max_s=0.0)
    assert record_run(dead, dag, plan_for(dag), observed_run(dag)) is False
    memory = MemoryHistory()
    assert record_run(memory, dag, plan_for(dag), observed_run(dag)) is True


def test_recording_1000_tasks_in_redis_takes_well_under_50_ms(
    redis_history: RedisHistory,
) -> None:
    dag = fan_in_dag(500)  # 1,001 tasks
    plan = plan_for(dag)
    runs = [observed_run(dag, seed) for seed in range(7)]
    redis_history.record(dag, runs[0], plan)  # connect once
    timings = []
    for summary in runs[1:]:
        started = time.perf_counter()
        redis_history.record(dag, summary, plan)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.050, timings


def test_recording_a_profiled_999_task_run_in_redis_takes_under_150_ms(
    redis_history: RedisHistory,
) -> None:
    """At kong.planning.profile_max_tasks (1000) and below, every task also gets its
    own profile group: recording costs more, but stays bounded."""
    dag = fan_in_dag(499)  # 999 tasks: profiled
    plan = plan_for(dag)
    runs = [observed_run(dag, seed) for seed in range(5)]
    redis_history.record(dag, runs[0], plan)
    timings = []
    for summary in runs[1:]:
        started = time.perf_counter()
        redis_history.record(dag, summary, plan)
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.150, timings
    profile = task_profile_name(dag, dag.index_of("join-0"))
    stats = redis_history.function_stats([(profile, "default")])[(profile, "default")]
    assert stats.count(Metric.EXEC_S) == len(runs)


def test_task_profiles_name_tasks_by_structure_not_by_number() -> None:
    """Another process may number the tasks differently (its translation follows set and
    dict order): a task's digest, which names its profile, must not change with it.
    Tasks alike in structure share one."""
    edges = {"load-0": [], "load-1": [], "process-0": ["load-0"], "process-1": ["load-1"]}
    edges["join-0"] = ["process-0", "process-1"]

    def digests(order: list[str]) -> dict[str, str]:
        parents = tuple(tuple(order.index(p) for p in edges[k]) for k in order)
        hexes = [d.hex() for d in task_digests(tuple(order), parents)]
        return dict(zip(order, hexes, strict=True))

    forward = digests(["load-0", "load-1", "process-0", "process-1", "join-0"])
    backward = digests(["load-1", "process-1", "load-0", "process-0", "join-0"])
    assert forward == backward
    assert len(set(forward.values())) == 3  # loads alike, processes alike, the join


def test_history_keeps_each_planners_makespans_of_a_shape_apart() -> None:
    dag = fan_in_dag(2)
    history = MemoryHistory()
    for planner, makespan in (("wukong", 2.0), ("wukong", 4.0), ("uniform", 1.0)):
        summary = observed_run(dag, makespan_s=makespan)
        summary.planner = planner
        history.record(dag, summary, plan_for(dag, makespan_s=1.5))
    stats = history.planner_stats(dag.shape_hash, ["wukong", "uniform", "naive"])
    assert set(stats) == {"wukong", "uniform"}  # naive never ran it
    assert stats["wukong"].percentile(Metric.MAKESPAN_S, 50) == 3.0
    assert stats["uniform"].percentile(Metric.MAKESPAN_ERROR, 50) == pytest.approx(0.5)
