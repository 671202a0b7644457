"""`RedisStore`: the store of worker processes and AWS Lambda workers, on one Redis.

(`store/cluster.py` builds `RedisClusterStore` on it for a Redis Cluster: `connect` picks
it when the URL's node says it is part of a cluster. The hooks it overrides are the
methods named `_run_client`, `_value_prefix`, `_value_client`, `_read_raw`,
`_strlen_all`, `_heads`, `_unlink_values`, `_commit_once`, `_undo_commit`, `delete_run`
and `run_keys`.)

Every key of run R is ``constants.run_prefix(R)`` + a run-relative key (one hash tag per
run, so Redis Cluster keeps a run on one slot) and carries a TTL (kong.store.key_ttl_s),
so a run whose client died still disappears. Values are `dask_kong.serialize` bytes; the
sizes reported are serialized sizes, the bytes that actually crossed the network.

`commit` is one pipelined round-trip: Redis runs one connection's commands in order, so
the writes (SET NX) are visible before the fan-in marks (one Lua call for all marks), and
those before the events (XADD to the run's stream).

A connection error or timeout is retried with exponential backoff and a log line per
retry (kong.store.retries, retry_base_s, retry_max_s), then raised as
`StoreUnavailableError` naming host:port, never the password.

The sync client is deliberate: workers call the store from plain threads, and a commit is
on a task's critical path. Measured on one machine (redis-py 8.1 + hiredis, local server),
a commit-like pipeline took ~0.33 ms (median) sync against ~0.49 ms with redis.asyncio;
asyncio only won aggregate throughput with 16 commits in flight (~15-40%), which is not
how a worker commits.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import secrets
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis._parsers import Encoder
from redis.backoff import NoBackoff
from redis.client import Pipeline, Redis
from redis.connection import HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import AuthenticationError, NoScriptError
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from .. import config, security, serialize
from ..constants import (
    CANCEL_KEY,
    EVENTS_KEY,
    HEARTBEATS_KEY,
    LIVE_KEY,
    claim_key,
    fan_in_key,
    run_prefix,
)
from ..errors import KongError, StoreUnavailableError
from . import lua
from .base import (
    ENDED,
    CommitResult,
    Event,
    FanIn,
    MissingKeyError,
    event_from_wire,
    event_to_wire,
    stamp_written_bytes,
)
from .server import RedisServer

logger = logging.getLogger("dask_kong.store")

T = TypeVar("T")

#: URL schemes `open_store` connects to as an existing server.
URL_SCHEMES = ("redis://", "rediss://", "unix://")

# The one field of a stream entry: the pickled events of one commit (`event_to_wire`
# each, in a tuple), and as redis-py returns it.
_EVENT_FIELD = "e"
_EVENT_FIELD_BYTES = _EVENT_FIELD.encode()
# Suffix of a fan-in's ready claim (see lua.MARK_PARENTS_DONE), next to its parent set.
_READY_CLAIM_SUFFIX = ":ready"
# Keys per SCAN page and per UNLINK: a run of 100k keys is deleted in ~100 round-trips,
# and one UNLINK of this many keys returns at once (the server frees memory in background).
SCAN_PAGE = 1000
# Above this many bytes an argument is sent as its own chunk (`LargeValuePacker`);
# redis-py's own cut-off between joining and chunking arguments.
_LARGE_ARGUMENT_BYTES = 6000
# Values above this many bytes are read with a GET each (`RedisStore._read_raw`): below
# it a value costs less to parse than a round-trip (~0.1 ms here, about 1 MB of reply).
LARGE_READ_BYTES = 1 << 20
# Characters that SCAN MATCH would read as a pattern; run ids may contain them, and the
# braces of the hash tag are escaped too so that the prefix is matched literally.
_GLOB_CHARS = frozenset("\\*?[]{}")


class LargeValuePacker:
    """Packs commands for redis-py: hiredis's packer for small ones, redis-py's Python
    packer for commands that carry a large value.

    hiredis copies every argument into one buffer: for an 8 MB value that took ~10 ms
    here, five times the rest of the SET (redis-py 8.1, hiredis 3.5; the Python packer
    sends a large value as its own chunk, uncopied: 8 MB SET 14 ms -> 2.5 ms). For small
    commands hiredis is the faster of the two (~10% on a pipeline of 100 small SETs).
    Stateless, so one instance serves every connection of a pool."""

    def __init__(self, cutoff: int = _LARGE_ARGUMENT_BYTES) -> None:
        self.cutoff = cutoff
        self._python = PythonRespSerializer(cutoff, Encoder("utf-8", "strict", False).encode)
        self._hiredis = HiredisRespSerializer() if HIREDIS_AVAILABLE else None

    def pack(self, *args: Any) -> list[bytes | memoryview]:
        large = any(
            isinstance(arg, bytes | bytearray | memoryview) and len(arg) > self.cutoff
            for arg in args
        )
        packer = self._python if large or self._hiredis is None else self._hiredis
        packed: list[bytes | memoryview] = packer.pack(*args)
        return packed


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a store call that lost its connection is retried."""

    retries: int
    base_s: float
    max_s: float

    @classmethod
    def from_config(cls) -> RetryPolicy:
        return cls(
            retries=int(config.get("store.retries")),
            base_s=float(config.get("store.retry_base_s")),
            max_s=float(config.get("store.retry_max_s")),
        )

    def delay_s(self, attempt: int) -> float:
        """Backoff before retry `attempt` (0-based), jittered so that many workers that
        lost one Redis together do not all come back in the same millisecond."""
        return min(self.max_s, self.base_s * 2.0**attempt) * random.uniform(0.5, 1.0)


def connection_options(**extra: Any) -> dict[str, Any]:
    """Settings of every connection dask-kong opens to a Redis it keeps data in (the
    store, each node of a cluster, the metrics history), plus `extra`: the configured
    timeouts, and no retries of redis-py's own. `call_with_retry` retries under
    `RetryPolicy`, with backoff and a log line; redis-py must not retry silently
    underneath it."""
    return {
        "socket_timeout": float(config.get("store.socket_timeout_s")),
        "socket_connect_timeout": float(config.get("store.connect_timeout_s")),
        "retry": Retry(NoBackoff(), 0),
        **extra,
    }


class RedisStore:
    """`Store` on a Redis server, thread-safe (one connection pool shared by all threads).

    `owned_server` is a private `RedisServer` this store stops when it is closed.
    """

    in_process = False

    def __init__(
        self,
        url: str,
        *,
        key_ttl_s: float | None = None,
        owned_server: RedisServer | None = None,
    ) -> None:
        #: The URL as given, password included: hand it to workers, never to a log.
        self.url = url
        self.key_ttl_s = max(1, math.ceil(float(config.get("store.key_ttl_s", key_ttl_s))))
        self._retry = RetryPolicy.from_config()
        self._socket_timeout_s = float(config.get("store.socket_timeout_s"))
        self._pool = redis.ConnectionPool.from_url(url, **self._connection_options())
        self.max_value_bytes = int(config.get("store.max_value_bytes"))
        #: Where the server is, safe to log: host:port or unix:path.
        self.address = describe_address(self._pool.connection_kwargs)
        self._client = redis.Redis(connection_pool=self._pool)
        self._heartbeat_script = self._client.register_script(lua.HEARTBEAT)
        self._mark_sha = self._client.register_script(lua.MARK_PARENTS_DONE).sha
        # Until the server is known to hold the mark script, commits send its text (EVAL,
        # which also caches it) instead of its hash: no extra round-trip to load it.
        self._mark_script_cached = False
        self._owned_server = owned_server
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisStore({self.address})"

    def _connection_options(self) -> dict[str, Any]:
        """Settings of every connection this store opens (on a cluster: to each node)."""
        return connection_options(command_packer=LargeValuePacker())

    # -- where keys live (the hooks RedisClusterStore overrides) -----------------------

    def _run_client(self, run_id: str) -> Redis:
        """The client of the server that holds the run's coordination keys."""
        return self._client

    def _value_prefix(self, run_id: str) -> str:
        """Prefix of the run's values (what `commit` writes)."""
        return run_prefix(run_id)

    def _value_client(self, name: str) -> Redis:
        """The client of the server that holds the value named `name` (full name)."""
        return self._client

    # -- writes and coordination ----------------------------------------------------

    def commit(
        self,
        run_id: str,
        writes: Mapping[str, Any],
        fan_ins: Sequence[FanIn] = (),
        events: Sequence[Event] = (),
    ) -> CommitResult:
        # Serialize first: an unpicklable value fails here, before anything is sent.
        values = {
            key: serialize.dumps(v, where=value_place(run_id, key), what=f"value of {key!r}")
            for key, v in writes.items()
        }
        stamp_written_bytes(events, {key: len(data) for key, data in values.items()})
        # One stream entry per commit, its events signed together: a worker flushes the
        # events of every task it ran since its last flush (kong.run.progress_interval_s).
        payloads = (
            [
                serialize.dumps(
                    tuple(event_to_wire(e) for e in events),
                    where=event_place(run_id),
                    what=f"{len(events)} events, the first of task {events[0].task}",
                )
            ]
            if events
            else []
        )
        if not (values or fan_ins or payloads):
            return CommitResult()
        # Retrying a whole commit is safe: SET NX writes each value at most once, a fan-in is
        # a set (a parent added twice counts once), and the token lets a retry whose first
        # reply was lost still learn that it made a child ready (lua.MARK_PARENTS_DONE).
        # Only XADD is not idempotent: a retry may append an event twice, so consumers of
        # the stream dedupe events by (kind, task).
        token = secrets.token_hex(8)
        values = split_large_values(values, self.max_value_bytes, token)
        return self._call(
            f"commit to run {run_id}",
            functools.partial(self._commit_once, run_id, values, fan_ins, payloads, token),
        )

    def _commit_once(
        self,
        run_id: str,
        values: dict[str, bytes],
        fan_ins: Sequence[FanIn],
        payloads: list[bytes],
        token: str,
    ) -> CommitResult:
        """One attempt at a commit: one round-trip (two if the server lost its scripts)."""
        prefix = run_prefix(run_id)
        try:
            replies = self._commit_pipeline(prefix, values, fan_ins, payloads, token).execute()
        except NoScriptError:
            # The server forgot the mark script (restart, failover, SCRIPT FLUSH). Nothing
            # after the failed EVALSHA is skipped by Redis, so the events may already be in
            # the stream: sending the commit again only duplicates them (see `commit`).
            logger.warning("Redis at %s lost its scripts; sending them again", self.address)
            self._mark_script_cached = False
            replies = self._commit_pipeline(prefix, values, fan_ins, payloads, token).execute()
        if not replies[-1]:
            self._undo_commit(run_id, prefix, values, fan_ins, bool(payloads))
            return CommitResult()
        result = CommitResult()
        for data, stored in zip(values.values(), replies, strict=False):
            if stored:
                result.bytes_written += len(data)
        if fan_ins:
            self._mark_script_cached = True
            marks = replies[len(values)]
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
        """Remove what a commit to a closed run just wrote (see `_commit_pipeline`)."""
        keys = [prefix + key for key in values] + commit_coordination_keys(prefix, fan_ins, events)
        logger.debug("run %s is closed: dropping a late commit of %d keys", run_id, len(keys))
        self._call(
            f"drop a late commit to run {run_id}", functools.partial(self._client.unlink, *keys)
        )

    def _commit_pipeline(
        self,
        prefix: str,
        values: dict[str, bytes],
        fan_ins: Sequence[FanIn],
        payloads: list[bytes],
        token: str,
    ) -> Pipeline:
        """The commands of one commit, in the order the `Store` protocol requires, then
        whether the run is still open. A worker that outlives its run (the client failed
        it and deleted its keys) must not leave keys behind: `delete_run` removes the live
        marker before it scans, so a commit that finds the marker gone after its writes
        undoes them itself, and one that found it present wrote before the scan began."""
        pipe = self._client.pipeline(transaction=False)
        for key, data in values.items():
            pipe.set(prefix + key, data, nx=True, ex=self.key_ttl_s)
        self._queue_marks_and_events(pipe, prefix, fan_ins, payloads, token)
        return pipe

    def _queue_marks_and_events(
        self,
        pipe: Pipeline,
        prefix: str,
        fan_ins: Sequence[FanIn],
        payloads: list[bytes],
        token: str,
        script_cached: bool | None = None,
    ) -> None:
        """Queue what follows a commit's writes, on the run's server: the fan-in marks,
        the events, then whether the run is still open (see `_commit_pipeline`)."""
        if fan_ins:
            cached = self._mark_script_cached if script_cached is None else script_cached
            self._queue_marks(pipe, prefix, fan_ins, token, cached)
        if payloads:
            stream = prefix + EVENTS_KEY
            for data in payloads:
                pipe.xadd(stream, {_EVENT_FIELD: data})
            pipe.expire(stream, self.key_ttl_s)
        pipe.exists(prefix + LIVE_KEY)

    def _queue_marks(
        self, pipe: Pipeline, prefix: str, fan_ins: Sequence[FanIn], token: str, cached: bool
    ) -> None:
        """Queue one call of lua.MARK_PARENTS_DONE for every fan-in mark of the commit;
        by hash (`cached`) once the server is known to hold the script, else its text."""
        keys: list[str] = []
        args: list[str | int] = [self.key_ttl_s, token]
        for mark in fan_ins:
            parents = prefix + fan_in_key(mark.child)
            keys += [parents, parents + _READY_CLAIM_SUFFIX]
            args += [mark.parent, mark.in_degree, int(mark.retake)]
        if cached:
            pipe.evalsha(self._mark_sha, len(keys), *keys, *args)
        else:
            pipe.eval(lua.MARK_PARENTS_DONE, len(keys), *keys, *args)

    def heartbeat(self, run_id: str, beats: Mapping[str, int]) -> None:
        if not beats:
            return
        args: list[str | int] = [self.key_ttl_s]
        for worker, task in beats.items():
            args += [worker, task]
        prefix = run_prefix(run_id)
        keys = [prefix + HEARTBEATS_KEY, prefix + LIVE_KEY]
        self._call(
            f"heartbeat of run {run_id}",
            lambda: self._heartbeat_script(keys=keys, args=args, client=self._run_client(run_id)),
        )

    def open_run(self, run_id: str) -> None:
        key = run_prefix(run_id) + LIVE_KEY
        self._call(
            f"open run {run_id}", lambda: self._run_client(run_id).set(key, 1, ex=self.key_ttl_s)
        )

    def cancel(self, run_id: str) -> None:
        key = run_prefix(run_id) + CANCEL_KEY
        self._call(
            f"cancel run {run_id}",
            lambda: self._run_client(run_id).set(key, 1, ex=self.key_ttl_s),
        )

    # -- reads ----------------------------------------------------------------------

    def get_many(self, run_id: str, keys: Sequence[str]) -> tuple[list[Any], int]:
        if not keys:
            return [], 0
        prefix = self._value_prefix(run_id)
        raw = self._read_raw(f"read from run {run_id}", [prefix + key for key in keys])
        found: list[bytes] = []
        for key, data in zip(keys, raw, strict=True):
            if data is None:
                raise MissingKeyError(f"{key!r} of run {run_id} is not in the store")
            if data.startswith(_PARTS_MAGIC):
                data = self._read_parts(run_id, key, data)
            found.append(data)
        values = [
            serialize.loads(data, where=value_place(run_id, key), what=f"{key!r} of run {run_id}")
            for key, data in zip(keys, found, strict=True)
        ]
        return values, sum(len(data) for data in found)

    def _read_parts(self, run_id: str, key: str, manifest: bytes) -> bytes:
        """Reassemble a value that `split_large_values` stored in parts."""
        prefix = self._value_prefix(run_id)
        names = [prefix + part for part in manifest_parts(key, manifest) or ()]
        parts = self._read_raw(f"read parts of {key!r} in run {run_id}", names)
        if any(part is None for part in parts):
            raise MissingKeyError(f"a part of {key!r} of run {run_id} is not in the store")
        return b"".join(parts)

    def _read_raw(self, what: str, names: list[str]) -> list[Any]:
        """The stored bytes of `names` (None where absent). Small values come in one MGET;
        values above `LARGE_READ_BYTES` in a GET each, after one round-trip of STRLENs:
        hiredis parses a reply that holds several large values far slower than the same
        values one reply each (4 x 8 MB: 27 ms in one MGET, 12 ms in four GETs here)."""
        if len(names) == 1:
            return [self._call(what, functools.partial(self._client.get, names[0]))]
        lengths = self._call(what, functools.partial(self._strlen_all, names))
        large = [i for i, n in enumerate(lengths) if n > LARGE_READ_BYTES]
        small = [i for i, n in enumerate(lengths) if n <= LARGE_READ_BYTES]
        values: list[Any] = [None] * len(names)
        if small:
            got = self._call(what, functools.partial(self._client.mget, [names[i] for i in small]))
            for i, value in zip(small, got, strict=True):
                values[i] = value
        for i in large:
            values[i] = self._call(what, functools.partial(self._client.get, names[i]))
        return values

    def _strlen_all(self, names: Sequence[str]) -> list[int]:
        """Stored sizes of `names` (0 where absent), in one round-trip."""
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.strlen(name)
        return [int(n) for n in pipe.execute()]

    def forget(self, run_id: str, keys: Sequence[str]) -> None:
        """Keep everything until the run ends: see `Store.forget`."""

    def drop(self, run_id: str, keys: Sequence[str]) -> None:
        if not keys:
            return
        prefix = self._value_prefix(run_id)
        names = [prefix + key for key in keys]
        heads = self._call(f"look at values of {run_id}", functools.partial(self._heads, names))
        parts = [
            prefix + part
            for key, head in zip(keys, heads, strict=True)
            for part in manifest_parts(key, head or b"") or ()
        ]
        doomed = [*keys, *(part[len(prefix) :] for part in parts)]
        self._call(
            f"drop values of {run_id}", functools.partial(self._unlink_values, run_id, doomed)
        )

    def move(self, run_id: str, keys: Sequence[str], scope: str, new_keys: Sequence[str]) -> None:
        """RENAME on the server, nothing through the client; a value stored in parts has
        its parts renamed along (their names derive from the value's key). A signed
        value's header is re-bound to its new place in the same round-trip
        (`security.rebound_header`: it checks first that the value was bound to the
        place it leaves)."""
        if not keys:
            return
        prefix, target = self._value_prefix(run_id), self._value_prefix(scope)
        names = [prefix + key for key in keys]
        heads = self._call(f"look at values of {run_id}", functools.partial(self._heads, names))
        renames: list[tuple[str, str]] = []
        # per value, the (old, new) names of what starts with its signed header
        firsts: list[tuple[str, str]] = []
        for key, new_key, head in zip(keys, new_keys, heads, strict=True):
            if not head:
                raise MissingKeyError(f"{key!r} of run {run_id} is not in the store")
            old_parts = manifest_parts(key, head) or []
            new_parts = manifest_parts(new_key, head) or []
            renames += zip(
                [prefix + p for p in old_parts], [target + p for p in new_parts], strict=True
            )
            renames.append((prefix + key, target + new_key))
            firsts.append(
                (prefix + old_parts[0], target + new_parts[0]) if old_parts else renames[-1]
            )
        headers = self._rebound_headers(run_id, keys, scope, new_keys, heads, firsts)
        self._call(
            f"move values of {run_id}", functools.partial(self._rename_all, renames, headers)
        )

    def _rebound_headers(
        self,
        run_id: str,
        keys: Sequence[str],
        scope: str,
        new_keys: Sequence[str],
        heads: Sequence[bytes],
        firsts: Sequence[tuple[str, str]],
    ) -> dict[str, bytes]:
        """By new name, the header that binds each signed value moved to its place in
        `scope` (`move`). The header of a value in parts is at the start of its first
        part: those are read in one more round-trip, only when there are any."""
        heads = list(heads)
        in_parts = [i for i, head in enumerate(heads) if head.startswith(_PARTS_MAGIC)]
        if in_parts:
            first_parts = [firsts[i][0] for i in in_parts]
            got = self._call(
                f"look at values of {run_id}", functools.partial(self._heads, first_parts)
            )
            for i, head in zip(in_parts, got, strict=True):
                heads[i] = head
        headers: dict[str, bytes] = {}
        for key, new_key, head, (_, new_name) in zip(keys, new_keys, heads, firsts, strict=True):
            header = security.rebound_header(
                head,
                f"{key!r} of run {run_id}",
                old=value_place(run_id, key),
                new=value_place(scope, new_key),
            )
            if header is not None:
                headers[new_name] = header
        return headers

    def _rename_all(self, renames: Sequence[tuple[str, str]], headers: Mapping[str, bytes]) -> None:
        """RENAME each (source, target), then write each target's new signed header
        (`headers`), in one round-trip; a retry after a lost reply finds sources already
        moved, which only a missing target would make an error (SETRANGE of the same
        header twice is harmless)."""
        pipe = self._client.pipeline(transaction=False)
        for source, target in renames:
            pipe.rename(source, target)
        for name, header in headers.items():
            pipe.setrange(name, 0, header)
        replies = pipe.execute(raise_on_error=False)
        for (name, _), reply in zip(headers.items(), replies[len(renames) :], strict=True):
            if isinstance(reply, Exception):
                raise KongError(f"could not re-bind the moved value {name!r}: {reply}")
        failed = [
            (source, target, reply)
            for (source, target), reply in zip(renames, replies, strict=False)
            if isinstance(reply, Exception)
        ]
        for source, target, reply in failed:
            if self._is_header_alone(target, headers.get(target)):
                # the source was gone (a run's cleanup raced the move): SETRANGE made a
                # key of the header alone, without a TTL; it must not stay
                self._client.unlink(target)
            if not self._client.exists(target):
                raise MissingKeyError(f"could not move {source!r}: {reply}")

    def _is_header_alone(self, name: str, header: bytes | None) -> bool:
        """Whether `name` holds nothing but the `header` a move wrote into it."""
        return header is not None and int(self._client.strlen(name)) <= len(header)

    def _heads(self, names: Sequence[str]) -> list[bytes]:
        """The first bytes of each value (enough to tell a parts manifest, and a signed
        header), one round-trip."""
        pipe = self._client.pipeline(transaction=False)
        for name in names:
            pipe.getrange(name, 0, _HEAD_END)
        return list(pipe.execute())

    def _unlink_values(self, run_id: str, keys: Sequence[str]) -> None:
        """Delete the run's values `keys` (run-relative)."""
        prefix = self._value_prefix(run_id)
        self._client.unlink(*(prefix + key for key in keys))

    def exists(self, run_id: str, key: str) -> bool:
        full_key = self._value_prefix(run_id) + key
        count = self._call(
            f"check {key!r} of run {run_id}", lambda: self._value_client(full_key).exists(full_key)
        )
        return bool(count)

    def claim(self, run_id: str, names: Sequence[str], holder: str = "") -> list[bool]:
        if not names:
            return []
        prefix = run_prefix(run_id)

        # The token makes a retry after a lost reply still learn that its first attempt
        # won (as lua.MARK_PARENTS_DONE does): a shared root's claimant must know it
        # is the one to run and publish the root, or every subtree waits for nobody.
        token = f"{holder}:{secrets.token_hex(8)}".encode()
        keys = [prefix + claim_key(name) for name in names]

        def set_nx_all() -> list[bool]:
            client = self._run_client(run_id)
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, token, nx=True, ex=self.key_ttl_s)
            for key in keys:
                pipe.get(key)
            pipe.exists(prefix + LIVE_KEY)
            replies = pipe.execute()
            holders, live = replies[len(keys) : 2 * len(keys)], replies[-1]
            if not live:  # a closed run (see `_commit_pipeline`): leave nothing, win nothing
                client.unlink(*keys)
                return [False] * len(names)
            return [holder == token for holder in holders]

        return self._call(f"claims in run {run_id}", set_nx_all)

    def release_claims(self, run_id: str, holder: str) -> int:
        # Rare (a lost worker), so a SCAN of the run's claims is affordable; a claim is
        # never handed from one holder to another, so GET then UNLINK cannot race.
        pattern = glob_escape(run_prefix(run_id)) + claim_key("*")
        mine = f"{holder}:".encode()

        def unlink_held() -> int:
            client = self._run_client(run_id)
            keys = list(client.scan_iter(match=pattern, count=1000))
            holders = client.mget(keys) if keys else []
            held = [
                k
                for k, v in zip(keys, holders, strict=True)
                if isinstance(v, bytes) and v.startswith(mine)
            ]
            return int(client.unlink(*held)) if held else 0

        return self._call(f"release claims in run {run_id}", unlink_held)

    def fan_in_progress(self, run_id: str, children: Sequence[int]) -> list[int]:
        if not children:
            return []
        prefix = run_prefix(run_id)

        def scard_all() -> list[int]:
            pipe = self._run_client(run_id).pipeline(transaction=False)
            for child in children:
                pipe.scard(prefix + fan_in_key(child))
            return [int(n) for n in pipe.execute()]

        return self._call(f"fan-in progress in run {run_id}", scard_all)

    def sizes(self, run_id: str, keys: Sequence[str]) -> list[int]:
        if not keys:
            return []
        prefix = self._value_prefix(run_id)
        names = [prefix + key for key in keys]
        return self._call(f"sizes in run {run_id}", functools.partial(self._strlen_all, names))

    def events(self, run_id: str, cursor: str, timeout_s: float) -> tuple[str, list[Event]]:
        stream = run_prefix(run_id) + EVENTS_KEY
        deadline = time.monotonic() + max(0.0, timeout_s)
        # Block in slices shorter than the socket timeout, so that a long wait is never
        # mistaken for a dead connection.
        longest_block_s = self._socket_timeout_s / 2
        while True:
            remaining = deadline - time.monotonic()
            block_s = min(remaining, longest_block_s) if remaining > 0 else None
            entries = self._call(
                f"read events of run {run_id}",
                functools.partial(self._read_stream, run_id, stream, cursor, block_s),
            )
            if entries:
                last_id = entries[-1][0]
                where = event_place(run_id)
                return text(last_id), [
                    event for _, f in entries for event in _decode_events(run_id, where, f)
                ]
            if block_s is None or remaining <= longest_block_s:
                return cursor, []

    def _read_stream(
        self, run_id: str, stream: str, cursor: str, block_s: float | None
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Stream entries after `cursor`, blocking up to `block_s` (None: not at all)."""
        # BLOCK 0 would mean "forever": the shortest real wait is 1 ms.
        block_ms = None if block_s is None else max(1, round(block_s * 1000))
        # redis-py's legacy (RESP2-shaped) reply, which is its default in every version:
        # [[stream, [(id, {field: value}), ...]]], or nothing on timeout.
        reply: Any = self._run_client(run_id).xread({stream: cursor}, block=block_ms)
        if not reply:
            return []
        _, entries = reply[0]
        return list(entries)

    def live_workers(self, run_id: str, ttl_s: float) -> dict[str, int]:
        beats = self.heartbeats(run_id)
        return {w: t for w, (age, t) in beats.items() if age < ttl_s and t != ENDED}

    def heartbeats(self, run_id: str) -> dict[str, tuple[float, int]]:
        key = run_prefix(run_id) + HEARTBEATS_KEY

        def read_clock_and_beats() -> tuple[tuple[int, int], dict[bytes, bytes]]:
            # The clock of the server that stamped the beats (lua.HEARTBEAT).
            pipe = self._run_client(run_id).pipeline(transaction=False)
            pipe.time()
            pipe.hgetall(key)
            now, beats = pipe.execute()
            return now, beats

        (seconds, micros), beats = self._call(f"heartbeats of run {run_id}", read_clock_and_beats)
        # Heartbeats are stamped by the server's clock (lua.HEARTBEAT); so is `now`.
        now = seconds + micros / 1e6
        ages = {}
        for worker, value in beats.items():
            stamp, _, task = text(value).partition(":")
            ages[text(worker)] = (now - float(stamp), int(task))
        return ages

    def is_cancelled(self, run_id: str) -> bool:
        prefix = run_prefix(run_id)

        def flags() -> tuple[int, int]:
            pipe = self._run_client(run_id).pipeline(transaction=False)
            pipe.exists(prefix + CANCEL_KEY)
            pipe.exists(prefix + LIVE_KEY)
            cancelled, live = pipe.execute()
            return int(cancelled), int(live)

        cancelled, live = self._call(f"cancel flag of run {run_id}", flags)
        return bool(cancelled) or not live

    # -- cleanup --------------------------------------------------------------------

    def delete_run(self, run_id: str) -> int:
        # The live marker first: a late commit then sees the run closed and cleans up
        # after itself, whether or not the scan below has passed its keys.
        live = run_prefix(run_id) + LIVE_KEY
        deleted = int(
            self._call(f"close run {run_id}", lambda: self._run_client(run_id).unlink(live))
        )
        return deleted + self._delete_prefixed(run_id, lambda: self._run_client(run_id))

    def _delete_prefixed(self, run_id: str, client: Callable[[], Redis]) -> int:
        """Delete the keys starting with the run's prefix on one server; how many."""
        deleted = 0
        for page in self._scan(run_id, client, run_prefix(run_id)):
            unlink_page = functools.partial(lambda keys: client().unlink(*keys), page)
            deleted += int(self._call(f"delete keys of run {run_id}", unlink_page))
        return deleted

    def run_keys(self, run_id: str) -> list[str]:
        prefix = run_prefix(run_id)
        pages = self._scan(run_id, lambda: self._client, prefix)
        return [text(key)[len(prefix) :] for page in pages for key in page]

    def _scan(
        self, run_id: str, client: Callable[[], Redis], prefix: str
    ) -> Iterator[list[bytes | str]]:
        """Pages of the full names of every key on one server that starts with `prefix`
        (SCAN MATCH)."""
        pattern = glob_escape(prefix) + "*"

        def scan_from(cursor: int) -> tuple[int, list[bytes | str]]:
            return client().scan(cursor, match=pattern, count=SCAN_PAGE)

        cursor = 0
        while True:
            cursor, page = self._call(
                f"list keys of run {run_id}", functools.partial(scan_from, cursor)
            )
            if page:
                yield page
            if cursor == 0:
                return

    def ping(self) -> None:
        """Check that the server answers (and accepts our password): open_store fails early
        with a clear error instead of at a run's first commit."""
        self._call("ping", self._client.ping)

    def cluster_enabled(self) -> bool:
        """Whether the server at the URL is a node of a Redis Cluster (INFO cluster). One
        round-trip, like `ping`, and it checks the same: the server answers and takes
        our password."""
        info = self._call("ask for cluster mode", lambda: self._client.info("cluster"))
        return bool(info.get("cluster_enabled"))

    def restart_if_died(self) -> bool:
        """Restart the private redis-server this store owns if it died (it starts empty);
        whether it did. A server someone else runs is never touched."""
        server = self._owned_server
        if server is None or not server.died:
            return False
        server.restart()
        self._mark_script_cached = False  # the new server holds no script
        self._pool.disconnect()  # connections to the dead server are useless
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._pool.disconnect()
        if self._owned_server is not None:
            self._owned_server.stop()

    # -- failures -------------------------------------------------------------------

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run `operation`, retrying lost connections with backoff; then give up loudly."""
        return call_with_retry(operation, what=what, address=self.address, policy=self._retry)


# A value too large for one Redis string is stored as parts under `part_key` names, and
# under its own key as this magic followed by the number of parts. Pickles start with
# b"\x80", so a stored value is never mistaken for a manifest.
_PARTS_MAGIC = b"KONG-PARTS:"
# A manifest (magic, a 16-character tag, a count) fits in this many bytes.
MANIFEST_HEAD_BYTES = 63
# Last byte `RedisStore._heads` reads: a manifest, or a signed header (`move` rewrites it).
_HEAD_END = max(MANIFEST_HEAD_BYTES, security.HEADER_BYTES - 1)


def part_key(key: str, tag: str, index: int) -> str:
    return f"{key}#{tag}#part{index}"


def manifest_parts(key: str, data: bytes) -> list[str] | None:
    """Run-relative names of the parts that the stored value `data` of `key` is a
    manifest of; None when `data` is a whole value."""
    if not data.startswith(_PARTS_MAGIC):
        return None
    tag, count = data[len(_PARTS_MAGIC) :].decode().split(":")
    return [part_key(key, tag, i) for i in range(int(count))]


def commit_coordination_keys(prefix: str, fan_ins: Sequence[FanIn], events: bool) -> list[str]:
    """Full names of the coordination keys a commit touches besides its values: each
    fan-in's parent set and ready claim, and the event stream if it sent events."""
    keys: list[str] = []
    for mark in fan_ins:
        parents = prefix + fan_in_key(mark.child)
        keys += [parents, parents + _READY_CLAIM_SUFFIX]
    if events:
        keys.append(prefix + EVENTS_KEY)
    return keys


def split_large_values(values: dict[str, bytes], limit: int, tag: str) -> dict[str, bytes]:
    """Values above `limit` bytes as parts (written first) and a manifest under the
    value's own key (written after with SET NX: still the write-once guard). Parts are
    named by `tag` (unique per commit), so a duplicate write never touches the parts of
    the value that won; its own parts are deleted with the run."""
    if all(len(data) <= limit for data in values.values()):
        return values
    parts: dict[str, bytes] = {}
    whole: dict[str, bytes] = {}
    for key, data in values.items():
        if len(data) <= limit:
            whole[key] = data
            continue
        view = memoryview(data)
        count = math.ceil(len(data) / limit)
        for i in range(count):
            parts[part_key(key, tag, i)] = bytes(view[i * limit : (i + 1) * limit])
        whole[key] = _PARTS_MAGIC + f"{tag}:{count}".encode()
    return {**parts, **whole}


#: What `call_with_retry` retries by default: the connection was lost or timed out.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (redis.ConnectionError, redis.TimeoutError)


def call_with_retry(
    operation: Callable[[], T],
    *,
    what: str,
    address: str,
    policy: RetryPolicy,
    retry_on: tuple[type[BaseException], ...] = CONNECTION_ERRORS,
    before_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run a Redis `operation`, retrying `retry_on` errors (lost connections and timeouts)
    `policy.retries` times with exponential backoff and a log line each; then raise
    StoreUnavailableError naming the address (never the password). Wrong credentials fail
    at once. `before_retry` gets each error before its retry (a cluster client refreshes
    its map of the slots there)."""
    attempt = 0
    while True:
        try:
            return operation()
        except AuthenticationError as exc:  # retrying cannot fix a wrong password
            raise StoreUnavailableError(
                f"Redis at {address} refused our credentials ({what}): {exc}"
            ) from exc
        except retry_on as exc:
            if attempt >= policy.retries:
                raise StoreUnavailableError(
                    f"Redis at {address} unreachable after {attempt + 1} attempts ({what}): {exc}"
                ) from exc
            delay = policy.delay_s(attempt)
            attempt += 1
            logger.warning(
                "Redis at %s: %s failed (%s); retry %d/%d in %.2f s",
                address,
                what,
                exc,
                attempt,
                policy.retries,
                delay,
            )
            if before_retry is not None:
                before_retry(exc)
            time.sleep(delay)


def describe_address(connection_kwargs: Mapping[str, Any]) -> str:
    """host:port (or unix:path) of a connection pool, without its credentials."""
    if "path" in connection_kwargs:
        return f"unix:{connection_kwargs['path']}"
    return f"{connection_kwargs.get('host', 'localhost')}:{connection_kwargs.get('port', 6379)}"


def glob_escape(text: str) -> str:
    """`text` as a SCAN MATCH pattern that matches only itself."""
    return "".join("\\" + c if c in _GLOB_CHARS else c for c in text)


def text(value: bytes | str) -> str:
    """A key or field as redis-py returns it (bytes), as text."""
    return value.decode() if isinstance(value, bytes) else value


def _decode_events(run_id: str, where: bytes, fields: Mapping[bytes, bytes]) -> list[Event]:
    """The events of one commit in a stream entry's `fields`, signed together for
    `where`."""
    what = f"events of run {run_id}"
    wires = serialize.loads(fields[_EVENT_FIELD_BYTES], where=where, what=what)
    if not isinstance(wires, tuple):  # an entry of another version: one bare event
        wires = (wires,)
    return [event_from_wire(wire) for wire in wires]


def value_place(run_id: str, key: str) -> bytes:
    """Where the value `key` of run (or scope) `run_id` is signed for: its pickle is
    refused under any other key or run (`security.place`)."""
    return security.place("value", run_id, key)


def event_place(run_id: str) -> bytes:
    """Where the events of run `run_id` are signed for (`security.place`)."""
    return security.place("event", run_id)


def open_store(spec: str | None = None) -> RedisStore:
    """The Redis store named by `spec`.

    "redis" or None: the server at kong.store.url when one is configured (also via
    DASK_KONG__STORE__URL), else a private redis-server that closing the store stops.
    A redis://, rediss:// or unix:// URL: that existing server (password in the URL), or
    the Redis Cluster that server is a node of.
    """
    if spec is None or spec == "redis":
        url = config.get("store.url")
        return connect(url) if url else start_private_store()
    if spec.startswith(URL_SCHEMES):
        return connect(spec)
    raise ValueError(f"unknown Redis store {spec!r}: use 'redis' or a redis:// URL")


def connect(url: str) -> RedisStore:
    """A store on the existing server at `url`, checked to answer. When that server is a
    node of a Redis Cluster (any node: the others are found from it), a
    `RedisClusterStore` that spreads each run's values over the cluster's shards."""
    store = RedisStore(url)
    try:
        clustered = store.cluster_enabled()
    except BaseException:
        store.close()
        raise
    if not clustered:
        return store
    store.close()
    from .cluster import RedisClusterStore  # imports this module: not at the top

    return RedisClusterStore(url)


def start_private_store() -> RedisStore:
    """A store on a private redis-server of its own, stopped when the store closes."""
    server = RedisServer()
    try:
        return RedisStore(server.url, owned_server=server)
    except BaseException:
        server.stop()
        raise
