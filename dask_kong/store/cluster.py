"""`RedisClusterStore`: `RedisStore` on a Redis Cluster, each run's values spread over the
shards.

Where keys live (`dask_kong.constants`):

* A run's coordination, ``kong:{R}:<key>``: one hash tag, so one slot of one shard (the
  run's shard): fan-in sets and their ready claims, claims, the live marker, the event
  stream, heartbeats, the cancel flag, and the registry of the run's values. Everything
  that must be atomic (the Lua scripts; a commit's marks and its live check) touches only
  these keys, exactly as on one node.
* A run's values, ``kong:{}{R}:<key>``: what `commit` writes (outputs, uploaded data, the
  run spec, and the parts of values above kong.store.max_value_bytes). The empty tag makes
  Redis hash the whole name, so each value lands on a slot of its own.

Commit order across shards. On one node a commit is one pipeline, which Redis runs in
order. Here a value may live on another shard than the fan-in set it is reported to, and
two connections to two servers keep no order between them. So a commit writes its values
first (a pipeline per shard, concurrently; the registry entry goes to the run's shard with
them), waits for every shard's reply, and only then runs the marks, the events and
`EXISTS live` on the run's shard: whoever a mark makes ready finds the inputs. Values that
hash to the run's own shard travel in that last pipeline, ahead of the marks, as on one
node: a commit without values, or whose values all live on the run's shard, is one
round-trip; any other two. Parts of a large value are written (and acknowledged) before
the manifest that names them, so a reader never finds a manifest without its parts.

Cleanup. `delete_run` removes the live marker, deletes every value the registry names
(the shards at once), then the run's own keys, registry included, as the run's slot lists
them (CLUSTER GETKEYSINSLOT): no shard is scanned, so deleting a run costs what the run
holds, however full the shards are.
A commit registers its values before it checks `EXISTS live`, and checks only once its
values are acknowledged. One that finds the run live wrote and registered them before the
marker went, so `delete_run` finds and deletes them; one that finds it gone deletes its
values and removes its own names from the registry (SREM: never the whole set, which
`delete_run` may be reading at that moment).

Pipelining per shard. An operation that touches several shards sends each its commands
(one pipeline per shard, on a connection of its own) before it reads any reply
(`_exchange`), so the shards work at once; this is what redis-py's ClusterPipeline does
too, without its per-command routing in Python. One thread sends one shard's bytes before
the next shard's, though: when a write carries large values (kong.store.cluster_thread_bytes)
to two or more shards, each of those goes from a thread of its own (a pool of
kong.store.cluster_io_threads), so their bytes leave at once. Below that a hand-off to a
thread costs more than the round-trip it would overlap.

Topology. redis-py's `RedisCluster`, built from the URL of any node, keeps the map of
slots to primaries. Commands go through this store's own connection pool per primary, with
the settings of the single-node store (timeouts, `LargeValuePacker`). A MOVED or ASK reply,
CLUSTERDOWN, TRYAGAIN or a lost connection refreshes the map and retries the operation with
backoff (kong.store.retries); every operation is safe to repeat (SET NX, fan-in sets with
a commit token, events deduplicated by their consumers).

Replicas. Reads go to primaries. Replication is asynchronous: a value that a fan-in mark
reports written on a primary may not have reached its replicas yet, so a worker reading a
replica could miss its input (redis-py's `read_from_replicas` is therefore not used).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import redis
from redis.client import Redis
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionPool, parse_url
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from .. import config
from ..constants import LIVE_KEY, VALUE_REGISTRY_KEY, run_prefix, spread_prefix
from ..errors import StoreUnavailableError
from .base import CommitResult, FanIn
from .redis import (
    CONNECTION_ERRORS,
    LARGE_READ_BYTES,
    MANIFEST_HEAD_BYTES,
    SCAN_PAGE,
    RedisStore,
    RetryPolicy,
    call_with_retry,
    commit_coordination_keys,
    connection_options,
    manifest_parts,
    text,
)

logger = logging.getLogger("dask_kong.store")

T = TypeVar("T")
#: Commands for one primary: (the node, its commands as argument tuples).
Batch = tuple[ClusterNode, Sequence[tuple[Any, ...]]]

#: Errors after which the map of slots is refreshed and the operation sent again: the
#: slot moved (MOVED; ASK while it migrates), the cluster is failing over (CLUSTERDOWN,
#: TRYAGAIN), our map lacks the slot, or a node went away.
CLUSTER_RETRY_ERRORS: tuple[type[BaseException], ...] = (
    *CONNECTION_ERRORS,
    AskError,
    TryAgainError,
    ClusterDownError,
    SlotNotCoveredError,
)


class RedisClusterStore(RedisStore):
    """`Store` on a Redis Cluster: coordination on the run's slot, values spread over
    every shard (see the module docstring). Thread-safe."""

    def __init__(self, url: str, *, key_ttl_s: float | None = None) -> None:
        if url.startswith("unix://"):
            raise ValueError(
                "a Redis Cluster is reached over TCP: give the redis:// or rediss:// URL "
                "of any of its nodes, not a unix:// socket"
            )
        super().__init__(url, key_ttl_s=key_ttl_s)
        self.address = f"{self.address} (cluster)"
        self._url_options = parse_url(url)
        try:
            # Only the map of slots goes through it; `_call` retries with backoff.
            self._cluster = open_cluster(url)
        except (redis.RedisError, RedisClusterException) as exc:
            super().close()
            raise StoreUnavailableError(f"Redis Cluster at {self.address}: {exc}") from exc
        self._io_threads = int(config.get("store.cluster_io_threads"))
        self._thread_bytes = int(config.get("store.cluster_thread_bytes"))
        self._read_connections = int(config.get("store.cluster_read_connections"))
        self._lock = threading.Lock()
        self._clients: dict[str, Redis] = {}
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        # Primaries known to hold lua.MARK_PARENTS_DONE (by node name): a script is cached
        # per server, and a run's marks go to its shard.
        self._mark_script_on: set[str] = set()

    def __repr__(self) -> str:
        return f"RedisClusterStore({self.address}, {len(self._cluster.get_primaries())} shards)"

    # -- where keys live -------------------------------------------------------------

    def _shard_of(self, name: str) -> ClusterNode:
        """The primary that holds the slot of the key `name`."""
        node: ClusterNode = self._cluster.get_node_from_key(name)
        return node

    def _client_of(self, node: ClusterNode) -> Redis:
        """This store's client of one primary (its own connection pool)."""
        client = self._clients.get(node.name)
        if client is None:
            with self._lock:
                client = self._clients.get(node.name)
                if client is None:
                    options = {**self._connection_options(), **self._url_options}
                    pool = redis.ConnectionPool(**{**options, "host": node.host, "port": node.port})
                    client = self._clients[node.name] = Redis(connection_pool=pool)
        return client

    def _run_client(self, run_id: str) -> Redis:
        return self._client_of(self._shard_of(run_prefix(run_id)))

    def _value_prefix(self, run_id: str) -> str:
        return spread_prefix(run_id)

    def _value_client(self, name: str) -> Redis:
        return self._client_of(self._shard_of(name))

    def _by_shard(self, names: Sequence[str]) -> list[tuple[ClusterNode, list[int]]]:
        """Positions of `names` grouped by the primary holding each."""
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, name in enumerate(names):
            node = self._shard_of(name)
            groups.setdefault(node.name, (node, []))[1].append(i)
        return list(groups.values())

    def _exchange(self, batches: Sequence[Batch]) -> list[list[Any]]:
        """Send each batch's commands to its primary, every batch before reading any reply,
        then read the replies, batch by batch: all requests are out before the first reply
        is awaited, so the shards work at once, with no hand-off to other threads (what
        small operations want; `_on_shards` is for large writes). Each batch has a
        connection of its own, so two batches to one primary never share a reply stream.
        Replies come raw (bytes, ints, None, lists). An error reply is raised once every
        reply has been read, so the connections go back to their pools clean; a lost
        connection discards them all."""
        taken: list[tuple[ConnectionPool, Any]] = []
        replies: list[list[Any]] = []
        first_error: ResponseError | None = None
        try:
            for node, commands in batches:
                pool = self._client_of(node).connection_pool
                connection = pool.get_connection()
                taken.append((pool, connection))
                connection.send_packed_command(connection.pack_commands(commands))
            for (_, connection), (_, commands) in zip(taken, batches, strict=True):
                got, error = _read_replies(connection, len(commands))
                replies.append(got)
                first_error = first_error or error
        except BaseException:
            for _, connection in taken:  # replies may be left unread on any of them
                connection.disconnect()
            raise
        finally:
            for pool, connection in taken:
                pool.release(connection)
        if first_error is not None:
            raise first_error
        return replies

    def _on_shards(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run one job per shard concurrently (the first in this thread) and return their
        results in order. Every job has finished when this returns or raises, so a retry
        or the next step of a commit never overlaps them; each is bounded by its
        connection's socket timeout (kong.store.socket_timeout_s)."""
        if len(jobs) == 1:
            return [jobs[0]()]
        executor = self._shard_executor()
        futures = [executor.submit(job) for job in jobs[1:]]
        try:
            first = jobs[0]()
        finally:
            concurrent.futures.wait(futures)
        return [first, *(future.result() for future in futures)]

    def _shard_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._io_threads, thread_name_prefix="kong-shard-io"
                )
            return self._executor

    # -- commits ---------------------------------------------------------------------

    def _commit_once(
        self,
        run_id: str,
        values: dict[str, bytes],
        fan_ins: Sequence[FanIn],
        payloads: list[bytes],
        token: str,
    ) -> CommitResult:
        """Values first, acknowledged by every shard; then, on the run's shard, the marks,
        the events and the live check (see the module docstring)."""
        run_shard = self._shard_of(run_prefix(run_id))
        prefix = spread_prefix(run_id)
        unregistered = list(values)
        written = 0
        last: dict[str, bytes] = {}
        stages = value_stages(values)
        for number, stage in enumerate(stages, start=1):
            here, elsewhere = self._split_off_shard(prefix, stage, run_shard)
            if number == len(stages) and not elsewhere:
                last = here  # they can go with the marks: the same connection keeps order
                break
            written += self._write_stage(run_id, run_shard, here, elsewhere, unregistered)
            unregistered = []
        result = self._finish_commit(
            run_id, run_shard, last, unregistered, fan_ins, payloads, token
        )
        if result is None:
            self._undo_commit(run_id, run_prefix(run_id), values, fan_ins, bool(payloads))
            return CommitResult()
        result.bytes_written += written
        return result

    def _split_off_shard(
        self, prefix: str, values: dict[str, bytes], shard: ClusterNode
    ) -> tuple[dict[str, bytes], list[tuple[ClusterNode, dict[str, bytes]]]]:
        """`values` by full name: those on `shard`, and the others grouped by primary."""
        names = [prefix + key for key in values]
        data = list(values.values())
        here: dict[str, bytes] = {}
        elsewhere: list[tuple[ClusterNode, dict[str, bytes]]] = []
        for node, positions in self._by_shard(names):
            group = {names[i]: data[i] for i in positions}
            if node.name == shard.name:
                here = group
            else:
                elsewhere.append((node, group))
        return here, elsewhere

    def _write_stage(
        self,
        run_id: str,
        run_shard: ClusterNode,
        here: dict[str, bytes],
        elsewhere: list[tuple[ClusterNode, dict[str, bytes]]],
        register: list[str],
    ) -> int:
        """Write values on every shard at once, the registry entry with those on the
        run's shard; the bytes actually written (SET NX)."""
        registry = run_prefix(run_id) + VALUE_REGISTRY_KEY
        groups = list(elsewhere)
        batches: list[Batch] = [(node, self._value_commands(group)) for node, group in groups]
        if here or register:
            groups.append((run_shard, here))
            batches.append((run_shard, self._value_commands(here, registry, register)))
        sizes = [sum(map(len, group.values())) for _, group in groups]
        replies = self._send_values(batches, sizes)
        written = 0
        for (node, group), got in zip(groups, replies, strict=True):
            registered = register and node.name == run_shard.name
            written += written_bytes(group, got[2 if registered else 0 :])
        return written

    def _send_values(self, batches: list[Batch], sizes: list[int]) -> list[list[Any]]:
        """The replies to `batches` (in their order), the i-th carrying `sizes[i]` bytes of
        values. With at most one batch of kong.store.cluster_thread_bytes or more: one
        exchange from this thread, the small batches first, so that they do not wait
        behind its bytes. With several: each large one from a thread of its own, so their
        bytes leave at once (one thread sends one shard's before the next's), and the
        small ones together."""
        large = [i for i, n in enumerate(sizes) if n >= self._thread_bytes]
        small = [i for i, n in enumerate(sizes) if n < self._thread_bytes]
        parts = [small + large] if len(large) <= 1 else [[i] for i in large] + [small]
        parts = [part for part in parts if part]
        jobs = [functools.partial(self._exchange, [batches[i] for i in part]) for part in parts]
        replies: list[list[Any]] = [[] for _ in batches]
        for part, got in zip(parts, self._on_shards(jobs), strict=True):
            for i, reply in zip(part, got, strict=True):
                replies[i] = reply
        return replies

    def _value_commands(
        self, values: dict[str, bytes], registry: str = "", register: Sequence[str] = ()
    ) -> list[tuple[Any, ...]]:
        """Register `register` (with a TTL), then write `values` (SET NX with a TTL)."""
        commands: list[tuple[Any, ...]] = []
        if register:
            commands += [("SADD", registry, *register), ("EXPIRE", registry, self.key_ttl_s)]
        for name, data in values.items():
            commands.append(("SET", name, data, "EX", self.key_ttl_s, "NX"))
        return commands

    def _queue_values(
        self, pipe: Any, values: dict[str, bytes], registry: str, register: Sequence[str]
    ) -> None:
        """`_value_commands`, queued on a pipeline."""
        for command in self._value_commands(values, registry, register):
            pipe.execute_command(*command)

    def _finish_commit(
        self,
        run_id: str,
        shard: ClusterNode,
        values: dict[str, bytes],
        register: list[str],
        fan_ins: Sequence[FanIn],
        payloads: list[bytes],
        token: str,
    ) -> CommitResult | None:
        """The last pipeline of a commit, on the run's shard: its values there (and their
        registry entry) if not written yet, the marks, the events and the live check.
        None when the run is closed."""
        prefix = run_prefix(run_id)
        client = self._client_of(shard)

        def send(script_cached: bool) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            self._queue_values(pipe, values, prefix + VALUE_REGISTRY_KEY, register)
            self._queue_marks_and_events(pipe, prefix, fan_ins, payloads, token, script_cached)
            return list(pipe.execute())

        try:
            replies = send(shard.name in self._mark_script_on)
        except NoScriptError:
            # As in RedisStore._commit_once: resending duplicates at most events.
            logger.warning("Redis at %s lost its scripts; sending them again", shard.name)
            self._mark_script_on.discard(shard.name)
            replies = send(False)
        if not replies[-1]:
            return None
        offset = 2 if register else 0
        result = CommitResult(bytes_written=written_bytes(values, replies[offset:]))
        if fan_ins:
            self._mark_script_on.add(shard.name)
            marks = replies[offset + len(values)]
            result.ready = [mark.child for mark, ready in zip(fan_ins, marks, strict=True) if ready]
        return result

    def _undo_commit(
        self,
        run_id: str,
        prefix: str,
        values: dict[str, bytes],
        fan_ins: Sequence[FanIn],
        events: bool,
    ) -> None:
        """Remove what a commit to a closed run wrote, on every shard it wrote to."""
        run_shard = self._shard_of(prefix)
        names = [spread_prefix(run_id) + key for key in values]
        coordination = commit_coordination_keys(prefix, fan_ins, events)
        logger.debug("run %s is closed: dropping a late commit of %d values", run_id, len(names))

        batches = [
            (node, [("UNLINK", names[i]) for i in positions])  # one slot per UNLINK
            for node, positions in self._by_shard(names)
        ]
        run_commands: list[tuple[Any, ...]] = []
        if values:
            run_commands.append(("SREM", prefix + VALUE_REGISTRY_KEY, *values))
        if coordination:
            run_commands.append(("UNLINK", *coordination))  # all on the run's slot
        if run_commands:
            batches.append((run_shard, run_commands))
        self._call(f"drop a late commit to run {run_id}", lambda: self._exchange(batches))

    # -- reads -----------------------------------------------------------------------

    def _read_raw(self, what: str, names: list[str]) -> list[Any]:
        return self._call(what, functools.partial(self._read_everywhere, names))

    def _read_everywhere(self, names: list[str]) -> list[Any]:
        """The stored bytes of `names` (None where absent), every shard asked at once.
        Up to kong.store.cluster_read_connections keys, or one key per shard: a GET
        each on a connection of its own, one round-trip. Otherwise their sizes first,
        then the small values of a shard in one batch and each large one on a
        connection of its own: hiredis parses several large replies on one
        connection far slower than the same replies one per connection (RedisStore's
        `_read_raw` reads one server the same way, for the same reason)."""
        groups = self._by_shard(names)
        if len(names) <= self._read_connections:  # a connection each: one round-trip
            reads = [[[i] for i in positions] for _, positions in groups]
        elif all(len(positions) == 1 for _, positions in groups):
            reads = [[positions] for _, positions in groups]
        else:
            sizes = self._strlen_all(names)
            reads = [split_large(positions, sizes) for _, positions in groups]
        batches = [
            (node, [("GET", names[i]) for i in batch])
            for (node, _), node_reads in zip(groups, reads, strict=True)
            for batch in node_reads
        ]
        values: list[Any] = [None] * len(names)
        positions_in_order = [batch for node_reads in reads for batch in node_reads]
        for batch, got in zip(positions_in_order, self._exchange(batches), strict=True):
            for i, value in zip(batch, got, strict=True):
                values[i] = value
        return values

    def _strlen_all(self, names: Sequence[str]) -> list[int]:
        """Stored sizes of `names` (0 where absent): one batch per shard, all at once."""
        groups = self._by_shard(names)
        batches = [(node, [("STRLEN", names[i]) for i in positions]) for node, positions in groups]
        sizes = [0] * len(names)
        for (_, positions), got in zip(groups, self._exchange(batches), strict=True):
            for i, size in zip(positions, got, strict=True):
                sizes[i] = int(size)
        return sizes

    def move(self, run_id: str, keys: Sequence[str], scope: str, new_keys: Sequence[str]) -> None:
        """Values spread over slots cannot be renamed across them (CROSSSLOT): they are
        read and written again, through this process (`RedisStore.move` renames)."""
        values, _ = self.get_many(run_id, keys)
        self.commit(scope, dict(zip(new_keys, values, strict=True)))
        self._unlink_values(run_id, keys)

    def _heads(self, names: Sequence[str]) -> list[bytes]:
        """The first bytes of each value: one batch per shard, all at once."""
        groups = self._by_shard(names)
        batches = [
            (node, [("GETRANGE", names[i], 0, MANIFEST_HEAD_BYTES) for i in positions])
            for node, positions in groups
        ]
        heads = [b""] * len(names)
        for (_, positions), got in zip(groups, self._exchange(batches), strict=True):
            for i, head in zip(positions, got, strict=True):
                heads[i] = head
        return heads

    def _unlink_values(self, run_id: str, keys: Sequence[str]) -> None:
        """Delete the values on their shards, then their names from the run's registry."""
        prefix = spread_prefix(run_id)
        self._unlink_everywhere([prefix + key for key in keys])
        self._run_client(run_id).srem(run_prefix(run_id) + VALUE_REGISTRY_KEY, *keys)

    # -- cleanup ---------------------------------------------------------------------

    def delete_run(self, run_id: str) -> int:
        # The live marker first, as on one node: a late commit then undoes itself.
        live = run_prefix(run_id) + LIVE_KEY
        deleted = int(
            self._call(f"close run {run_id}", lambda: self._run_client(run_id).unlink(live))
        )
        deleted += self._delete_values(run_id)
        return deleted + self._call(
            f"delete keys of run {run_id}", functools.partial(self._delete_run_slot, run_id)
        )

    def _delete_values(self, run_id: str) -> int:
        """Delete every value the run's registry names, on whichever shard it lives."""
        registry = run_prefix(run_id) + VALUE_REGISTRY_KEY
        prefix = spread_prefix(run_id)

        def page_from(cursor: int) -> tuple[int, list[bytes | str]]:
            return self._run_client(run_id).sscan(registry, cursor, count=SCAN_PAGE)

        deleted, cursor = 0, 0
        while True:
            cursor, members = self._call(
                f"list values of run {run_id}", functools.partial(page_from, cursor)
            )
            names = [prefix + text(member) for member in members]
            if names:
                deleted += self._call(
                    f"delete values of run {run_id}",
                    functools.partial(self._unlink_everywhere, names),
                )
            if cursor == 0:
                return deleted

    def _delete_run_slot(self, run_id: str) -> int:
        """Delete the run's own keys (its coordination, registry included), as listed by
        the run's slot itself (CLUSTER GETKEYSINSLOT), never by a SCAN of its whole shard:
        the cost follows the run's keys, plus those of another run whose tag hashes to
        the same slot (one slot in 16384). Foreign keys are skipped by asking for that
        many more each time; a reply shorter than asked for was the slot's last. The
        EXISTS beside each listing is there for its MOVED: a CLUSTER command is never
        redirected, and a stale map of slots would list an empty slot on the old owner."""
        prefix = run_prefix(run_id)
        slot = int(self._cluster.keyslot(prefix))
        deleted = foreign = 0
        while True:
            shard = self._shard_of(prefix)
            wanted = foreign + SCAN_PAGE
            listing = [("EXISTS", prefix + LIVE_KEY), ("CLUSTER", "GETKEYSINSLOT", slot, wanted)]
            keys = [text(key) for key in self._exchange([(shard, listing)])[0][1]]
            ours = [key for key in keys if key.startswith(prefix)]
            foreign = len(keys) - len(ours)
            if ours:  # one slot: one UNLINK may name them all
                deleted += int(self._exchange([(shard, [("UNLINK", *ours)])])[0][0])
            if len(keys) < wanted:
                return deleted

    def _unlink_everywhere(self, names: list[str]) -> int:
        """Delete `names` wherever they live; how many existed. One key per UNLINK: a
        multi-key command may not span slots, even on one primary."""
        batches = [
            (node, [("UNLINK", names[i]) for i in positions])
            for node, positions in self._by_shard(names)
        ]
        return sum(int(n) for got in self._exchange(batches) for n in got)

    def run_keys(self, run_id: str) -> list[str]:
        """Every key of the run on every primary, found by SCAN, not by the registry:
        tests prove with it that nothing is left anywhere."""
        found: list[str] = []
        for prefix in (run_prefix(run_id), spread_prefix(run_id)):
            for node in self._cluster.get_primaries():
                pages = self._scan(run_id, functools.partial(self._client_of, node), prefix)
                found += [text(key)[len(prefix) :] for page in pages for key in page]
        return found

    # -- connections -----------------------------------------------------------------

    def shards(self) -> list[str]:
        """host:port of every primary (for metrics and tests)."""
        return sorted(node.name for node in self._cluster.get_primaries())

    def close(self) -> None:
        if self._closed:
            return
        super().close()
        with self._lock:
            executor, self._executor = self._executor, None
            clients = list(self._clients.values())
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for client in clients:
            client.connection_pool.disconnect()
        self._cluster.close()

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run `operation` with retries as RedisStore does; a redirection or a lost node
        also refreshes the map of slots before the retry."""
        return call_with_cluster_retry(
            self._cluster, operation, what=what, address=self.address, policy=self._retry
        )


def call_with_cluster_retry(
    cluster: RedisCluster,
    operation: Callable[[], T],
    *,
    what: str,
    address: str,
    policy: RetryPolicy,
) -> T:
    """`call_with_retry` for what goes through `cluster`: a redirection, a failover or a
    lost node is retried too, after asking the cluster again which primary holds which
    slot (a failure there only means the retry fails again, with backoff)."""

    def refresh_slots(error: BaseException) -> None:
        try:
            cluster.nodes_manager.initialize()
        except (redis.RedisError, RedisClusterException) as exc:
            logger.warning("Redis at %s: refreshing the slot map failed: %s", address, exc)

    return call_with_retry(
        operation,
        what=what,
        address=address,
        policy=policy,
        retry_on=CLUSTER_RETRY_ERRORS,
        before_retry=refresh_slots,
    )


def open_cluster(url: str) -> RedisCluster:
    """redis-py's cluster client, found from the node at `url`, with the store's
    connection settings (`connection_options`: its calls retry through ours only)."""
    return RedisCluster.from_url(url, **connection_options())


def cluster_client(url: str) -> RedisCluster | None:
    """redis-py's cluster client when the server at `url` is a node of a Redis Cluster,
    else None: for what keeps its own keys beside the store (the metrics history)."""
    probe = RedisStore(url)
    try:
        clustered = probe.cluster_enabled()
    finally:
        probe.close()
    return open_cluster(url) if clustered else None


def _read_replies(connection: Any, count: int) -> tuple[list[Any], ResponseError | None]:
    """Read `count` replies from `connection`, every one even after an error reply (kept
    in its place), so the connection goes back clean; and the first error."""
    got: list[Any] = []
    first_error: ResponseError | None = None
    for _ in range(count):
        try:
            got.append(connection.read_response())
        except ResponseError as exc:
            got.append(exc)
            first_error = first_error or exc
    return got, first_error


def split_large(positions: list[int], sizes: Sequence[int]) -> list[list[int]]:
    """`positions` as batches to read: the small values together, each large one alone."""
    small = [i for i in positions if sizes[i] <= LARGE_READ_BYTES]
    large = [[i] for i in positions if sizes[i] > LARGE_READ_BYTES]
    return [small, *large] if small else large


def value_stages(values: dict[str, bytes]) -> list[dict[str, bytes]]:
    """`values` in the order the shards must hold them: the parts of large values before
    everything else, since a manifest names its parts (`split_large_values`)."""
    parts = {part for key, data in values.items() for part in manifest_parts(key, data) or ()}
    if not parts:
        return [values] if values else []
    return [
        {key: data for key, data in values.items() if key in parts},
        {key: data for key, data in values.items() if key not in parts},
    ]


def written_bytes(values: dict[str, bytes], replies: Sequence[Any]) -> int:
    """Bytes of the `values` whose SET NX wrote them (the first len(values) replies)."""
    return sum(len(data) for data, stored in zip(values.values(), replies, strict=False) if stored)
