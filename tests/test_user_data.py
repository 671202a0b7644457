"""The user's own data: arrays and frames embedded in the graph (`da.from_array`,
`dd.from_pandas`) are lifted out of dask's fused tasks, uploaded once per session by
content token, counted apart from the workers' traffic, and leave no key behind."""

from __future__ import annotations

import gc
import os
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.array.utils import _check_chunks

from dask_kong import Kong, last_run
from dask_kong.constants import data_key
from dask_kong.dag import DAG
from dask_kong.dag.model import StoredValue
from dask_kong.dag.translate import translate
from dask_kong.errors import KongError, WorkerLostError
from dask_kong.serialize import content_token
from dask_kong.store.base import Store
from dask_kong.store.memory import MemoryStore
from dask_kong.store.redis import RedisStore
from dask_kong.store.server import RedisServer
from dask_kong.waits import poll_until

from .test_stateful_tasks import DeliverTwice

# Chunks above kong.payload.inline_input_bytes (64 KiB), so they go through the store.
CHUNK = 2**14  # float64: 128 KiB
CHUNKS = 16
REMOTE_MODES = ("threads-redis", "processes")  # stores that serialize: duplicates matter


def user_array() -> np.ndarray:
    return np.arange(CHUNK * CHUNKS, dtype=np.float64)


def dag_of(collection: Any) -> DAG:
    """The DAG a scheduler is handed for `collection` (after dask's own optimization,
    which fuses each from_array chunk into its first operation)."""
    captured: dict[str, Any] = {}

    def capture(dsk: Any, keys: Any, **kwargs: Any) -> Any:
        captured["dag"] = translate(dsk, keys).dag
        return dask.get(dsk, keys)

    dask.compute(collection, scheduler=capture)
    dag: DAG = captured["dag"]
    return dag


def test_from_array_chunks_fused_into_tasks_become_data_entries_not_dag_bytes() -> None:
    x = da.from_array(user_array(), chunks=CHUNK)
    dag = dag_of(x.sum(split_every=2))
    assert len(dag.data) == CHUNKS
    assert all(isinstance(v, np.ndarray) and v.nbytes == CHUNK * 8 for v in dag.data.values())
    # the tasks no longer carry the chunks: the DAG without its data pickles small
    assert len(cloudpickle.dumps(dag.nodes)) < CHUNK * 8


def test_from_pandas_partitions_become_data_entries() -> None:
    frame = pd.DataFrame({"a": np.arange(40_000) % 7, "b": np.arange(40_000.0)})
    d = dd.from_pandas(frame, npartitions=4)
    dag = dag_of(d.groupby("a").b.sum())
    assert [type(v) for v in dag.data.values()] == [pd.DataFrame] * 4


def test_user_data_is_counted_apart_and_uploaded_once_per_session(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("processes")
    values = user_array()
    x = da.from_array(values, chunks=CHUNK)
    nbytes = values.nbytes

    assert x.sum(split_every=2).compute(scheduler=session.get) == values.sum()
    first = last_run()
    assert first is not None
    assert nbytes <= first.data_bytes_uploaded < 1.1 * nbytes
    assert first.client_bytes_uploaded >= first.data_bytes_uploaded
    assert first.bytes_written < nbytes / 10  # the workers wrote partial sums only
    assert first.bytes_read >= nbytes  # each chunk read once by the task that needs it
    assert session.store.run_keys(first.run_id) == []

    # the same array again, through another collection: nothing uploaded
    assert x.mean().compute(scheduler=session.get) == values.mean()
    second = last_run()
    assert second is not None
    assert second.data_bytes_uploaded == 0
    assert second.data_bytes_reused >= nbytes
    assert session.store.run_keys(second.run_id) == []

    # a changed array (dask copies the chunks when the collection is made): only the
    # chunk that changed has a new token and is uploaded; the result sees the change
    values[0] = 1e6
    changed = da.from_array(values, chunks=CHUNK)
    assert changed.sum().compute(scheduler=session.get) == values.sum()
    third = last_run()
    assert third is not None
    assert CHUNK * 8 <= third.data_bytes_uploaded < 2 * CHUNK * 8


@pytest.mark.parametrize("mode", ["embedded", "threads-redis"])
def test_workers_in_the_clients_process_read_the_data_in_place(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    session = kong_sessions(mode)
    values = user_array()
    assert da.from_array(values, chunks=CHUNK).sum().compute(scheduler=session.get) == values.sum()
    summary = last_run()
    assert summary is not None
    assert summary.client_bytes_uploaded == summary.data_bytes_uploaded == 0
    assert summary.bytes_read < values.nbytes / 10


@pytest.mark.parametrize("mode", REMOTE_MODES)
def test_user_data_delivered_twice_gives_one_result_and_leaves_no_run_key(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    session = kong_sessions(mode)
    values = np.random.default_rng(14).random((4 * 128, 256))  # 4 row blocks of 256 KiB
    x = da.from_array(values, chunks=(128, 256))
    inner = session.backend
    session.backend = DeliverTwice(inner)
    try:
        got = session.get(*graph_and_keys(x.T @ x), planner="naive")
    finally:
        session.backend = inner
    (((block,),),) = got  # x.T @ x is one 256 x 256 block
    np.testing.assert_allclose(block, values.T @ values)
    run = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run) == [], 5.0)


def graph_and_keys(collection: Any) -> tuple[Any, Any]:
    """What dask.compute hands a scheduler: the optimized graph and the keys."""
    (optimized,) = dask.optimize(collection)
    return optimized.__dask_graph__(), [optimized.__dask_keys__()]


@pytest.fixture
def own_session(redis_server: RedisServer) -> Iterator[Kong]:
    """A session of its own on the shared redis-server, which outlives its close."""
    kong = Kong(backend="processes", store=redis_server.url, workers=2)
    try:
        yield kong
    finally:
        kong.close()


def test_closing_the_session_deletes_its_uploaded_data(
    own_session: Kong, redis_server: RedisServer
) -> None:
    values = user_array()
    x = da.from_array(values, chunks=CHUNK)
    assert x.sum().compute(scheduler=own_session.get) == values.sum()
    assert own_session.session_keys is not None
    scope = own_session.session_keys.scope
    assert len(own_session.store.run_keys(scope)) == CHUNKS + 1  # the chunks, the marker
    own_session.close()
    observer = RedisStore(redis_server.url)
    try:
        assert observer.run_keys(scope) == []
    finally:
        observer.close()


def test_uploaded_data_beyond_the_budget_is_evicted_least_recently_used_first(
    own_session: Kong,
) -> None:
    keys = own_session.session_keys
    assert keys is not None
    keys.budget_bytes = 3 * CHUNK * 8  # room for three chunks
    arrays = [np.full(CHUNK, float(i)) for i in range(5)]
    for i, values in enumerate(arrays):
        x = da.from_array(values, chunks=CHUNK)
        assert x.sum().compute(scheduler=own_session.get) == values.sum()
        if i == 1:  # the first array is used again: the second is now the oldest
            assert (
                da.from_array(arrays[0], chunks=CHUNK).sum().compute(scheduler=own_session.get)
                == arrays[0].sum()
            )
    assert keys.cached_bytes <= keys.budget_bytes
    held = [keys.holds(data_key(content_token(values))) for values in arrays]
    assert held == [False, False, True, True, True]
    # the store holds exactly what the session says it holds
    stored = set(own_session.store.run_keys(keys.scope)) - {"live"}
    assert len(stored) == 3


@pytest.fixture(params=["memory", "redis", "cluster"])
def any_scope_store(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Store]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "redis":
        store = RedisStore(redis_server.url)
    else:
        store = request.getfixturevalue("cluster_store")
    try:
        yield store
    finally:
        store.close()


def test_a_kept_key_is_dropped_with_its_last_pin_and_a_pinned_one_never_evicted(
    any_scope_store: Store,
) -> None:
    from dask_kong.runtime.session_keys import SessionKeys

    keys = SessionKeys(any_scope_store, budget_bytes=0)
    keys.open()
    try:
        keys.add({"kept": np.ones(1000)}, cached=False)  # pinned once by add
        keys.pin(["kept"])
        keys.add({"cached": np.ones(1000)})  # pinned by add: over budget but held
        assert keys.pin_present(["kept", "cached", "never"]) == ["never"]
        keys.unpin(["cached", "cached"])  # both holds released: evicted (budget 0)
        assert not keys.holds("cached")
        keys.unpin(["kept", "kept"])
        assert keys.holds("kept")  # one pin left
        assert any_scope_store.sizes(keys.scope, ["kept", "cached"])[1] == 0
        keys.unpin(["kept"])
        assert not keys.holds("kept")
        assert any_scope_store.sizes(keys.scope, ["kept"]) == [0]
    finally:
        keys.close()
    assert any_scope_store.run_keys(keys.scope) == []


def test_drop_removes_the_parts_of_a_value_stored_in_parts(redis_store: RedisStore) -> None:
    redis_store.max_value_bytes = 100_000  # a 800 KB value goes in parts
    scope = "drop-parts"
    redis_store.open_run(scope)
    try:
        redis_store.commit(scope, {"big": np.ones(100_000), "small": 1})
        assert len(redis_store.run_keys(scope)) > 3
        redis_store.drop(scope, ["big"])
        assert sorted(redis_store.run_keys(scope)) == ["live", "small"]
    finally:
        redis_store.delete_run(scope)


def test_each_start_is_invoked_once_its_own_data_is_in_the_store() -> None:
    from dask_kong.planning import PlanningContext, get_planner
    from dask_kong.runtime.session_keys import SessionKeys
    from dask_kong.runtime.upload import plan_upload, upload_and_invoke

    x = da.from_array(user_array(), chunks=CHUNK)
    dag = dag_of(x.sum(split_every=2))
    plan = get_planner("naive")(dag, PlanningContext())
    starts = list(dag.roots)
    store = MemoryStore()
    keys = SessionKeys(store)
    invoked: list[list[int]] = []
    with dask.config.set({"kong.data.upload_batch_bytes": 3 * CHUNK * 8}):
        upload = plan_upload(dag, plan, starts, keys, inline_bytes=65536)
    assert upload is not None
    assert len(upload.batches) == 6  # 16 chunks, three a batch
    refs = upload.refs

    def invoke(tasks: list[int]) -> None:
        for task in tasks:  # every input of an invoked start is already stored
            names = [i.data for i in dag.inputs[task] if i.data is not None]
            stored = store.sizes(keys.scope, [refs.keys[n] for n in names])
            assert all(stored), task
        invoked.append(tasks)

    upload_and_invoke(upload, starts, invoke)
    assert sorted(t for batch in invoked for t in batch) == sorted(starts)
    assert len(invoked) == 6  # starts went out between the batches, not all at the end
    assert upload.bytes > 0 and len(upload.pinned) == CHUNKS
    upload.release()
    keys.close()
    assert store.run_keys(keys.scope) == []


# -- persist: results kept in the store ----------------------------------------------


def stored_values(collection: Any) -> list[StoredValue]:
    graph = dict(collection.__dask_graph__())
    return [v for v in graph.values() if isinstance(v, StoredValue)]


def released_by_a_run(session: Kong) -> bool:
    """Collect garbage and run: a session drops the persisted values collected since
    its last run (worker threads may hold the last run's DAG a moment longer)."""
    gc.collect()
    da.ones(2).sum().compute(scheduler=session.get)
    return kept_keys(session) == []


def kept_keys(session: Kong) -> list[str]:
    assert session.session_keys is not None
    """The persisted values the session's scope holds (not its cached uploads)."""
    return [k for k in session.store.run_keys(session.session_keys.scope) if k.startswith("kept:")]


@pytest.mark.parametrize("mode", REMOTE_MODES)
def test_persist_keeps_results_in_the_store_and_later_runs_read_them_there(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    session = kong_sessions(mode)
    values = user_array()
    y = da.from_array(values, chunks=CHUNK) + 1
    (kept,) = dask.persist(y, scheduler=session.get)  # dask.persist finds Kong.persist
    persisted = last_run()
    assert persisted is not None and persisted.client_bytes_read == 0
    assert len(stored_values(kept)) == CHUNKS
    assert session.store.run_keys(persisted.run_id) == []

    assert kept.sum().compute(scheduler=session.get) == (values + 1).sum()
    later = last_run()
    assert later is not None
    assert later.client_bytes_read < 1000  # one float, not the chunks
    assert later.bytes_read >= values.nbytes  # the workers read the kept chunks
    assert later.client_bytes_uploaded < 100_000  # nothing of the data moved through here
    np.testing.assert_array_equal(
        session.persist(kept * 2).compute(scheduler=session.get), (values + 1) * 2
    )

    del kept, persisted, later  # a run's summary refers to its DAG, and so to them
    gc.collect()
    assert y.sum().compute(scheduler=session.get) == (values + 1).sum()  # releases them
    assert kept_keys(session) == []


@pytest.mark.parametrize("mode", REMOTE_MODES)
def test_a_persisted_chunk_reads_its_value_with_result_as_a_future_does(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    """dask's own checks (`dask.array.utils._check_chunks`, run by `assert_eq`) read a
    persisted graph's chunks with `.result()`, as distributed's futures answer it."""
    session = kong_sessions(mode)
    values = user_array()
    kept = session.persist(da.from_array(values, chunks=CHUNK) - 1)
    chunks = [kept.__dask_graph__()[(kept.name, i)] for i in range(CHUNKS)]
    assert all(isinstance(c, StoredValue) and c.done() for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c.result() for c in chunks]), values - 1)
    copy = pickle.loads(pickle.dumps(chunks[0]))
    with pytest.raises(RuntimeError, match="a copy made by pickling"):
        copy.result()
    _check_chunks(kept, scheduler=session.get)


def test_persisted_chunks_read_with_result_are_right_after_kills_and_duplicates(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """The persist behind `.result()` runs with workers killed mid-branch and
    invocations delivered twice (kong.faults, three in ten of each branch's first
    attempts): every chunk read back is the right one."""
    session = kong_sessions("processes")
    values = user_array()
    faults = {
        "kong.faults.kill_fraction": 0.3,
        "kong.faults.duplicate_fraction": 0.2,
        "kong.faults.seed": 3,
    }
    with dask.config.set(faults):
        kept = session.persist(da.from_array(values, chunks=CHUNK) * 2)
    chunks = [kept.__dask_graph__()[(kept.name, i)] for i in range(CHUNKS)]
    np.testing.assert_array_equal(np.concatenate([c.result() for c in chunks]), values * 2)


def test_a_persisted_chunk_of_a_closed_session_says_its_value_is_gone(own_session: Kong) -> None:
    kept = own_session.persist(da.from_array(user_array(), chunks=CHUNK) - 1)
    chunk = kept.__dask_graph__()[(kept.name, 0)]
    own_session.close()
    with pytest.raises(RuntimeError, match=r"session that persisted 'kept:.*is closed"):
        chunk.result()


def test_persist_in_the_embedded_mode_keeps_the_values_in_this_process(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("embedded")
    values = user_array()
    kept = session.persist(da.from_array(values, chunks=CHUNK) + 1)
    assert not stored_values(kept)
    assert kept.sum().compute(scheduler=session.get) == (values + 1).sum()


@pytest.mark.parametrize("mode", REMOTE_MODES)
def test_persisted_results_delivered_twice_are_kept_once(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    session = kong_sessions(mode)
    values = np.random.default_rng(15).random((4 * 128, 256))
    inner = session.backend
    session.backend = DeliverTwice(inner)
    try:
        kept = session.persist(da.from_array(values, chunks=(128, 256)) * 3, planner="naive")
        np.testing.assert_allclose(
            kept.sum(axis=0).compute(scheduler=session.get), values.sum(axis=0) * 3
        )
    finally:
        session.backend = inner
    run = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run) == [], 5.0)
    assert len(kept_keys(session)) == 4
    del kept
    assert poll_until(lambda: released_by_a_run(session), 15.0)


def test_a_persisted_collection_outliving_its_session_fails_naming_the_value(
    own_session: Kong, kong_sessions: Callable[[str], Kong]
) -> None:
    kept = own_session.persist(da.from_array(user_array(), chunks=CHUNK) + 1)
    own_session.close()
    other = kong_sessions("processes")
    with pytest.raises(KongError, match=r"persisted value 'kept:.*no longer in the store"):
        kept.sum().compute(scheduler=other.get)


def die_on_first_chunk(block: np.ndarray) -> np.ndarray:
    """Kills its worker process on the first chunk (the one that starts with 0; dask's
    meta inference calls it on a tiny array in the client, which must survive)."""
    if block.size == CHUNK and block[0] == 0:
        os._exit(3)
    return block


def test_a_worker_killed_mid_run_loses_neither_the_uploaded_nor_the_persisted_data(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("processes")
    values = user_array()
    x = da.from_array(values, chunks=CHUNK)
    kept = session.persist(x * 2)
    dying = x.map_blocks(die_on_first_chunk, meta=np.array(()))
    with pytest.raises(WorkerLostError):
        (dying + kept).sum().compute(scheduler=session.get)
    run = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run) == [], 5.0)
    # the failed run released its pins, kept nothing of its own, and the data is intact
    assert (x + kept).sum().compute(scheduler=session.get) == 3 * values.sum()
    again = last_run()
    assert again is not None and again.data_bytes_uploaded == 0
    assert len(kept_keys(session)) == CHUNKS
