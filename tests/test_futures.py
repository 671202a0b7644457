"""dask_kong.Client: distributed's futures API, on the embedded and processes modes (and
the lambda backend through the local gateway for submit/gather), with and without
duplicate deliveries; no value held and no store key left once the Futures are gone."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

import dask_kong
from dask_kong import Client, Future, Kong, as_completed, wait
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.futures import FIRST_COMPLETED, FutureCancelledError
from dask_kong.futures.batch import chunk_size
from dask_kong.invocation.model import Invocation
from dask_kong.options import UnsupportedOptionWarning, forget_warnings
from dask_kong.runtime.context import RunContext
from dask_kong.store.server import RedisServer
from dask_kong.waits import poll_until

MODES = ("embedded", "processes")


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def total(values: Sequence[int], extra: dict[str, int]) -> int:
    return sum(values) + sum(extra.values())


def fails(x: int) -> int:
    raise ValueError(f"bad input {x}")


@pytest.fixture(params=MODES)
def client(
    request: pytest.FixtureRequest, kong_sessions: Callable[[str], Kong]
) -> Iterator[Client]:
    """A client on each mode's shared session (its workers are warm)."""
    session = kong_sessions(request.param)
    with Client(session=session, set_as_default=False) as c:
        yield c
    assert not session._closed  # a client closes only a session it opened


def kept_keys(session: Kong) -> list[str]:
    """The values the session keeps in its store beyond a run (futures', persisted)."""
    if session.session_keys is None:
        return []
    return [k for k in session.store.run_keys(session.session_keys.scope) if k.startswith("kept:")]


def assert_nothing_left(client: Client) -> None:
    """No value held by the client, no key of the last run, and (within the client's
    release interval) no future's value left in the session's store."""
    gc.collect()
    assert client.held_keys() == []
    session = client.session
    assert session.store.run_keys(session.last_run_id or "") == []
    assert poll_until(lambda: not kept_keys(session), 10), kept_keys(session)


def test_submit_map_gather_with_futures_as_arguments(client: Client) -> None:
    first = client.submit(inc, 1)
    assert isinstance(first, Future)
    assert first.result(timeout=60) == 2 and first.done() and first.status == "finished"
    mapped = client.map(inc, range(20))
    summed = client.submit(total, mapped, extra={"a": first, "b": client.submit(add, 1, 2)})
    assert summed.result(timeout=60) == sum(range(1, 21)) + 2 + 3
    assert client.gather(mapped) == list(range(1, 21))
    assert client.gather({"x": [first], "y": (first,)}) == {"x": [2], "y": (2,)}
    del first, mapped, summed
    assert_nothing_left(client)


def test_a_tree_of_submits_matches_the_sum(client: Client) -> None:
    level = client.map(inc, range(64))
    while len(level) > 1:
        level = [client.submit(add, a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    assert level[0].result(timeout=60) == sum(range(1, 65))
    del level
    assert_nothing_left(client)


def test_a_failing_call_fails_itself_and_its_dependents_only(client: Client) -> None:
    bad = client.submit(fails, 7)
    dependent = client.submit(inc, bad)
    fine = client.submit(inc, 41)
    assert fine.result(timeout=60) == 42
    with pytest.raises(ValueError, match="bad input 7") as info:
        bad.result(timeout=60)
    assert any("Remote traceback" in note for note in getattr(info.value, "__notes__", ()))
    assert "fails" in bad.traceback()
    assert isinstance(dependent.exception(timeout=60), ValueError)
    assert dependent.status == "error"
    # an input that failed in an earlier batch fails a later call without running it
    later = client.submit(inc, bad)
    assert isinstance(later.exception(timeout=60), ValueError)
    del bad, dependent, fine, later, info
    assert_nothing_left(client)


def fails_if_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd {x}")
    return x


def test_calls_packed_into_one_task_fail_one_by_one(client: Client) -> None:
    """A map's calls run several to a task (kong.client.calls_per_task): one failing
    call fails its own Future and its dependents', not its neighbours'."""
    with dask.config.set({"kong.client.calls_per_task": 4}):
        mapped = client.map(fails_if_odd, range(10))
        doubled = [client.submit(add, f, f) for f in mapped]
    assert [f.exception(timeout=60) is None for f in mapped] == [x % 2 == 0 for x in range(10)]
    assert [d.result() for d in doubled[::2]] == [2 * x for x in range(0, 10, 2)]
    assert all(isinstance(d.exception(), ValueError) for d in doubled[1::2])
    assert client.gather(mapped[::2]) == list(range(0, 10, 2))
    assert client.gather(mapped, errors="skip") == list(range(0, 10, 2))
    del mapped, doubled
    assert_nothing_left(client)


def test_as_completed_and_wait(client: Client) -> None:
    futures = client.map(inc, range(10))
    seen = sorted(f.result() for f in as_completed(futures))
    assert seen == list(range(1, 11))
    pairs = as_completed(client.map(inc, range(3)), with_results=True)
    extra = client.submit(inc, 100)
    pairs.add(extra)
    assert sorted(v for _, v in pairs) == [1, 2, 3, 101]
    done, not_done = wait(futures, timeout=60)
    assert done == set(futures) and not not_done
    assert wait(futures, return_when=FIRST_COMPLETED).done
    errors = as_completed([client.submit(fails, 1)], with_results=True, raise_errors=False)
    assert [type(e) for _, e in errors] == [ValueError]
    del futures, pairs, extra, done, not_done, errors
    assert_nothing_left(client)


def test_cancel_and_done_callbacks(client: Client) -> None:
    calls: list[Any] = []
    future = client.submit(inc, 5)
    future.add_done_callback(lambda f: calls.append(f.result()))
    assert future.result(timeout=60) == 6
    future.add_done_callback(lambda f: calls.append("late"))
    assert calls == [6, "late"]
    cancelled = client.submit(inc, 1000)
    assert cancelled.cancel() and cancelled.cancelled()
    with pytest.raises(FutureCancelledError):
        cancelled.result(timeout=1)
    assert isinstance(client.submit(inc, cancelled).exception(timeout=60), FutureCancelledError)
    del future, cancelled
    assert_nothing_left(client)


def test_compute_persist_and_scatter(client: Client) -> None:
    array = da.from_array(np.arange(100.0), chunks=10)
    future = client.compute(array.sum())
    futures = client.compute([array.mean(), array.max()])
    assert future.result(timeout=60) == 4950.0
    assert client.gather(futures) == [49.5, 99.0]
    assert client.compute(array.sum(), sync=True) == 4950.0
    persisted = client.persist(array + 1)
    assert float((persisted * 2).sum().compute(scheduler=client.get)) == 2 * 5050.0
    scattered = client.scatter([1, 2, 3])
    named = client.scatter({"a": 10})
    assert client.gather(client.map(add, scattered, [named["a"]] * 3)) == [11, 12, 13]
    assert client.scatter(5).result() == 5
    del future, futures, scattered, named, persisted
    assert_nothing_left(client)


def test_release_keeps_a_value_until_its_last_future_goes(client: Client) -> None:
    one = client.submit(inc, 1)
    two = client.submit(inc, 1)  # pure: the same key, the same computation
    assert one.key == two.key and one.result(timeout=60) == 2
    one.release()
    assert client.held_keys() == [two.key] and two.result() == 2
    del one, two
    assert_nothing_left(client)
    impure = client.map(inc, [1, 1], pure=False)
    assert impure[0].key != impure[1].key


@pytest.mark.parametrize("mode", ["threads-redis", "processes"])
def test_values_stay_in_the_store_until_released(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    """With a store outside the client, a Future's value is in the session's store, not
    in the client: read at result() and gather, read there by the workers of a later
    call, and deleted when its Future is released or cancelled, or the client closes."""
    session = kong_sessions(mode)
    client = Client(session=session, set_as_default=False)
    with dask.config.set({"kong.client.calls_per_task": 5}):
        mapped = client.map(inc, range(12))  # with `alone`: packed chunks, kept whole
        alone = client.submit(add, 1, 2)
        assert alone.result(timeout=60) == 3 and client.gather(mapped) == list(range(1, 13))
    assert set(client.who_has().values()) == {("store",)}  # the client holds no value
    size = chunk_size(13, 5, client._tasks_wanted())
    chunks = -(-13 // size)  # one kept value per packed chunk
    assert size > 1 and len(kept_keys(session)) == chunks
    scattered = client.scatter(np.ones(100_000))  # 800 kB
    assert len(kept_keys(session)) == chunks + 1
    summed = client.submit(total, [*mapped[:7], alone], extra={"s": client.submit(sum, mapped)})
    assert summed.result(timeout=60) == sum(range(1, 8)) + 3 + sum(range(1, 13))
    assert client.submit(np.sum, scattered).result(timeout=60) == 100_000.0
    run = dask_kong.last_run()  # its worker read the 800 kB in the store: not shipped
    assert run is not None and run.client_bytes_uploaded < 20_000, run

    def kept_now(n: int) -> bool:
        gc.collect()
        return len(kept_keys(session)) == n

    assert sorted(f.result() for f in as_completed(mapped)) == list(range(1, 13))
    assert poll_until(lambda: kept_now(chunks + 2), 10), kept_keys(session)  # + summed
    del mapped  # the chunks go but the one that holds `alone`
    assert poll_until(lambda: kept_now(3), 10), kept_keys(session)
    assert alone.cancel() and alone.cancelled()
    with pytest.raises(FutureCancelledError):
        alone.result()
    assert poll_until(lambda: kept_now(2), 10), kept_keys(session)
    summed.release()
    assert poll_until(lambda: kept_now(1), 10), kept_keys(session)
    assert client.gather(scattered).sum() == 100_000.0
    client.close()  # with a Future still alive: its value goes too
    assert kept_keys(session) == []
    with pytest.raises(FutureCancelledError):
        scattered.result()


@pytest.mark.parametrize("mode", ["embedded", "threads-redis"])
def test_runs_of_one_client_go_on_at_once(kong_sessions: Callable[[str], Kong], mode: str) -> None:
    """Two computations in flight together: one waits for an event only the other sets,
    which would time out if the client ran them one after the other."""
    started = threading.Event()

    def waiter() -> bool:
        return started.wait(30)

    def setter() -> bool:
        started.set()
        return True

    with Client(session=kong_sessions(mode), set_as_default=False) as client:
        first = client.compute(dask.delayed(waiter)())
        time.sleep(0.05)
        second = client.compute(dask.delayed(setter)())
        assert first.result(timeout=60) is True and second.result(timeout=60) is True


class DeliverTwice:
    """Every invocation delivered twice, as at-least-once platforms may."""

    def __init__(self, backend: Any) -> None:
        self.inner = backend

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.inner.invoke(ctx, [*invocations, *invocations])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_futures_under_duplicate_deliveries(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    session = kong_sessions(mode)
    inner = session.backend
    session.backend = DeliverTwice(inner)
    try:
        with Client(session=session, set_as_default=False) as client:
            level = client.map(inc, range(16))
            while len(level) > 1:
                level = [
                    client.submit(add, a, b) for a, b in zip(level[::2], level[1::2], strict=True)
                ]
            bad = client.submit(fails, 1)
            assert level[0].result(timeout=60) == sum(range(1, 17))
            assert isinstance(bad.exception(timeout=60), ValueError)
            del level, bad
            assert_nothing_left(client)
    finally:
        session.backend = inner


def test_submit_and_gather_on_lambda(lambda_gateway: Gateway, redis_server: RedisServer) -> None:
    with Client(
        backend="lambda",
        store=redis_server.url,
        endpoint_url=lambda_gateway.url,
        function=lambda_gateway.default_function,
        set_as_default=False,
    ) as client:
        futures = client.map(inc, range(8))
        summed = client.submit(sum, futures)
        assert summed.result(timeout=60) == sum(range(1, 9))
        assert client.gather(futures) == list(range(1, 9))
        bad = client.submit(fails, 3)
        assert isinstance(bad.exception(timeout=60), ValueError)
        del futures, summed, bad
        assert_nothing_left(client)
        session = client.session
    assert session._closed  # the client opened it, the client closed it


def test_client_is_the_default_scheduler_while_open() -> None:
    with Client(backend="threads", store="memory", workers=2) as client:
        assert dask.config.get("scheduler") == client.get
        assert da.ones(10, chunks=5).sum().compute() == 10
    assert dask.config.get("scheduler", None) != client.get
    with pytest.raises(RuntimeError, match="closed"):
        client.submit(inc, 1)
    with pytest.raises(ValueError, match="no scheduler address"):
        Client("tcp://127.0.0.1:8786")


def test_unhonoured_submit_keywords_warn_once_by_name() -> None:
    forget_warnings()
    with Client(backend="threads", store="memory", workers=1, set_as_default=False) as client:
        with pytest.warns(UnsupportedOptionWarning, match="'workers'"):
            first = client.submit(inc, 1, workers=["a"])
        with dask.config.set({"kong.client.batch_window_s": 0.0}):
            second = client.submit(inc, 2, workers=["a"])  # no second warning
        assert first.result(timeout=60) == 2 and second.result(timeout=60) == 3


_flaky_calls: dict[str, int] = {}


def flaky(name: str, failures: int) -> str:
    """Raises `failures` times per name in this process, then returns the name."""
    _flaky_calls[name] = _flaky_calls.get(name, 0) + 1
    if _flaky_calls[name] <= failures:
        raise OSError(f"{name}: try {_flaky_calls[name]} failed")
    return name


def test_submit_retries_a_failing_call() -> None:
    with Client(backend="threads", store="memory", workers=1, set_as_default=False) as client:
        assert client.submit(flaky, "a", 2, retries=2).result(timeout=60) == "a"
        assert client.map(flaky, ["b", "c"], [1, 1], retries=1) is not None
        gave_up = client.submit(flaky, "d", 5, retries=1)
        assert isinstance(gave_up.exception(timeout=60), OSError)
        assert _flaky_calls["d"] == 2
        with pytest.raises(ValueError, match="retries must be"):
            client.submit(flaky, "e", 0, retries=-1)


@pytest.mark.timeout(180)
def test_futures_survive_workers_killed_mid_branch(kong_sessions: Callable[[str], Kong]) -> None:
    """Worker processes die mid-branch (kong.faults: about a third of the first
    attempts, at every kill point); their branches are invoked again and every Future
    gets its right value, with nothing left behind."""
    settings = {
        "kong.faults.kill_fraction": 0.3,
        "kong.faults.seed": 5,
        "kong.faults.duplicate_fraction": 0.2,
    }
    with (
        dask.config.set(settings),
        Client(session=kong_sessions("processes"), set_as_default=False) as client,
    ):
        level = client.map(inc, range(32))
        while len(level) > 1:
            pairs = zip(level[::2], level[1::2], strict=True)
            level = [client.submit(add, a, b) for a, b in pairs]
        assert level[0].result(timeout=150) == sum(range(1, 33))
        del level, pairs  # a spent zip still holds its second list
        assert_nothing_left(client)


def sleeps(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_close_timeout_cancels_runs_in_flight(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    """close(timeout=) waits at most `timeout` for runs in flight, then cancels them
    (workers stopped, keys deleted) and returns; a run that ends in time is kept."""
    session = kong_sessions(mode)
    client = Client(session=session, set_as_default=False)
    quick = client.submit(sleeps, 0.1)
    assert quick.result(timeout=60) == 0.1
    slow = client.submit(sleeps, 10.0)
    slow_compute = client.compute(dask.delayed(sleeps, pure=False)(10.0))
    time.sleep(0.5)  # both runs are in flight
    started = time.monotonic()
    client.close(timeout=1.0)
    took = time.monotonic() - started
    assert 0.9 <= took < 4.0, took
    assert slow.cancelled() and slow_compute.cancelled()
    with pytest.raises(FutureCancelledError):
        slow.result(timeout=1)
    run_id = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run_id) == [], 10)
    assert kept_keys(session) == []
    with Client(session=session, set_as_default=False) as again:  # the session goes on
        assert again.submit(inc, 1).result(timeout=60) == 2
        again.close(timeout=30)  # nothing in flight: returns at once
    unclosed = Client(session=session, set_as_default=False)
    with pytest.raises(ValueError, match="timeout must be"):
        unclosed.close(timeout=-1)
    unclosed.close()


def test_calls_are_packed_by_depth_without_starving_workers() -> None:
    """A tree of submits packs each level into a few tasks (not one task per call), and
    few calls are spread over the workers rather than packed into one task."""
    from dask_kong.futures.batch import Submission, build_graph

    level = [Submission(f"leaf-{i}", inc, (i,), {}) for i in range(64)]
    batch = list(level)
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=True)
        level = [
            Submission(f"{a.key}+{b.key}", add, (), {}, needs={a.key, b.key}) for a, b in pairs
        ]
        batch += level
    built = build_graph(batch, {}, calls_per_task=100, tasks_wanted=8)
    # 64 leaves, then levels of 32, 16, 8 calls in 8 tasks each, then 4, 2, 1 alone
    assert len(built.keys) == 8 + 8 + 8 + 8 + 4 + 2 + 1
    assert {built.places[s.key] for s in batch[:8]} == {("kong-calls-leaf-0", i) for i in range(8)}
    few = [Submission(f"slow-{i}", inc, (i,), {}) for i in range(8)]
    assert len(build_graph(few, {}, calls_per_task=100, tasks_wanted=8).keys) == 8
    assert len(build_graph(few, {}, calls_per_task=100, tasks_wanted=None).keys) == 1


def test_a_square_array_and_its_transpose_name_two_futures(client: Client) -> None:
    """dask's tokenize gives X and X.T one token: pure calls and hashed scatters are
    named by the arrays' content instead, so neither shares the other's Future."""
    x = np.random.default_rng(23).random((64, 64))
    by_rows, by_columns = client.submit(np.sum, x, axis=0), client.submit(np.sum, x.T, axis=0)
    assert by_rows.key != by_columns.key
    np.testing.assert_allclose(by_columns.result(), x.T.sum(axis=0))
    first, second = client.scatter([x, x.T])
    assert first.key != second.key
    np.testing.assert_array_equal(second.result(), x.T)
