"""Never a silent wrong result: tasks that share state through a handle (dask's disk
shuffles, a user's own store) compute what sync computes, on every mode and planner, and
a stateful task never runs twice (dask_kong.values)."""

from __future__ import annotations

import collections
import io
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dask
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

from dask_kong import Kong, last_run
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.dag import to_dag
from dask_kong.errors import KongError
from dask_kong.invocation.model import Invocation
from dask_kong.planning import PLANNERS, Predictor
from dask_kong.runtime.context import RunContext
from dask_kong.runtime.shippable import check_shippable
from dask_kong.store.server import RedisServer
from dask_kong.values import is_plain_data

from .kong_fixtures import CLUSTER_MODES, lambda_session, session_of
from .test_fan_in_and_runtime import plan_every_optimization

PLANNER_NAMES = ("naive", "wukong", "everything")

# Recipes for every output the runtime would allow, and task-dup and pre-load on every
# task: the optimizations that run a task again all get their chance.
RERUN_EVERYTHING = {
    "kong.wukong.recompute_bytes_per_s": 1e-9,
    "kong.wukong.recompute_min_bytes": 0,
    "kong.wukong.recompute_input_fraction": 1e9,
}


@pytest.fixture(autouse=True)
def _everything_planner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PLANNERS, "everything", plan_every_optimization)


class DirStore:
    """A user's handle to state on the local disk, shaped like partd.File: it makes a
    temporary directory, pickles as its path, and its original removes the directory
    when it dies. Every creation leaves a mark in `marks`, so a test counts them."""

    def __init__(self, marks: str, path: str | None = None) -> None:
        self.marks = marks
        self.owner = path is None
        self.path = path or tempfile.mkdtemp(suffix=".kong-test")
        os.makedirs(self.path, exist_ok=True)
        if self.owner:
            with open(os.path.join(marks, uuid.uuid4().hex), "w"):
                pass

    def __reduce__(self) -> tuple[Any, ...]:
        return (DirStore, (self.marks, self.path))

    def append(self, name: str, values: Sequence[int]) -> None:
        with open(os.path.join(self.path, name), "a") as f:
            f.writelines(f"{v}\n" for v in values)

    def read_all(self) -> list[int]:
        found: list[int] = []
        for name in sorted(os.listdir(self.path)):
            with open(os.path.join(self.path, name)) as f:
                found += [int(line) for line in f]
        return sorted(found)

    def __del__(self) -> None:
        if self.owner:
            shutil.rmtree(self.path, ignore_errors=True)


def append_part(store: DirStore, i: int) -> int:
    store.append(f"part-{i}", range(i * 10, i * 10 + 10))
    return i


def read_after(store: DirStore, *done: int) -> list[int]:
    return store.read_all()


def dir_store_graph(marks: str, parts: int = 4) -> tuple[dict[str, Any], list[str]]:
    """A root makes a DirStore; `parts` tasks append to it; two readers read it after
    all appends (a barrier), the way dask's disk shuffle is built."""
    dsk: dict[str, Any] = {"store": (DirStore, marks)}
    dsk.update({f"append-{i}": (append_part, "store", i) for i in range(parts)})
    dsk["read-a"] = (read_after, "store", *(f"append-{i}" for i in range(parts)))
    dsk["read-b"] = (read_after, "store", *(f"append-{i}" for i in range(parts)))
    return dsk, ["read-a", "read-b"]


@pytest.fixture
def marks() -> Iterator[str]:
    path = tempfile.mkdtemp(suffix=".kong-marks")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def as_multiset(groups: Any) -> list[tuple[Any, list[Any]]]:
    return sorted((k, sorted(v)) for k, v in groups)


# -- what is plain data ------------------------------------------------------------


class Record:
    def __init__(self, v: int) -> None:
        self.v = v


class Finalised:
    def __del__(self) -> None:
        pass


@pytest.mark.parametrize(
    "value",
    [
        None,
        3,
        "text",
        b"bytes",
        np.arange(4),
        np.float64(1.5),
        pd.DataFrame({"a": [1]}),
        pd.Series([1.0]),
        [1, (2, 3), {"k": [4.0]}],
        [Record(1), Record(2)],
        len,
    ],
)
def test_data_values_are_plain(value: object) -> None:
    assert is_plain_data(value)


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "make",
    [
        lambda: io.BytesIO(b"x"),
        _generator,
        threading.Lock,
        Finalised,
        lambda: [1, 2, Finalised()],
        lambda: {"store": Finalised()},
    ],
)
def test_handles_to_state_are_not_plain(make: Any) -> None:
    assert not is_plain_data(make())


def test_partd_stores_are_handles() -> None:
    import partd

    store = partd.Python(partd.File())
    assert not is_plain_data(store)
    assert not is_plain_data([store])


def test_large_containers_are_judged_by_their_first_elements() -> None:
    assert is_plain_data([*range(100), Finalised()], inspect_items=64)
    assert not is_plain_data([*range(10), Finalised()], inspect_items=64)


# -- dask's disk shuffles and a user's handle, on every mode and planner --------------


@pytest.mark.parametrize("planner", PLANNER_NAMES)
@pytest.mark.parametrize("shuffle", ["disk", "tasks"])
def test_bag_groupby_matches_sync(kong: Kong, planner: str, shuffle: str) -> None:
    b = db.from_sequence(list(range(30)) * 3, npartitions=5)
    grouped = b.groupby(lambda v: v % 4, shuffle=shuffle)
    want = as_multiset(grouped.compute(scheduler="sync"))
    with dask.config.set(RERUN_EVERYTHING):
        for _ in range(2):  # the second run plans from the first one's history
            got = dask.compute(grouped, scheduler=kong.get, planner=planner)[0]
            assert as_multiset(got) == want
            assert kong.store.run_keys(kong.last_run_id or "") == []


@pytest.fixture
def frames() -> tuple[dd.DataFrame, dd.DataFrame]:
    rng = np.random.default_rng(0)
    left = pd.DataFrame({"k": rng.integers(0, 20, 400), "v": rng.random(400)})
    right = pd.DataFrame({"k": np.arange(20), "w": rng.random(20)})
    return dd.from_pandas(left, npartitions=4), dd.from_pandas(right, npartitions=2)


def sorted_frame(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.parametrize("planner", PLANNER_NAMES)
@pytest.mark.parametrize("method", ["disk", "tasks"])
def test_dataframe_shuffles_match_sync(
    kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame], planner: str, method: str
) -> None:
    left, right = frames
    with dask.config.set({"dataframe.shuffle.method": method, **RERUN_EVERYTHING}):
        merged = left.merge(right, on="k")
        sums = left.groupby("k").v.sum(split_out=3)
        shuffled = left.shuffle("k")
        got = dask.compute(merged, sums, shuffled, scheduler=kong.get, planner=planner)
        want = dask.compute(merged, sums, shuffled, scheduler="sync")
    pd.testing.assert_frame_equal(sorted_frame(got[0]), sorted_frame(want[0]))
    pd.testing.assert_series_equal(got[1].sort_index(), want[1].sort_index())
    pd.testing.assert_frame_equal(sorted_frame(got[2]), sorted_frame(want[2]))


@pytest.mark.parametrize("planner", PLANNER_NAMES)
def test_a_handle_is_made_once_and_shared_by_every_task(
    kong: Kong, marks: str, planner: str
) -> None:
    dsk, wanted = dir_store_graph(marks)
    expected = sorted(range(40))
    with dask.config.set(RERUN_EVERYTHING):
        got = kong.get(dsk, wanted, planner=planner)
    assert got == (expected, expected)
    assert len(os.listdir(marks)) == 1  # the store was made once, recipes or not
    summary = last_run()
    assert summary is not None
    stateful = {summary.dag.keys[t] for t, m in summary.task_metrics.items() if m.stateful}
    assert stateful == set(dsk)  # the maker and every task that read the handle
    assert not any(m.recipe for m in summary.task_metrics.values())


def count_up_to(n: int) -> Iterator[int]:
    return (i for i in range(n))


@pytest.mark.parametrize("mode", ["threads-redis", "processes"])
def test_a_handle_that_cannot_be_pickled_is_read_where_it_was_made(
    kong_sessions: Any, mode: str
) -> None:
    """A generator (a handle: it changes as it is read) cannot be published to the
    store; its reader runs in the process that made it, as under dask's schedulers."""
    dsk = {"numbers": (count_up_to, 5), "total": (sum, "numbers")}
    assert kong_sessions(mode).get(dsk, "total") == 10


# One representative case of each test above on a Redis Cluster (issue #17), whose
# values spread over its shards while the claims of stateful tasks stay on the run's slot.


@pytest.mark.parametrize("kong", CLUSTER_MODES, indirect=True)
def test_bag_groupby_matches_sync_on_a_cluster(kong: Kong) -> None:
    test_bag_groupby_matches_sync(kong, "everything", "tasks")


@pytest.mark.parametrize("kong", ["processes-cluster"], indirect=True)
def test_dataframe_shuffles_match_sync_on_a_cluster(
    kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame]
) -> None:
    test_dataframe_shuffles_match_sync(kong, frames, "wukong", "disk")
    assert kong.store.run_keys(kong.last_run_id or "") == []


@pytest.mark.parametrize("kong", CLUSTER_MODES, indirect=True)
def test_a_handle_is_made_once_and_shared_by_every_task_on_a_cluster(
    kong: Kong, marks: str
) -> None:
    test_a_handle_is_made_once_and_shared_by_every_task(kong, marks, "everything")
    assert kong.store.run_keys(kong.last_run_id or "") == []


def test_history_keeps_stateful_tasks_from_being_run_again(kong_sessions: Any) -> None:
    """A planner that reads the history never task-dups or duplicates a function that
    was seen making or reading a handle."""
    session = kong_sessions("threads-redis")
    marks = tempfile.mkdtemp(suffix=".kong-marks")
    try:
        dsk, wanted = dir_store_graph(marks)
        session.get(dsk, wanted)
    finally:
        shutil.rmtree(marks, ignore_errors=True)
    ctx = session.planning_context()
    predictor = Predictor(ctx.history, ctx.sla, ctx.resources)
    # the history groups tasks by their key's name (dask's key_split)
    assert predictor.is_stateful("store") and predictor.is_stateful("append")
    assert not predictor.is_stateful("never-seen")


# -- duplicate deliveries -----------------------------------------------------------


class DeliverTwice:
    """A backend wrapper that delivers every invocation twice, as a serverless platform
    with at-least-once delivery may."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.inner.invoke(ctx, [*invocations, *invocations])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("mode", ["embedded", "threads-redis", "threads-cluster"])
def test_a_stateful_task_delivered_twice_acts_once(
    request: pytest.FixtureRequest, marks: str, mode: str
) -> None:
    session = session_of(request, mode)
    dsk, wanted = dir_store_graph(marks)
    inner = session.backend
    session.backend = DeliverTwice(inner)
    try:
        got = session.get(dsk, wanted, planner="naive")  # every dependent invoked
    finally:
        session.backend = inner
    assert got == (sorted(range(40)), sorted(range(40)))  # no append ran twice
    assert session.store.run_keys(session.last_run_id or "") == []


# -- where workers share no disk ----------------------------------------------------


def test_a_disk_shuffle_is_refused_by_name_only_where_workers_share_no_disk() -> None:
    b = db.from_sequence(range(10), npartitions=2)
    grouped = b.groupby(lambda v: v % 2, shuffle="disk")
    dag = to_dag(dict(grouped.__dask_graph__()), grouped.__dask_keys__())
    check_shippable(dag, shares_machine=True)
    with pytest.raises(KongError, match=r"disk shuffle.*shuffle='tasks'"):
        check_shippable(dag, shares_machine=False)


@pytest.fixture
def lambda_kong(lambda_gateway: Gateway, redis_server: RedisServer) -> Iterator[Kong]:
    """A session on the lambda backend: aiobotocore against the local gateway."""
    kong = lambda_session(lambda_gateway, redis_server.url)
    try:
        yield kong
    finally:
        kong.close()


def test_lambda_runs_a_defaulted_dataframe_shuffle_as_tasks(
    lambda_kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame]
) -> None:
    left, right = frames
    merged = left.merge(right, on="k")  # dask lowers it to its disk shuffle by default
    want = merged.compute(scheduler="sync")
    b = db.from_sequence(range(10), npartitions=2)
    got = dask.compute(merged, scheduler=lambda_kong.get)[0]
    pd.testing.assert_frame_equal(sorted_frame(got), sorted_frame(want))
    with pytest.raises(KongError, match="disk shuffle"):
        dask.compute(b.groupby(lambda v: v % 2, shuffle="disk"), scheduler=lambda_kong.get)
    with lambda_kong:  # inside the block, bags and dataframes build the task shuffle
        got_groups = b.groupby(lambda v: v % 2).compute()
    assert as_multiset(got_groups) == [(0, [0, 2, 4, 6, 8]), (1, [1, 3, 5, 7, 9])]


def test_an_explicit_disk_shuffle_on_lambda_warns(
    lambda_kong: Kong, frames: tuple[dd.DataFrame, dd.DataFrame]
) -> None:
    left, _ = frames
    with (
        dask.config.set({"dataframe.shuffle.method": "disk"}),
        pytest.warns(UserWarning, match="task-based shuffle"),
    ):
        got = left.shuffle("k").compute(scheduler=lambda_kong.get)
    assert len(got) == 400


def test_kong_is_a_scheduler_name() -> None:
    counts = collections.Counter(db.from_sequence([1, 2, 2, 3]).compute(scheduler="kong"))
    assert counts == {1: 1, 2: 2, 3: 1}
