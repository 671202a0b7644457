"""A worker process keeps the session data it read (issue #14): the user's uploaded data
and persisted values are read from the store once per process, not once per task that
needs them, and not again in the next run (`dask_kong.runtime.data_cache`)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.base import tokenize

from dask_kong import Kong, last_run
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.metrics.records import RunSummary
from dask_kong.runtime import data_cache
from dask_kong.runtime.data_cache import MISSING, DataCache
from dask_kong.store.server import RedisServer

from .kong_fixtures import lambda_session

# 4 x 4 blocks of 128 x 128 float64 (128 KiB each: above kong.payload.inline_input_bytes,
# so every block is uploaded and read from the store). In x @ x each block is read by
# eight block products.
BLOCK = 128
BLOCKS = 4


def user_matrix(seed: int = 14) -> np.ndarray:
    return np.random.default_rng(seed).random((BLOCK * BLOCKS, BLOCK * BLOCKS))


def summary() -> RunSummary:
    run = last_run()
    assert run is not None
    return run


def test_the_cache_keeps_what_fits_and_evicts_the_least_recently_used() -> None:
    block = np.zeros(1000)  # 8 KB and a little (dask.sizeof)
    size = block.nbytes
    cache = DataCache(budget=3 * size + 500)
    for key in "abc":
        cache.put("scope", key, block)
    assert cache.get("scope", "a")[0] is block  # a is now the most recently used
    cache.put("scope", "d", block)
    assert cache.get("scope", "b") == (MISSING, 0)  # b was the least recently used
    assert [k for _, k in cache.entries] == ["c", "a", "d"]
    assert cache.get("another scope", "a") == (MISSING, 0)  # keys are per scope
    cache.put("scope", "big", np.zeros(10_000))  # above the whole budget: not kept
    assert cache.get("scope", "big") == (MISSING, 0)
    assert cache.nbytes <= cache.budget
    cache.resize(size + 200)
    assert [k for _, k in cache.entries] == ["d"]
    cache.put("scope", "none", None)  # a cached None is told apart from a miss
    assert cache.get("scope", "none")[0] is None
    cache.clear()
    assert cache.nbytes == 0 and not cache.entries


@pytest.fixture
def one_worker(redis_server: RedisServer) -> Iterator[Kong]:
    """A processes session with a single worker process: what it caches, every later
    task sees."""
    session = Kong(backend="processes", store=redis_server.url, workers=1)
    try:
        yield session
    finally:
        session.close()


def test_a_worker_reads_each_block_once_and_the_next_run_reads_none(one_worker: Kong) -> None:
    values = user_matrix()
    x = da.from_array(values, chunks=BLOCK)
    nbytes = values.nbytes

    np.testing.assert_allclose((x @ x).compute(scheduler=one_worker.get), values @ values)
    first = summary()
    assert first.data_bytes_uploaded >= nbytes
    # every block is read once, then taken from the cache by the other products reading it
    assert first.bytes_cached >= nbytes
    assert first.bytes_read - first.client_bytes_read < first.bytes_written + 1.2 * nbytes

    np.testing.assert_allclose((x @ x.T).compute(scheduler=one_worker.get), values @ values.T)
    second = summary()
    assert second.data_bytes_uploaded == 0
    # no block is read from the store again: the workers read only the partial products
    assert second.bytes_read - second.client_bytes_read <= second.bytes_written
    assert second.bytes_cached >= 2 * nbytes


def test_no_budget_keeps_nothing_and_reads_every_block_per_task(one_worker: Kong) -> None:
    values = user_matrix(seed=15)
    x = da.from_array(values, chunks=BLOCK)
    with dask.config.set({"kong.data.worker_cache_bytes": 0}):
        for _ in range(2):
            got = (x @ x).compute(scheduler=one_worker.get)
            np.testing.assert_allclose(got, values @ values)
            run = summary()
            assert run.bytes_cached == 0
            # each block read by each of the products that use it (four per operand)
            assert run.bytes_read - run.client_bytes_read >= 2 * values.nbytes


def test_a_budget_below_one_block_keeps_nothing(one_worker: Kong) -> None:
    values = user_matrix(seed=16)
    x = da.from_array(values, chunks=BLOCK)
    with dask.config.set({"kong.data.worker_cache_bytes": BLOCK * BLOCK * 8 - 1}):
        np.testing.assert_allclose((x @ x).compute(scheduler=one_worker.get), values @ values)
    assert summary().bytes_cached == 0


def test_persisted_values_are_cached_by_the_processes_that_read_them(one_worker: Kong) -> None:
    values = user_matrix(seed=17)
    kept = one_worker.persist(da.from_array(values, chunks=BLOCK) * 2)
    expected = 4 * values @ values
    np.testing.assert_allclose((kept @ kept).compute(scheduler=one_worker.get), expected)
    assert summary().bytes_cached >= values.nbytes
    np.testing.assert_allclose((kept @ kept).compute(scheduler=one_worker.get), expected)
    again = summary()
    assert again.bytes_read - again.client_bytes_read <= again.bytes_written


def test_cached_data_is_right_with_workers_killed_and_deliveries_doubled(
    redis_server: RedisServer,
) -> None:
    """Three in ten of each branch's first attempts killed mid-branch, two in ten
    delivered twice: a killed worker process loses its cache, the one that replaces it
    reads from the store, and every run's result is right."""
    values = user_matrix(seed=18)
    x = da.from_array(values, chunks=BLOCK)
    faults = {
        "kong.faults.kill_fraction": 0.3,
        "kong.faults.duplicate_fraction": 0.2,
        "kong.faults.seed": 5,
    }
    with Kong(backend="processes", store=redis_server.url, workers=2) as session:
        cached = reinvoked = 0
        for _ in range(3):
            with dask.config.set(faults):
                got = (x @ x.T).compute(scheduler=session.get)
            np.testing.assert_allclose(got, values @ values.T)
            cached += summary().bytes_cached
            reinvoked += summary().reinvocations
    assert cached > 0
    assert reinvoked > 0  # workers were lost, and the runs recovered


def test_a_square_array_and_its_transpose_are_two_uploads(one_worker: Kong) -> None:
    """dask's tokenize hashes an array's elements in memory order, so a square X and X.T
    share a token: named by it, the second run would read X. Uploads are named by what
    they pickle to (`serialize.content_token`), layout included."""
    values = np.random.default_rng(19).random((256, 256))  # 512 KiB: uploaded
    transposed = values.T
    assert tokenize(values) == tokenize(transposed)  # dask's token: the trap
    for data in (values, transposed):
        got = dask.delayed(np.sum)(data, axis=0).compute(scheduler=one_worker.get)
        np.testing.assert_allclose(got, data.sum(axis=0))
        assert summary().data_bytes_uploaded > 0  # each went up under a name of its own
    words = [
        np.array(["a-b", "c"] * 5000, dtype=object),
        np.array(["a", "b-c"] * 5000, dtype=object),
    ]
    assert tokenize(words[0]) == tokenize(words[1])
    for data in words:
        got = dask.delayed(lambda a: list(a[:2]))(data).compute(scheduler=one_worker.get)
        assert got == list(data[:2])


def add_one_in_place(block: np.ndarray) -> np.ndarray:
    block += 1  # breaks dask's rule: a task must not change its inputs
    return block


def test_a_task_changing_a_kept_input_in_place_fails_instead_of_corrupting_later_runs(
    one_worker: Kong,
) -> None:
    values = user_matrix(seed=20)
    x = da.from_array(values, chunks=BLOCK)
    with pytest.raises(ValueError, match="read-only"):
        x.map_blocks(add_one_in_place).sum().compute(scheduler=one_worker.get)
    # the data every later run reads is still the user's
    assert x.sum().compute(scheduler=one_worker.get) == pytest.approx(values.sum())


def test_a_session_that_closes_drops_what_its_process_kept(redis_server: RedisServer) -> None:
    """On the threads backend the workers are the client's threads: what they kept of
    a session's data lives in the client's process, and goes when the session closes."""
    values = np.random.default_rng(21).random((4 * 256, 256))  # 4 blocks of 512 KiB
    session = Kong(backend="threads", store=redis_server.url, workers=2)
    try:
        kept = session.persist(da.from_array(values, chunks=(256, 256)) * 2)
        for _ in range(2):
            assert kept.sum().compute(scheduler=session.get) == pytest.approx(2 * values.sum())
        assert summary().bytes_cached >= values.nbytes  # the second run read none of it
        assert any(
            scope == session_scope(session) for scope, _ in data_cache._process_cache.entries
        )
    finally:
        session.close()
    assert not any(
        scope == session_scope(session) for scope, _ in data_cache._process_cache.entries
    )


def session_scope(session: Kong) -> str:
    keys = session.session_keys
    assert keys is not None
    return keys.scope


def test_the_budget_is_capped_by_the_process_memory_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data_cache.memory_limit.cache_clear()
    try:
        monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")  # a 1 GiB function
        assert data_cache.capped(2**30, 0.25) == 2**28
        assert data_cache.capped(2**20, 0.25) == 2**20
        monkeypatch.delenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        data_cache.memory_limit.cache_clear()
        limit = data_cache.memory_limit()  # this process's RLIMIT_DATA, if any
        assert limit is None or limit > 0
    finally:
        data_cache.memory_limit.cache_clear()


def test_threads_sharing_the_cache_keep_its_count_right() -> None:
    cache = DataCache(budget=40 * 8_000)

    def churn(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for i in rng.integers(0, 100, 2_000):
            value, _ = cache.get("s", str(i))
            if value is MISSING:
                cache.put("s", str(i), np.zeros(1000))
            if i % 17 == 0:
                cache.resize(cache.budget)

    workers = [threading.Thread(target=churn, args=(seed,)) for seed in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert cache.nbytes == sum(size for _, size in cache.entries.values()) <= cache.budget


def identity(block: np.ndarray) -> np.ndarray:
    return block


def add_column(part: pd.DataFrame) -> pd.DataFrame:
    part["c"] = part["a"] * 2  # common pandas code: changes the partition it was given
    return part


def test_results_are_writable_and_pandas_partitions_are_kept_apart(one_worker: Kong) -> None:
    """A task may return its (kept, read-only) input: what the client reads of it is a
    writable array, as distributed gives it. A pandas partition is handed to each task
    as a shallow copy: a column one task assigns is not in what the next reads."""
    values = np.random.default_rng(22).random((512, 256))
    got = dask.delayed(identity)(values).compute(scheduler=one_worker.get)
    np.testing.assert_array_equal(got, values)
    assert got.flags.writeable
    frame = pd.DataFrame({"a": np.arange(40_000), "b": np.arange(40_000) * 0.5})
    parts = dd.from_pandas(frame, npartitions=2)
    for _ in range(2):
        out = parts.map_partitions(add_column).compute(scheduler=one_worker.get)
        assert list(out.columns) == ["a", "b", "c"]
        assert list(parts.compute(scheduler=one_worker.get).columns) == ["a", "b"]


def test_warm_lambda_instances_keep_what_they_read(
    lambda_gateway: Gateway, redis_server: RedisServer
) -> None:
    """On the lambda backend (aiobotocore through the local gateway) a warm instance
    keeps the session data it read for the next run: the second compute of the same
    array takes blocks from the instances' memory."""
    values = user_matrix(seed=24)
    x = da.from_array(values, chunks=BLOCK)
    session = lambda_session(lambda_gateway, redis_server.url)
    try:
        for _ in range(2):
            got = (x @ x).compute(scheduler=session.get)
            np.testing.assert_allclose(got, values @ values)
        assert summary().data_bytes_uploaded == 0
        assert summary().bytes_cached > 0
    finally:
        session.close()
