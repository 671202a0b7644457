"""dask-kong on a real three-shard Redis Cluster (issue #17).

The `Store` contract runs on the cluster in tests/test_redis_store.py (`any_store`). Here:
what only a cluster has (values spread over the shards while coordination stays on the
run's slot, write-before-mark across shards, per-shard concurrency, cleanup on every
shard, a moved slot), then a representative part of the correctness suite, through the
same door users take: `Kong(store=<URL of one node>)`, with threads and with worker
processes, duplicate deliveries and failures included.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster

from dask_kong import Kong
from dask_kong.constants import LIVE_KEY, run_prefix, spread_prefix
from dask_kong.store.base import Event, EventKind, FanIn, MissingKeyError
from dask_kong.store.cluster import RedisClusterStore
from dask_kong.store.redis import SCAN_PAGE, connect, open_store
from dask_kong.store.server import LocalRedisCluster
from dask_kong.waits import poll_until

from .cluster_fixtures import CLUSTER_SHARDS
from .test_errors import TaskBoomError, boom, inc
from .test_fan_in_and_runtime import WUKONG_EVERYWHERE, random_graph
from .test_stateful_tasks import DeliverTwice

# Seeds of the random-DAG checks: each is a full run (the suites in
# test_fan_in_and_runtime.py run 100 per Redis mode; this is the cluster's share).
CLUSTER_SEEDS = 40
# Long enough for a thread to be scheduled on a loaded 2-core machine, short enough for
# a fast suite: a shard paused this long must not hold up reads from the others.
PAUSE_MS = 1000
# How long a shard holds back writes while a commit to it marks a fan-in elsewhere.
WRITE_PAUSE_MS = 200


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def raw_cluster(redis_cluster: LocalRedisCluster) -> Iterator[RedisCluster]:
    """redis-py's own cluster client, to look behind the store's back."""
    client = RedisCluster.from_url(redis_cluster.url)
    yield client
    client.close()


@pytest.fixture
def run_id(cluster_store: RedisClusterStore) -> str:
    run = f"cluster-{uuid.uuid4().hex[:8]}"
    cluster_store.open_run(run)
    return run


@pytest.fixture
def cluster_kong(cluster_kong_sessions: Callable[[str], Kong]) -> Kong:
    """The shared threads session whose store is the cluster, opened by one node's URL."""
    return cluster_kong_sessions("threads-cluster")


def node_of(raw: RedisCluster, name: str) -> ClusterNode:
    node: ClusterNode = raw.get_node_from_key(name)
    return node


def node_client(raw: RedisCluster, node: ClusterNode) -> redis.Redis:
    client: redis.Redis = raw.get_redis_connection(node)
    return client


def keys_per_shard(raw: RedisCluster, pattern: str) -> dict[str, list[bytes]]:
    """Keys matching `pattern` on each primary (SCAN on each node itself)."""
    return {
        node.name: list(node_client(raw, node).scan_iter(match=pattern, count=1000))
        for node in raw.get_primaries()
    }


def task_on(raw: RedisCluster, run: str, wanted: Callable[[ClusterNode], bool]) -> int:
    """The first task number whose output lands on a shard `wanted` accepts."""
    return next(t for t in range(10_000) if wanted(node_of(raw, f"{spread_prefix(run)}out:{t}")))


def named(name: str) -> Callable[[ClusterNode], bool]:
    """For `task_on`: accepts the shard called `name`."""
    return lambda node: node.name == name


def done(task: int) -> Event:
    return Event(EventKind.TASK_DONE, task, "w")


# --- the store on a cluster ---------------------------------------------------------


def test_the_url_of_any_node_opens_a_store_on_the_whole_cluster(
    redis_cluster: LocalRedisCluster,
) -> None:
    for url in redis_cluster.urls:
        store = open_store(url)
        try:
            assert isinstance(store, RedisClusterStore)
            assert len(store.shards()) == CLUSTER_SHARDS
            assert redis_cluster.password not in repr(store)
        finally:
            store.close()


def test_values_spread_over_every_shard_while_coordination_stays_on_the_runs_slot(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    outputs = {f"out:{t}": t for t in range(60)}
    cluster_store.commit(run_id, outputs, [FanIn(100, t, 60) for t in range(60)], [done(1)])
    cluster_store.commit(run_id, {"data:x": b"y" * 100}, [FanIn(101, 1, 2)])
    cluster_store.heartbeat(run_id, {"w": 1})
    cluster_store.claim(run_id, ["delay-io:5"])
    cluster_store.cancel(run_id)
    values = keys_per_shard(raw_cluster, spread_prefix(run_id).replace("{", "\\{") + "*")
    assert all(len(found) >= 5 for found in values.values()), {k: len(v) for k, v in values.items()}
    assert sum(len(found) for found in values.values()) == 61
    coordination = keys_per_shard(raw_cluster, run_prefix(run_id).replace("{", "\\{") + "*")
    holders = [name for name, found in coordination.items() if found]
    assert len(holders) == 1  # the run's shard, and on it one slot
    slots = {raw_cluster.keyslot(key) for key in coordination[holders[0]]}
    assert slots == {raw_cluster.keyslot(run_prefix(run_id))}
    # live, 2 fan-in sets, the ready claim, events, registry, heartbeats, claim, cancel
    assert len(coordination[holders[0]]) == 9
    assert cluster_store.get_many(run_id, ["out:59", "out:0", "data:x"])[0] == [59, 0, b"y" * 100]


def test_a_value_on_another_shard_is_written_before_its_fan_in_is_marked(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    """The value's shard holds its writes back for a moment: the mark on the run's shard
    must wait for it, not race ahead on its own connection."""
    run_shard = node_of(raw_cluster, run_prefix(run_id))
    task = task_on(raw_cluster, run_id, lambda node: node.name != run_shard.name)
    value_shard = node_of(raw_cluster, f"{spread_prefix(run_id)}out:{task}")
    slow = node_client(raw_cluster, value_shard)
    with slow.monitor() as values, node_client(raw_cluster, run_shard).monitor() as marks:
        slow.execute_command("CLIENT", "PAUSE", WRITE_PAUSE_MS, "WRITE")
        result = cluster_store.commit(run_id, {f"out:{task}": "v"}, [FanIn(9, task, 1)])
        set_at = next_command_time(values, "SET")
        mark_at = next_command_time(marks, "EVAL")
    assert result.ready == [9]
    assert set_at < mark_at


def next_command_time(monitor: Any, prefix: str) -> float:
    """Server time of the next monitored command whose name starts with `prefix`."""
    while True:
        command = monitor.next_command()
        if command["command"].upper().startswith(prefix):
            return float(command["time"])


def test_a_paused_shard_does_not_hold_up_reads_from_the_others(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    """The shards of one `get_many` are read at once: while the first key's shard is
    paused, the others have already served their keys."""
    shards = sorted(raw_cluster.get_primaries(), key=lambda node: node.name)
    tasks = [task_on(raw_cluster, run_id, named(s.name)) for s in shards]
    cluster_store.commit(run_id, {f"out:{t}": t for t in tasks})
    others = [node_client(raw_cluster, shard) for shard in shards[1:]]
    before = [gets_served(client) for client in others]
    got: list[Any] = []
    node_client(raw_cluster, shards[0]).execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
    started = time.monotonic()
    reader = threading.Thread(
        target=lambda: got.extend(cluster_store.get_many(run_id, [f"out:{t}" for t in tasks])[0])
    )
    reader.start()
    served = poll_until(
        lambda: all(gets_served(c) > n for c, n in zip(others, before, strict=True)),
        PAUSE_MS / 1000 * 0.8,
    )
    elapsed = time.monotonic() - started
    reader.join(timeout=5)
    assert served, f"other shards not read within {elapsed:.2f} s of the pause"
    assert got == tasks


def test_a_paused_shard_does_not_hold_up_writes_to_the_others(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    """The shards of one commit's values are written at once: while the first value's
    shard holds back writes, the others already hold theirs (and, since the values come
    first, the fan-in mark waits for all of them)."""
    shards = sorted(raw_cluster.get_primaries(), key=lambda node: node.name)
    tasks = [task_on(raw_cluster, run_id, named(s.name)) for s in shards]
    others = [
        (node_client(raw_cluster, s), f"{spread_prefix(run_id)}out:{t}")
        for s, t in zip(shards[1:], tasks[1:], strict=True)
    ]
    result: list[Any] = []
    node_client(raw_cluster, shards[0]).execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
    started = time.monotonic()
    writer = threading.Thread(
        target=lambda: result.append(
            cluster_store.commit(run_id, {f"out:{t}": t for t in tasks}, [FanIn(9, 0, 1)])
        )
    )
    writer.start()
    written = poll_until(
        lambda: all(client.exists(name) for client, name in others), PAUSE_MS / 1000 * 0.8
    )
    elapsed = time.monotonic() - started
    still_writing = writer.is_alive()
    writer.join(timeout=5)
    assert written, f"other shards not written within {elapsed:.2f} s of the pause"
    assert still_writing  # the paused shard's value, and so the mark, were still to come
    assert result and result[0].ready == [9]
    assert cluster_store.get_many(run_id, [f"out:{t}" for t in tasks])[0] == tasks


def gets_served(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_get", {})
    return int(stats.get("calls", 0))


def test_large_values_are_split_into_parts_on_several_shards_and_leave_nothing(
    redis_cluster: LocalRedisCluster, raw_cluster: RedisCluster
) -> None:
    with dask.config.set({"kong.store.max_value_bytes": 1000}):
        store = connect(redis_cluster.url)
    run = f"parts-{uuid.uuid4().hex[:8]}"
    try:
        store.open_run(run)
        big = bytes(range(256)) * 40  # ~10 KB pickled: 11 parts
        assert store.commit(run, {"out:1": big}).bytes_written > len(big)
        values = keys_per_shard(raw_cluster, spread_prefix(run).replace("{", "\\{") + "*")
        assert sum(1 for found in values.values() if found) >= 2
        assert store.get_many(run, ["out:1"])[0] == [big]
        assert store.sizes(run, ["out:1", "out:2"])[1] == 0
        store.delete_run(run)
        assert store.run_keys(run) == []
    finally:
        store.close()


def test_large_and_small_values_round_trip_across_shards_in_order(
    cluster_store: RedisClusterStore,
    raw_cluster: RedisCluster,
    redis_cluster: LocalRedisCluster,
    run_id: str,
) -> None:
    """Large values go to their shards from threads of their own, and several on one
    shard are read one per connection; the order of `get_many` holds throughout."""
    big = b"x" * (2 << 20)  # above kong.store.cluster_thread_bytes and the read cut-off
    values = {f"out:{t}": (big + bytes([t]) if t % 2 else t) for t in range(8)}
    written = cluster_store.commit(run_id, values).bytes_written
    assert written > 4 * len(big)
    shards = {node_of(raw_cluster, spread_prefix(run_id) + key).name for key in values}
    assert len(shards) == CLUSTER_SHARDS  # some shard holds two or more of them
    keys = [f"out:{t}" for t in (7, 0, 5, 2, 3, 4, 1, 6)]
    got, nbytes = cluster_store.get_many(run_id, keys)  # a connection each
    assert got == [values[k] for k in keys]
    assert nbytes == written
    with dask.config.set({"kong.store.cluster_read_connections": 2}):
        sized = connect(redis_cluster.url)  # sizes first, then batches
    try:
        assert sized.get_many(run_id, keys) == (got, nbytes)
    finally:
        sized.close()
    with pytest.raises(MissingKeyError, match="out:9"):
        cluster_store.get_many(run_id, ["out:1", "out:9", "out:2"])
    one = cluster_store.commit(run_id, {"out:100": big}, [FanIn(200, 100, 1)])  # no threads
    assert one.ready == [200] and cluster_store.get_many(run_id, ["out:100"])[0] == [big]


def test_commits_racing_the_runs_deletion_leave_nothing_on_any_shard(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    """Workers that outlive their run keep committing values to every shard, marks and
    events while the client deletes the run: whatever the interleaving, nothing stays."""
    commits = [0, 0, 0, 0]

    def worker(w: int) -> None:
        for i in range(10_000):
            task = 1000 * w + i
            cluster_store.commit(run_id, {f"out:{task}": i}, [FanIn(task, 0, 2)], [done(task)])
            commits[w] += 1
            if cluster_store.is_cancelled(run_id):
                return

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(len(commits))]
    for thread in threads:
        thread.start()
    assert poll_until(lambda: min(commits) >= 5, 10.0)
    cluster_store.delete_run(run_id)
    for thread in threads:
        thread.join(timeout=10)
    assert cluster_store.run_keys(run_id) == []
    leftovers = keys_per_shard(raw_cluster, f"*{run_id}*")
    assert not any(leftovers.values()), leftovers


def test_deleting_a_run_lists_its_slot_and_scans_no_shard(
    cluster_store: RedisClusterStore, raw_cluster: RedisCluster, run_id: str
) -> None:
    """More coordination keys than one listing holds, behind more foreign keys on the
    same slot than one listing holds: every key of the run goes, the foreign ones stay,
    and no shard was scanned (the cost follows the run, not the shards' size)."""
    fan_ins = [FanIn(child, 0, 2) for child in range(SCAN_PAGE + 100)]
    foreign = [f"other:{{{run_id}}}:{i}" for i in range(SCAN_PAGE + 5)]  # the run's slot
    slot_shard = node_client(raw_cluster, node_of(raw_cluster, run_prefix(run_id)))
    for start in range(0, len(foreign), 500):
        slot_shard.mset({key: 1 for key in foreign[start : start + 500]})
    cluster_store.commit(run_id, {f"out:{t}": t for t in range(30)}, fan_ins, [done(1)])
    clients = [node_client(raw_cluster, node) for node in raw_cluster.get_primaries()]
    for client in clients:
        client.config_resetstat()
    try:
        # the live marker, the values, the fan-in sets, the events and the registry
        assert cluster_store.delete_run(run_id) == 1 + 30 + len(fan_ins) + 2
        scans = [client.info("commandstats").get("cmdstat_scan", {}) for client in clients]
        assert not any(scans), scans
        assert cluster_store.run_keys(run_id) == []
        assert slot_shard.exists(*foreign) == len(foreign)
    finally:
        slot_shard.unlink(*foreign)


def test_a_slot_that_moves_to_another_shard_is_followed(
    cluster_store: RedisClusterStore,
    raw_cluster: RedisCluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a resharding, the store's map of slots is stale: the MOVED reply refreshes
    it and the operation is sent again, to the new owner."""
    run = f"moved-{uuid.uuid4().hex[:8]}"
    slot = raw_cluster.keyslot(run_prefix(run))
    source = node_of(raw_cluster, run_prefix(run))
    target = next(n for n in raw_cluster.get_primaries() if n.name != source.name)
    cluster_store.is_cancelled(run)  # the store now knows the slot's owner: the source
    move_empty_slot(raw_cluster, slot, source, target)
    try:
        caplog.set_level(logging.WARNING, logger="dask_kong.store")
        cluster_store.open_run(run)
        assert "MOVED" in caplog.text or "moved" in caplog.text.lower()
        assert cluster_store.commit(run, {}, [FanIn(3, 1, 1)], [done(1)]).ready == [3]
        assert node_client(raw_cluster, target).exists(run_prefix(run) + LIVE_KEY)
        cluster_store.delete_run(run)
        assert cluster_store.run_keys(run) == []
    finally:
        move_empty_slot(raw_cluster, slot, target, source)


def move_empty_slot(raw: RedisCluster, slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Hand an empty slot from `source` to `target` as a resharding does (IMPORTING,
    MIGRATING, then NODE on the target first), and wait until every node agrees."""
    source_client, target_client = node_client(raw, source), node_client(raw, target)
    target_id = node_id(target_client)
    target_client.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", node_id(source_client))
    source_client.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
    for node in [target, source, *(n for n in raw.get_primaries() if n not in (source, target))]:
        node_client(raw, node).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    clients = [node_client(raw, node) for node in raw.get_primaries()]
    assert poll_until(lambda: all(slot_owner(c, slot) == target_id for c in clients), 5.0)


def node_id(client: redis.Redis) -> str:
    reply = client.execute_command("CLUSTER", "MYID")
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def slot_owner(client: redis.Redis, slot: int) -> str | None:
    """Id of the node that `client`'s node believes owns `slot`."""
    nodes = client.execute_command("CLUSTER", "NODES")
    text = nodes.decode() if isinstance(nodes, bytes) else str(nodes)
    for line in text.splitlines():
        fields = line.split()
        for spec in fields[8:]:
            low, _, high = spec.partition("-")
            if low.isdigit() and int(low) <= slot <= int(high or low):
                return fields[0]
    return None


# --- the correctness suite, on a cluster -----------------------------------------------


@pytest.mark.parametrize("planner", ["wukong", "naive"])
def test_random_dags_match_sync_on_a_cluster(cluster_kong: Kong, planner: str) -> None:
    for seed in range(CLUSTER_SEEDS):
        dsk, wanted = random_graph(seed)
        assert cluster_kong.get(dsk, wanted, planner=planner) == dask.get(dsk, wanted), seed
        assert cluster_kong.store.run_keys(cluster_kong.last_run_id or "") == [], seed


def test_random_dags_match_sync_with_clustering_and_delayed_io_on_a_cluster(
    cluster_kong: Kong,
) -> None:
    with dask.config.set(WUKONG_EVERYWHERE):
        for seed in range(CLUSTER_SEEDS // 2):
            dsk, wanted = random_graph(seed)
            assert cluster_kong.get(dsk, wanted) == dask.get(dsk, wanted), seed
            assert cluster_kong.store.run_keys(cluster_kong.last_run_id or "") == [], seed


def test_every_invocation_delivered_twice_still_gives_one_result_on_a_cluster(
    cluster_kong: Kong,
) -> None:
    inner = cluster_kong.backend
    cluster_kong.backend = DeliverTwice(inner)
    try:
        for seed in range(CLUSTER_SEEDS // 2):
            dsk, wanted = random_graph(seed)
            got = cluster_kong.get(dsk, wanted, planner="naive")
            assert got == dask.get(dsk, wanted), seed
            # A duplicate may still be committing: its late commit must undo itself.
            run = cluster_kong.last_run_id or ""

            def no_keys_left(r: str = run) -> bool:
                return cluster_kong.store.run_keys(r) == []

            assert poll_until(no_keys_left, 5.0), seed
    finally:
        cluster_kong.backend = inner


def test_a_failed_run_on_a_cluster_raises_the_task_error_and_leaves_no_key(
    cluster_kong: Kong,
) -> None:
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (boom, "a"), "d": (inc, "b")}
    with pytest.raises(TaskBoomError, match="bad value 2"):
        cluster_kong.get(dsk, ["c", "d"])
    run = cluster_kong.last_run_id or ""
    assert poll_until(lambda: cluster_kong.store.run_keys(run) == [], 5.0)


def test_history_on_a_cluster_keeps_to_one_slot(cluster_kong: Kong) -> None:
    """The metrics history records a run in one script call: on a cluster its prefix
    carries a hash tag, so every history key shares one slot."""
    assert cluster_kong.get({"a": (inc, 1), "b": (inc, "a")}, "b") == 3
    prefix = getattr(cluster_kong.history, "prefix", "")
    assert prefix.startswith("{") and "}" in prefix


def test_gemm_with_embedded_chunks_on_worker_processes_over_a_cluster(
    cluster_kong_sessions: Callable[[str], Kong], raw_cluster: RedisCluster
) -> None:
    """Worker processes find the cluster from the URL alone; the uploaded chunks of
    `from_array` and the outputs spread over the shards and all go at the end."""
    a = np.arange(400 * 400, dtype=float).reshape(400, 400) / 1e5
    x = da.from_array(a, chunks=100)
    session = cluster_kong_sessions("processes-cluster")
    got = (x @ x.T).compute(scheduler=session.get)
    run = session.last_run_id or ""
    assert session.store.run_keys(run) == []
    np.testing.assert_allclose(got, a @ a.T)
    assert not any(keys_per_shard(raw_cluster, f"*{run}*").values())
