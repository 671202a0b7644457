"""kong gives exactly what dask's sync scheduler gives, for every kind of collection."""

from __future__ import annotations

from typing import TYPE_CHECKING

import dask
import dask.array as da
import dask.bag as db
import numpy as np
import pandas as pd
import pytest

from dask_kong import Kong

from .kong_fixtures import ON_A_CLUSTER_TOO

if TYPE_CHECKING:
    import dask.dataframe as dd


def rng_array(shape: tuple[int, ...], chunks: tuple[int, ...] | int, seed: int = 0) -> da.Array:
    array: da.Array = da.random.default_rng(seed).random(shape, chunks=chunks)
    return array


def assert_same_as_sync(kong: Kong, *collections: object) -> None:
    got = dask.compute(*collections, scheduler=kong.get)
    expected = dask.compute(*collections, scheduler="sync")
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, (pd.DataFrame, pd.Series)):
            pd.testing.assert_frame_equal(pd.DataFrame(g), pd.DataFrame(e))
        else:
            np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-10)
    assert kong.store.run_keys(kong.last_run_id or "") == []  # on every shard of a cluster


@ON_A_CLUSTER_TOO
def test_gemm_matches_sync(kong: Kong) -> None:
    x = rng_array((300, 200), (100, 50), seed=1)
    y = rng_array((200, 150), (50, 75), seed=2)
    assert_same_as_sync(kong, x @ y)


@ON_A_CLUSTER_TOO
def test_tall_skinny_svd_matches_sync(kong: Kong) -> None:
    x = rng_array((2000, 20), (200, 20))
    u, s, v = da.linalg.svd(x)
    assert_same_as_sync(kong, u, s, v)


@ON_A_CLUSTER_TOO
def test_svd_compressed_matches_sync(kong: Kong) -> None:
    x = rng_array((400, 400), (100, 100))
    u, s, v = da.linalg.svd_compressed(x, k=5, seed=42)
    assert_same_as_sync(kong, u, s, v)


def test_qr_matches_sync(kong: Kong) -> None:
    x = rng_array((1000, 30), (100, 30))
    q, r = da.linalg.qr(x)
    assert_same_as_sync(kong, q, r)


def test_tree_sum_split_every_2_matches_sync(kong: Kong) -> None:
    x = rng_array((4096,), 16)
    assert_same_as_sync(kong, x.sum(split_every=2), x.mean(split_every=3))


def test_reduction_with_nested_keys_matches_sync(kong: Kong) -> None:
    x = rng_array((60, 60), (10, 20))
    s = x.sum(axis=0, split_every=2)  # a 1-d result in chunks: nested keys
    assert_same_as_sync(kong, s, x.max(axis=1))
    keys = s.__dask_keys__()
    out = kong.get(dict(s.__dask_graph__()), [keys, [keys[0]]])
    assert isinstance(out, tuple) and isinstance(out[1], tuple)
    np.testing.assert_allclose(out[1][0], s.blocks[0].compute(scheduler="sync"))


def test_several_collections_in_one_compute(kong: Kong) -> None:
    x = rng_array((100, 100), 25)
    assert_same_as_sync(kong, x.sum(), x.T @ x, x[::2].std())


@ON_A_CLUSTER_TOO
def test_persist_gives_same_values(kong: Kong) -> None:
    x = rng_array((200, 200), 50)
    (y,) = dask.persist(x + 1, scheduler=kong.get)
    # where the store is Redis, y's graph refers to results kept there: only the session
    # that persisted it can compute it (as distributed's futures need their client)
    expected = (x + 1).compute(scheduler="sync")
    np.testing.assert_allclose(y.compute(scheduler=kong.get), expected)


def test_delayed_with_nested_list_and_dict_arguments(kong: Kong) -> None:
    @dask.delayed
    def inc(v: int) -> int:
        return v + 1

    @dask.delayed
    def combine(items: list[int], mapping: dict[str, list[int]]) -> int:
        return sum(items) + sum(sum(v) for v in mapping.values())

    a = [inc(i) for i in range(5)]
    out = combine([a[0], [a[1], a[2]][0]], {"x": [a[3], 10], "y": [a[4]]})
    assert dask.compute(out, scheduler=kong.get) == dask.compute(out, scheduler="sync")


def test_bag_matches_sync(kong: Kong) -> None:
    b = db.from_sequence(range(1000), npartitions=13)
    result = b.map(lambda v: v * 3).filter(lambda v: v % 2 == 0).frequencies(sort=True)
    assert dask.compute(result, scheduler=kong.get) == dask.compute(result, scheduler="sync")
    assert b.fold(lambda a, c: a + c).compute(scheduler=kong.get) == sum(range(1000))


@pytest.fixture
def frames() -> tuple[dd.DataFrame, dd.DataFrame]:
    import dask.dataframe as dd

    rng = np.random.default_rng(0)
    left = pd.DataFrame({"k": rng.integers(0, 20, 500), "v": rng.random(500)})
    right = pd.DataFrame({"k": np.arange(20), "w": rng.random(20)})
    return dd.from_pandas(left, npartitions=5), dd.from_pandas(right, npartitions=2)


def test_dataframe_groupby_matches_sync(
    kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame]
) -> None:
    left, _ = frames
    result = left.groupby("k").v.agg(["sum", "mean", "count"])
    got = result.compute(scheduler=kong.get)
    pd.testing.assert_frame_equal(got.sort_index(), result.compute(scheduler="sync").sort_index())


@ON_A_CLUSTER_TOO
def test_dataframe_merge_matches_sync(
    kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame]
) -> None:
    left, right = frames
    with dask.config.set({"dataframe.shuffle.method": "tasks"}):
        merged = left.merge(right, on="k").optimize()
    got = merged.compute(scheduler=kong.get).sort_values(["k", "v"]).reset_index(drop=True)
    want = merged.compute(scheduler="sync").sort_values(["k", "v"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want)
    assert kong.store.run_keys(kong.last_run_id or "") == []


def test_disk_shuffle_is_refused_only_where_workers_share_no_disk(
    frames: tuple[dd.DataFrame, dd.DataFrame],
) -> None:
    from dask_kong.dag import to_dag
    from dask_kong.errors import KongError
    from dask_kong.runtime.shippable import check_shippable

    left, right = frames
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        expr = left.merge(right, on="k").optimize()
        dag = to_dag(expr.__dask_graph__(), expr.__dask_keys__())
    check_shippable(dag, shares_machine=True)
    with pytest.raises(KongError, match="disk shuffle"):
        check_shippable(dag, shares_machine=False)


def test_kong_context_keeps_dasks_shuffle_where_workers_share_a_disk() -> None:
    with Kong():
        assert dask.config.get("dataframe.shuffle.method", None) is None


@ON_A_CLUSTER_TOO
def test_from_array_constants_compute_correctly(kong: Kong) -> None:
    data = np.arange(200 * 200, dtype=float).reshape(200, 200)
    x = da.from_array(data, chunks=50)
    np.testing.assert_allclose((x @ x.T).compute(scheduler=kong.get), data @ data.T)
    assert kong.store.run_keys(kong.last_run_id or "") == []


def test_compute_twice_gives_same_result(kong: Kong) -> None:
    x = rng_array((500,), 10).sum(split_every=2)
    first = x.compute(scheduler=kong.get)
    second = x.compute(scheduler=kong.get)
    assert first == second == x.compute(scheduler="sync")
