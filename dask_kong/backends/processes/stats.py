"""What the local gateway counts: `GatewayStats`, the snapshot `Gateway.stats()` returns,
and `PoolCounters`, the ever-growing part of it that the pool updates as it goes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GatewayStats:
    """A snapshot of what the gateway did since it started, and what it holds now."""

    invocations: int  # accepted: sync + async
    sync_invocations: int
    async_invocations: int  # includes pipe_invocations
    pipe_invocations: int  # started by handlers through invoke_via_gateway
    completed: int  # delivered an outcome, success or error
    function_errors: int  # outcomes that are Lambda errors (raised, lost, timed out)
    cold_starts: int
    warm_starts: int
    workers_lost: int  # died mid-invocation (not counting timeouts)
    timeouts: int
    expired_workers: int  # exited after keep_warm_s idle
    evicted_workers: int  # ended early to make room for a cold start of another config
    dropped_at_stop: int  # Event invocations still queued when the gateway stopped
    stopped_at_stop: int  # invocations still running after the drain at stop
    cancelled: int  # taken back by cancel(): dropped from the queue or their worker killed
    live_workers: int
    busy: int  # invocations running or cold-starting now
    max_busy: int
    queued: int
    max_queued: int
    cold_start_mean_s: float  # spawn to handler imported, over all cold starts
    cold_start_max_s: float
    live_by_config: dict[str, int]


@dataclass
class PoolCounters:
    """The monotonically growing part of GatewayStats (same names, see there), plus the
    total cold start time its mean is computed from."""

    invocations: int = 0
    sync_invocations: int = 0
    async_invocations: int = 0
    pipe_invocations: int = 0
    completed: int = 0
    function_errors: int = 0
    cold_starts: int = 0
    warm_starts: int = 0
    workers_lost: int = 0
    timeouts: int = 0
    expired_workers: int = 0
    evicted_workers: int = 0
    dropped_at_stop: int = 0
    stopped_at_stop: int = 0
    cancelled: int = 0
    max_busy: int = 0
    max_queued: int = 0
    cold_start_total_s: float = 0.0
    cold_start_max_s: float = 0.0

    def record_cold_start(self, elapsed_s: float) -> None:
        """One worker took `elapsed_s` from spawn to READY."""
        self.cold_start_total_s += elapsed_s
        self.cold_start_max_s = max(self.cold_start_max_s, elapsed_s)
