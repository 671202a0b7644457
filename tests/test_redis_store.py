"""`RedisStore` against a real redis-server, and the `Store` contract over every store.

Tests taking `any_store` run on `MemoryStore`, on `RedisStore` and on `RedisClusterStore`
(a real three-shard cluster, where a run's values spread over the shards): passing all
three proves the implementations agree on the protocol. The rest exercise what only Redis
has: TTLs, the order commands reach the server, scripts, connection failures, the private
server's life cycle.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import dask
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from dask_kong.constants import LIVE_KEY, run_prefix
from dask_kong.errors import SerializationError, StoreUnavailableError
from dask_kong.metrics.records import TaskMetrics
from dask_kong.store import lua
from dask_kong.store.base import (
    CommitResult,
    Event,
    EventKind,
    FanIn,
    MissingKeyError,
    Store,
)
from dask_kong.store.memory import MemoryStore
from dask_kong.store.redis import RedisStore, glob_escape, open_store
from dask_kong.store.server import RedisServer, free_port

# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis", "cluster"])
def any_store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """Each store implementation in turn (the Redis ones only start servers if needed)."""
    if request.param in ("redis", "cluster"):
        yield request.getfixturevalue(f"{request.param}_store")
        return
    store = MemoryStore()
    yield store
    store.close()


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    """A run id no other test uses, with glob characters to keep SCAN MATCH honest,
    opened in the test's store (a store takes commits only for an open run)."""
    run = f"run*?[{uuid.uuid4().hex[:8]}]"
    for name in ("any_store", "redis_store", "cluster_store"):
        if name in request.fixturenames:
            request.getfixturevalue(name).open_run(run)
    return run


@pytest.fixture
def raw_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client on the session's server, to look behind the store's back."""
    client = redis.Redis.from_url(redis_server.url)
    yield client
    client.close()


def done(task: int, worker: str = "w") -> Event:
    return Event(EventKind.TASK_DONE, task, worker, metrics=TaskMetrics(worker, exec_s=0.5))


def run_in_threads(count: int, target: Callable[[int], None]) -> None:
    """Run target(i) for i in range(count) on `count` threads released together."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i)
        except BaseException as exc:  # re-raised in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not errors, errors


# --- the Store contract, on both stores ----------------------------------------------


def test_second_write_of_a_key_keeps_first_value_and_reports_zero_bytes(
    any_store: Store, run_id: str
) -> None:
    first = any_store.commit(run_id, {"out:1": "first"})
    second = any_store.commit(run_id, {"out:1": "second"})
    assert first.bytes_written > 0
    assert second.bytes_written == 0
    assert any_store.get_many(run_id, ["out:1"])[0] == ["first"]


def test_fan_in_is_ready_exactly_once_with_duplicate_reports(any_store: Store, run_id: str) -> None:
    marks = [FanIn(9, 1, 3), FanIn(9, 1, 3), FanIn(9, 2, 3), FanIn(9, 2, 3)]
    assert any_store.commit(run_id, {}, marks).ready == []
    assert any_store.commit(run_id, {}, [FanIn(9, 3, 3)]).ready == [9]
    assert any_store.commit(run_id, {}, [FanIn(9, 3, 3), FanIn(9, 1, 3)]).ready == []


def test_parent_reported_twice_never_makes_two_parent_fan_in_ready_before_the_other(
    any_store: Store, run_id: str
) -> None:
    assert any_store.commit(run_id, {"out:1": 1}, [FanIn(5, 1, 2)]).ready == []
    assert any_store.commit(run_id, {"out:1": 1}, [FanIn(5, 1, 2)]).ready == []
    assert any_store.commit(run_id, {"out:2": 2}, [FanIn(5, 2, 2)]).ready == [5]
    assert any_store.commit(run_id, {"out:2": 2}, [FanIn(5, 2, 2)]).ready == []


def test_one_commit_marks_several_fan_ins(any_store: Store, run_id: str) -> None:
    any_store.commit(run_id, {}, [FanIn(7, 2, 2)])
    ready = any_store.commit(run_id, {}, [FanIn(6, 1, 2), FanIn(7, 1, 2), FanIn(8, 1, 1)]).ready
    assert ready == [7, 8]


def test_fan_in_is_ready_exactly_once_under_concurrent_overlapping_reports(
    any_store: Store, run_id: str
) -> None:
    in_degree, threads = 6, 12
    ready: list[int] = []

    def report(i: int) -> None:
        rng = random.Random(i)
        parents = list(range(in_degree)) * 2  # every parent, each reported twice
        rng.shuffle(parents)
        for parent in parents:
            ready.extend(any_store.commit(run_id, {}, [FanIn(99, parent, in_degree)]).ready)

    run_in_threads(threads, report)
    assert ready == [99]


def test_parent_that_makes_child_ready_finds_every_input_under_concurrency(
    any_store: Store, run_id: str
) -> None:
    """Writes land before marks, so whoever completes a fan-in can read all its inputs."""
    parents = 8
    seen: list[list[int]] = []

    def finish_parent(parent: int) -> None:
        result = any_store.commit(
            run_id, {f"out:{parent}": parent}, [FanIn(100, parent, parents)], [done(parent)]
        )
        if result.ready:
            seen.append(any_store.get_many(run_id, [f"out:{p}" for p in range(parents)])[0])

    run_in_threads(parents, finish_parent)
    assert seen == [list(range(parents))]


def test_events_round_trip_in_order_and_cursor_resumes(any_store: Store, run_id: str) -> None:
    failed = Event(EventKind.TASK_FAILED, 3, "w2", error=b"pickled", message="ValueError: x")
    any_store.commit(run_id, {}, (), [done(1), done(2)])
    cursor, events = any_store.events(run_id, "0", 1.0)
    assert events == [done(1), done(2)]
    any_store.commit(run_id, {}, (), [failed])
    cursor, events = any_store.events(run_id, cursor, 1.0)
    assert events == [failed]
    assert any_store.events(run_id, cursor, 0) == (cursor, [])


def test_events_with_timeout_return_empty_without_hanging(any_store: Store, run_id: str) -> None:
    started = time.monotonic()
    assert any_store.events(run_id, "0", 0.2) == ("0", [])
    assert 0.15 <= time.monotonic() - started < 1.5
    assert any_store.events(run_id, "0", 0) == ("0", [])


def test_events_wait_wakes_up_when_an_event_arrives(any_store: Store, run_id: str) -> None:
    timer = threading.Timer(0.1, lambda: any_store.commit(run_id, {}, (), [done(4)]))
    timer.start()
    started = time.monotonic()
    _, events = any_store.events(run_id, "0", 5.0)
    timer.join()
    assert events == [done(4)]
    assert time.monotonic() - started < 2.0


def test_get_many_returns_values_in_order_and_bytes_read(any_store: Store, run_id: str) -> None:
    written = any_store.commit(run_id, {"out:1": [1, 2, 3], "data:x": {"a": 1}}).bytes_written
    values, nbytes = any_store.get_many(run_id, ["data:x", "out:1"])
    assert values == [{"a": 1}, [1, 2, 3]]
    assert nbytes == written > 0
    assert any_store.get_many(run_id, []) == ([], 0)


def test_get_many_raises_missing_key_error_naming_the_key(any_store: Store, run_id: str) -> None:
    any_store.commit(run_id, {"out:1": 1})
    with pytest.raises(MissingKeyError, match="out:7"):
        any_store.get_many(run_id, ["out:1", "out:7"])


def test_exists_and_sizes_see_only_written_keys(any_store: Store, run_id: str) -> None:
    any_store.commit(run_id, {"out:1": "x" * 1000})
    assert any_store.exists(run_id, "out:1")
    assert not any_store.exists(run_id, "out:2")
    big, absent = any_store.sizes(run_id, ["out:1", "out:2"])
    assert big >= 1000
    assert absent == 0


def test_heartbeat_makes_worker_live_for_ttl_only(any_store: Store, run_id: str) -> None:
    any_store.open_run(run_id)
    any_store.heartbeat(run_id, {"w1": 3, "w2": 5})
    any_store.heartbeat(run_id, {"w1": 4})
    assert any_store.live_workers(run_id, 5.0) == {"w1": 4, "w2": 5}
    assert any_store.live_workers(run_id, 0.0) == {}
    assert any_store.live_workers("no-such-run", 5.0) == {}


def test_a_beat_after_the_run_was_deleted_recreates_nothing(any_store: Store, run_id: str) -> None:
    """A worker's heartbeat thread may push its last beat after the client deleted the
    run's keys: it must leave no key (nor, in memory, a run) behind."""
    never_opened = run_id + "-never"
    any_store.heartbeat(never_opened, {"w": 1})
    assert any_store.live_workers(never_opened, 5.0) == {}
    assert any_store.run_keys(never_opened) == []
    any_store.heartbeat(run_id, {"w": 1})
    assert any_store.live_workers(run_id, 5.0) == {"w": 1}
    any_store.delete_run(run_id)
    any_store.heartbeat(run_id, {"w": 1})
    assert any_store.run_keys(run_id) == []
    assert any_store.live_workers(run_id, 5.0) == {}


def test_cancel_flags_only_its_own_run(any_store: Store, run_id: str) -> None:
    assert not any_store.is_cancelled(run_id)
    any_store.cancel(run_id)
    assert any_store.is_cancelled(run_id)
    other = run_id + "-other"
    assert any_store.is_cancelled(other)  # not open: nothing to run for
    any_store.open_run(other)
    assert not any_store.is_cancelled(other)
    any_store.delete_run(other)
    assert any_store.is_cancelled(other)  # deleted: its stragglers stop


def test_delete_run_leaves_no_key_and_spares_other_runs(any_store: Store, run_id: str) -> None:
    # `run_id` holds glob characters: unescaped, its SCAN pattern would match `neighbour`.
    neighbour = run_id.replace("*", "x").replace("?", "y")
    for run in (run_id, neighbour):
        any_store.open_run(run)
        any_store.commit(run, {"out:1": 1}, [FanIn(2, 1, 2)], [done(1)])
        any_store.heartbeat(run, {"w": 1})
        any_store.cancel(run)
    assert {"out:1", "fanin:2"} <= set(any_store.run_keys(run_id))
    assert any_store.delete_run(run_id) >= 3
    assert any_store.run_keys(run_id) == []
    assert any_store.get_many(neighbour, ["out:1"])[0] == [1]
    assert {"out:1", "fanin:2"} <= set(any_store.run_keys(neighbour))
    assert any_store.delete_run(run_id) == 0


# --- Redis only ---------------------------------------------------------------------


def test_commit_reaches_server_as_writes_then_marks_then_events(
    redis_store: RedisStore, raw_redis: redis.Redis, run_id: str
) -> None:
    redis_store.commit(run_id, {}, [FanIn(3, 0, 2)])  # the mark script is now cached
    with raw_redis.monitor() as monitor:
        redis_store.commit(run_id, {"out:1": 1}, [FanIn(3, 1, 2)], [done(1)])
        commands: list[str] = []
        while not commands or commands[-1] != "EXPIRE" or "XADD" not in commands:
            commands.append(monitor.next_command()["command"].split()[0].upper())
    order = [c for c in commands if c in {"SET", "EVALSHA", "SADD", "SCARD", "XADD"}]
    # The output's SET, then the script (its SADD, SCARD and the ready claim's SET), then XADD.
    assert order == ["SET", "EVALSHA", "SADD", "SCARD", "SET", "XADD"]
    # One pipeline, nothing else: no SCRIPT EXISTS/LOAD round-trip before it.
    assert not any(c.startswith("SCRIPT") for c in commands)


def test_long_event_wait_blocks_in_slices_shorter_than_the_socket_timeout(
    redis_server: RedisServer, run_id: str
) -> None:
    # A wait 2.5x the socket timeout; slices leave 0.3 s of slack for a loaded machine.
    with dask.config.set({"kong.store.socket_timeout_s": 0.6, "kong.store.retries": 0}):
        store = RedisStore(redis_server.url)
    try:
        started = time.monotonic()
        assert store.events(run_id, "0", 1.5) == ("0", [])  # no socket timeout fired
        assert 1.45 <= time.monotonic() - started < 4.0
    finally:
        store.close()


def test_every_key_of_a_run_has_a_ttl(
    redis_store: RedisStore, raw_redis: redis.Redis, run_id: str
) -> None:
    redis_store.open_run(run_id)
    redis_store.commit(run_id, {"out:1": 1}, [FanIn(2, 1, 1), FanIn(3, 1, 2)], [done(1)])
    redis_store.heartbeat(run_id, {"w": 1})
    redis_store.cancel(run_id)
    keys = list(raw_redis.scan_iter(match=glob_escape(run_prefix(run_id)) + "*"))
    assert len(keys) == 8  # live, out, 2 fan-in sets, ready claim, events, heartbeats, cancel
    ttls = {key: raw_redis.pttl(key) for key in keys}
    assert all(ttl > 0 for ttl in ttls.values()), ttls


def test_fan_in_retry_with_same_token_still_learns_it_made_child_ready(
    raw_redis: redis.Redis, run_id: str
) -> None:
    """A commit whose reply was lost is retried with its token; duplicates are not."""
    parents = run_prefix(run_id) + "fanin:1"
    keys = [parents, parents + ":ready"]

    def mark(token: str, parent: int, retake: int = 0) -> list[int]:
        ready: list[int] = raw_redis.eval(
            lua.MARK_PARENTS_DONE, 2, *keys, 60, token, parent, 2, retake
        )
        return ready

    assert mark("commit-a", 10) == [0]
    assert mark("commit-b", 11) == [1]
    assert mark("commit-b", 11) == [1]  # retry of the winning commit
    assert mark("commit-c", 11) == [0]  # duplicate delivery of the winning parent
    assert mark("commit-a", 10) == [0]  # retry of the other parent's commit
    # a re-invoked branch (its worker lost) of the winning parent takes the child back;
    # one of the other parent does not
    assert mark("commit-d", 11, retake=1) == [1]
    assert mark("commit-e", 10, retake=1) == [0]


def test_fan_in_retake_in_every_store(any_store: Store, run_id: str) -> None:
    """A re-invoked parent whose lost worker completed a fan-in continues with the child;
    the other parent's re-invocation, or a duplicate that does not retake, does not."""
    any_store.open_run(run_id)
    assert any_store.commit(run_id, {}, [FanIn(1, 10, 2)]).ready == []
    assert any_store.commit(run_id, {}, [FanIn(1, 11, 2)]).ready == [1]
    assert any_store.commit(run_id, {}, [FanIn(1, 11, 2)]).ready == []
    assert any_store.commit(run_id, {}, [FanIn(1, 10, 2, retake=True)]).ready == []
    assert any_store.commit(run_id, {}, [FanIn(1, 11, 2, retake=True)]).ready == [1]
    any_store.delete_run(run_id)


def test_commit_recovers_when_server_forgets_its_scripts(
    redis_store: RedisStore, raw_redis: redis.Redis, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dask_kong.store")
    assert redis_store.commit(run_id, {}, [FanIn(4, 1, 2)]).ready == []
    raw_redis.script_flush()
    assert redis_store.commit(run_id, {}, [FanIn(4, 2, 2)]).ready == [4]
    assert "lost its scripts" in caplog.text
    redis_store.open_run(run_id)
    redis_store.heartbeat(run_id, {"w": 1})  # the heartbeat script reloads itself
    assert redis_store.live_workers(run_id, 5.0) == {"w": 1}


def test_unpicklable_value_raises_serialization_error(redis_store: RedisStore, run_id: str) -> None:
    with pytest.raises(SerializationError, match="out:1"):
        redis_store.commit(run_id, {"out:1": threading.Lock()})
    assert redis_store.run_keys(run_id) == [LIVE_KEY]  # only the mark of open_run


def test_unreachable_redis_raises_store_unavailable_naming_address_quickly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dask_kong.store")
    port = free_port()  # nobody listens there
    fast = {
        "kong.store.retries": 2,
        "kong.store.retry_base_s": 0.01,
        "kong.store.retry_max_s": 0.02,
    }
    with dask.config.set(fast):
        store = RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0")
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        store.exists("r", "out:1")
    store.close()
    assert time.monotonic() - started < 2.0
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value) + caplog.text
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2


def test_private_server_refuses_clients_without_its_password(redis_server: RedisServer) -> None:
    no_retries = Retry(NoBackoff(), 0)  # redis-py's default retries a refusal for seconds
    anonymous = redis.Redis(host="127.0.0.1", port=redis_server.port, retry=no_retries)
    with anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with pytest.raises(StoreUnavailableError, match="credentials"):
        open_store(f"redis://127.0.0.1:{redis_server.port}/0")


def test_private_server_keeps_its_password_out_of_the_process_list(
    redis_server: RedisServer,
) -> None:
    with open(f"/proc/{redis_server.pid}/cmdline", "rb") as f:
        assert redis_server.password.encode() not in f.read()


def test_server_stop_leaves_no_process_and_no_files(run_id: str) -> None:
    server = RedisServer(unix_socket=True)
    assert server.unix_url is not None
    store = RedisStore(server.unix_url)
    store.open_run(run_id)
    store.commit(run_id, {"out:1": 1})
    assert store.get_many(run_id, ["out:1"])[0] == [1]
    store.close()
    pid = server.pid
    assert pid is not None
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not os.path.exists(server.dir)
    server.stop()  # idempotent
    assert server.pid is None


def test_closing_a_store_from_open_store_stops_its_private_server() -> None:
    store = open_store("redis")
    server = store._owned_server
    assert server is not None and server.pid is not None
    pid = server.pid
    store.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_open_store_uses_the_configured_url_instead_of_a_private_server(
    redis_server: RedisServer,
) -> None:
    with dask.config.set({"kong.store.url": redis_server.url}):
        store = open_store("redis")
    try:
        assert store._owned_server is None
        assert store.address == redis_server.address
    finally:
        store.close()
    with pytest.raises(ValueError, match="unknown Redis store"):
        open_store("memcached://nope")


def test_server_that_dies_at_start_raises_with_its_output(tmp_path: Path) -> None:
    broken = tmp_path / "redis-server"
    broken.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(StoreUnavailableError, match="FATAL CONFIG FILE ERROR") as info:
        RedisServer(binary=str(broken))
    assert "exited with code 1" in str(info.value)


def test_claim_is_won_by_the_first_caller_only(any_store: Store, run_id: str) -> None:
    assert any_store.claim(run_id, ["a", "b"]) == [True, True]
    assert any_store.claim(run_id, ["a", "c"]) == [False, True]
    other = run_id + "x"
    assert any_store.claim(other, ["a"]) == [False]  # not open: nothing to claim
    any_store.open_run(other)
    assert any_store.claim(other, ["a"]) == [True]  # claims are per run
    any_store.delete_run(other)


def test_fan_in_progress_counts_distinct_parents(any_store: Store, run_id: str) -> None:
    any_store.commit(run_id, {}, [FanIn(7, 1, 3), FanIn(7, 1, 3), FanIn(8, 2, 2)])
    assert any_store.fan_in_progress(run_id, [7, 8, 9]) == [1, 1, 0]
    any_store.delete_run(run_id)
    assert any_store.fan_in_progress(run_id, [7]) == [0]


def test_values_larger_than_the_part_size_round_trip_in_parts(
    redis_server: RedisServer, raw_redis: redis.Redis, run_id: str
) -> None:
    with dask.config.set({"kong.store.max_value_bytes": 1000}):
        store = RedisStore(redis_server.url)
    try:
        store.open_run(run_id)
        big = bytes(range(256)) * 40  # ~10 KB pickled: 11 parts
        result = store.commit(run_id, {"out:1": big, "out:2": b"small"})
        assert result.bytes_written > len(big)
        (got_big, got_small), _ = store.get_many(run_id, ["out:1", "out:2"])
        assert got_big == big and got_small == b"small"
        assert store.commit(run_id, {"out:1": b"other"}).bytes_written < 1000  # write-once
        store.commit(run_id, {"out:1": bytes(10_000)})  # a large duplicate: own parts
        assert store.get_many(run_id, ["out:1"])[0] == [big]
        assert len(store.run_keys(run_id)) > 10
        store.delete_run(run_id)
        assert store.run_keys(run_id) == []
    finally:
        store.close()


def test_get_many_mixes_large_and_small_values_in_order(
    redis_store: RedisStore, run_id: str
) -> None:
    """Large values are read one GET each, small ones in one MGET: the order holds, and an
    absent key among them is still named."""
    big = b"x" * (3 << 20)
    values = {"out:1": 1, "out:2": big, "out:3": "small", "out:4": big + b"y"}
    redis_store.commit(run_id, values)
    keys = ["out:4", "out:3", "out:2", "out:1"]
    got, nbytes = redis_store.get_many(run_id, keys)
    assert got == [values[k] for k in keys]
    assert nbytes > 2 * len(big)
    with pytest.raises(MissingKeyError, match="out:9"):
        redis_store.get_many(run_id, ["out:2", "out:9", "out:1"])


def test_a_commit_after_the_run_was_deleted_leaves_nothing(any_store: Store, run_id: str) -> None:
    """A straggler that outlives its failed run commits its output, fan-in marks and
    events after the client deleted the run's keys: the store drops all of it."""
    any_store.commit(run_id, {"out:1": 1}, [FanIn(5, 1, 2)], [done(1)])
    any_store.delete_run(run_id)
    late = any_store.commit(run_id, {"out:2": 2}, [FanIn(5, 2, 2)], [done(2)])
    assert late == CommitResult()  # nothing written, nothing ready
    assert any_store.claim(run_id, ["delay-io:5"]) == [False]
    assert any_store.run_keys(run_id) == []
    never_opened = run_id + "-never"
    assert any_store.commit(never_opened, {"out:1": 1}, [], [done(1)]) == CommitResult()
    assert any_store.run_keys(never_opened) == []
