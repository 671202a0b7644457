"""`RedisHistory`: the metrics history in Redis, shared by every client of that Redis and
kept across runs (each key expires `kong.planning.history_ttl_s` after the last record
that touched it).

Per group, one hash of counts and sums and one capped list per metric. Recording a run
is one round-trip (the Lua script `RECORD_OBSERVATIONS`); so is a look-up (a pipeline).
redis-py is imported when a `RedisHistory` is made, not with this module: planners import
the history package, and workers (Lambda cold starts) import planners without ever
recording history.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ... import config
from .base import Stats, SummaryHistory, bounded_sample
from .observe import Observations
from .taxonomy import Metric, group_metrics

if TYPE_CHECKING:
    import redis

T = TypeVar("T")

#: Prefix of every history key in Redis. History is not run-scoped: no run id in it.
DEFAULT_PREFIX = "kong:history:"
# Adds one record's observations to a RedisHistory in one call.
# KEYS, in pairs: KEYS[2i-1] the hash of a group's counts and sums, KEYS[2i] the window
#   (list) of one of its metrics.
# ARGV[1]: window size; ARGV[2]: TTL in seconds; then, per key pair: the metric's name,
#   the number of observations, their sum, k, and k samples (k <= window) to push.
# Counts and sums are increments and samples are pushes, so concurrent records commute.
RECORD_OBSERVATIONS = """
local window = tonumber(ARGV[1])
local ttl = ARGV[2]
local expired = {}
local a = 3
for i = 1, #KEYS, 2 do
  local hash, list = KEYS[i], KEYS[i + 1]
  local metric, k = ARGV[a], tonumber(ARGV[a + 3])
  redis.call('HINCRBY', hash, 'n:' .. metric, ARGV[a + 1])
  redis.call('HINCRBYFLOAT', hash, 'sum:' .. metric, ARGV[a + 2])
  if not expired[hash] then
    redis.call('EXPIRE', hash, ttl)
    expired[hash] = true
  end
  if k > 0 then
    redis.call('LPUSH', list, unpack(ARGV, a + 4, a + 3 + k))
    redis.call('LTRIM', list, 0, window - 1)
    redis.call('EXPIRE', list, ttl)
  end
  a = a + 4 + k
end
return 0
"""
# Samples are stored with 6 significant digits: predictions need no more, and each
# stored sample takes about half the bytes of a full repr.
_SAMPLE_FORMAT = "%.6g"


class RedisHistory(SummaryHistory):
    """History in Redis, shared by every client of that Redis and kept across runs.

    Per group: a hash ``<prefix><group>`` with fields ``n:<metric>`` (HINCRBY) and
    ``sum:<metric>`` (HINCRBYFLOAT), and a list ``<prefix><group>:w:<metric>`` of the
    latest samples (LPUSH then LTRIM to the window). Increments and pushes commute, so
    concurrent recorders never lose an observation. A record is one call of the Lua
    script RECORD_OBSERVATIONS: measured on a 1,001-task run against a local server,
    ~6 ms in all, nearly all of it summarising the run in Python (MemoryHistory takes as
    long), where a pipeline of the same Redis commands took ~15 ms (redis-py spends
    ~13 us per pipelined command). A look-up is one pipeline.

    On a Redis Cluster the script needs all history keys on one slot: a URL of a cluster
    node gets redis-py's cluster client and the prefix in braces (one hash tag) unless it
    has a tag already; a client passed in needs a prefix with a hash tag.
    """

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        prefix: str = DEFAULT_PREFIX,
        *,
        ttl_s: float | None = None,
        samples: int | None = None,
    ) -> None:
        # redis-py is imported here, not with the module: planners import this module, and
        # workers (Lambda cold starts) import planners without ever recording history.
        import redis

        from ...store.cluster import cluster_client
        from ...store.redis import RetryPolicy, connection_options, describe_address

        super().__init__(samples)
        self.prefix = prefix
        self.ttl_s = max(1, math.ceil(float(config.get("planning.history_ttl_s", ttl_s))))
        self._retry = RetryPolicy.from_config()
        self._owned_pool: redis.ConnectionPool | None = None
        self._client: redis.Redis | redis.RedisCluster
        cluster = cluster_client(url_or_client) if isinstance(url_or_client, str) else None
        self._owned_cluster = cluster
        if cluster is not None:
            self._client = cluster
            self.prefix = prefix if "{" in prefix else "{" + prefix + "}"
            #: Where the server is, safe to log: host:port or unix:path.
            self.address = f"{cluster.get_default_node().name} (cluster)"
        elif isinstance(url_or_client, str):
            # The store's connection settings: our `_call` retries, redis-py must not.
            self._owned_pool = redis.ConnectionPool.from_url(url_or_client, **connection_options())
            self._client = redis.Redis(connection_pool=self._owned_pool)
            self.address = describe_address(self._owned_pool.connection_kwargs)
        else:
            self._client = url_or_client
            self.address = describe_address(url_or_client.connection_pool.connection_kwargs)
        # EVALSHA, loading the script first if the server does not hold it (yet, or any more).
        self._record_script = self._client.register_script(RECORD_OBSERVATIONS)

    def __repr__(self) -> str:
        return f"RedisHistory({self.address}, prefix={self.prefix!r})"

    def hash_key(self, group: str) -> str:
        return self.prefix + group

    def window_key(self, group: str, metric: Metric) -> str:
        return f"{self.prefix}{group}:w:{metric}"

    def _apply(self, obs: Observations) -> None:
        if not obs:
            return
        keys: list[str] = []
        args: list[str | int] = [self.samples, self.ttl_s]
        for group, by_metric in obs.items():
            for metric, values in by_metric.items():
                samples = bounded_sample(values, self.samples)
                keys += [self.hash_key(group), self.window_key(group, metric)]
                args += [metric.value, len(values), repr(math.fsum(values)), len(samples)]
                args += [_SAMPLE_FORMAT % v for v in samples]
        # Not idempotent (a retry after a lost reply may count a run twice): harmless for
        # statistics, and far cheaper than a token per record.
        self._call(
            "record metrics history",
            lambda: self._record_script(keys=keys, args=args, client=self._server()),
        )

    def _read(self, groups: Sequence[str]) -> dict[str, Stats]:
        if not groups:
            return {}

        def read() -> list[Any]:
            pipe = self._server().pipeline(transaction=False)
            for group in groups:
                pipe.hgetall(self.hash_key(group))
                for metric in group_metrics(group):
                    pipe.lrange(self.window_key(group, metric), 0, self.samples - 1)
            return list(pipe.execute())

        replies = self._call("read metrics history", read)
        found = {}
        position = 0
        for group in groups:
            fields = replies[position]
            metrics = group_metrics(group)
            windows = replies[position + 1 : position + 1 + len(metrics)]
            position += 1 + len(metrics)
            if fields:
                found[group] = _decode_stats(fields, dict(zip(metrics, windows, strict=True)))
        return found

    def _server(self) -> redis.Redis | redis.RedisCluster:
        """Where a call goes. On a cluster: the primary of the history's one slot, asked
        at every call (a slot that moved is followed once `_call` has refreshed the map),
        through a plain client: redis-py's cluster client routes each command in Python,
        which made a record ~5x and a look-up ~4x slower."""
        cluster = self._owned_cluster
        if cluster is None:
            return self._client
        node_client: redis.Redis = cluster.get_redis_connection(
            cluster.get_node_from_key(self.prefix)
        )
        return node_client

    def close(self) -> None:
        """Disconnect the pool this history opened (a client passed in is left alone)."""
        if self._owned_pool is not None:
            self._owned_pool.disconnect()
        if self._owned_cluster is not None:
            self._owned_cluster.close()

    def _call(self, what: str, operation: Callable[[], T]) -> T:
        """Run `operation` with the store's retry policy (kong.store.retries); on a
        cluster, redirections and failovers are retried too, as the cluster store does."""
        from ...store.cluster import call_with_cluster_retry
        from ...store.redis import call_with_retry

        cluster, address, policy = self._owned_cluster, self.address, self._retry
        if cluster is not None:
            return call_with_cluster_retry(
                cluster, operation, what=what, address=address, policy=policy
            )
        return call_with_retry(operation, what=what, address=address, policy=policy)


def _decode_stats(fields: Mapping[bytes, bytes], windows: Mapping[Metric, list[bytes]]) -> Stats:
    counts: dict[Metric, int] = {}
    sums: dict[Metric, float] = {}
    for raw_name, raw_value in fields.items():
        kind, _, name = raw_name.decode().partition(":")
        try:
            metric = Metric(name)
        except ValueError:
            continue  # a metric that a newer version records: not ours to read
        if kind == "n":
            counts[metric] = int(raw_value)
        elif kind == "sum":
            sums[metric] = float(raw_value)
    samples = {m: tuple(float(v) for v in values) for m, values in windows.items() if values}
    return Stats(counts, sums, samples)
