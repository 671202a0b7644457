"""What a worker needs to run tasks of one run: the DAG, the plan, the store, an invoker.

A `RunContext` is built by the client (embedded mode: shared by all worker threads) or by
a worker process from its invocation payload (serverless modes). `Invocation` is what one
invocation carries: where to start and the inputs that travel inline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import config
from ..dag import DAG
from ..planning import Plan
from ..store.base import Store
from .heartbeat import Heartbeater


@dataclass(frozen=True)
class Invocation:
    """Start a branch at task `start`; `inputs` maps parent task index -> value inline."""

    run_id: str
    start: int
    inputs: dict[int, Any] = field(default_factory=dict)


class Invoker(Protocol):
    """Starts new workers. Fire-and-forget: a worker never waits for the ones it starts."""

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        """Start one worker per invocation (concurrently where the backend can)."""
        ...


@dataclass(frozen=True)
class RunSettings:
    """Thresholds workers read on the hot path, resolved once per run from config."""

    inline_input_bytes: int
    progress_interval_s: float
    cancel_check_s: float
    cluster_bytes: int
    delay_io_bytes: int
    delay_io_wait_s: float

    @classmethod
    def from_config(cls) -> RunSettings:
        return cls(
            inline_input_bytes=int(config.get("payload.inline_input_bytes")),
            progress_interval_s=float(config.get("run.progress_interval_s")),
            cancel_check_s=float(config.get("run.cancel_check_s")),
            cluster_bytes=int(config.get("wukong.cluster_bytes")),
            delay_io_bytes=int(config.get("wukong.delay_io_bytes")),
            delay_io_wait_s=float(config.get("wukong.delay_io_wait_s")),
        )


@dataclass(eq=False)
class RunContext:
    """One run as a worker sees it. `active` counts branches running in this process, so
    an embedded client can wait for in-flight workers before it cleans up."""

    run_id: str
    dag: DAG
    plan: Plan
    store: Store
    invoker: Invoker
    heartbeater: Heartbeater
    settings: RunSettings
    output_tasks: frozenset[int] = frozenset()
    # How invocations refer to this run when workers live in other processes (a
    # `remote.Shipment`, set by the backend's prepare_run); None in the embedded mode.
    shipment: Any = None
    active: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _cancel_seen: bool = False
    _cancel_checked_at: float = 0.0

    def branch_started(self) -> None:
        with self._lock:
            self.active += 1

    def branch_ended(self) -> None:
        with self._lock:
            self.active -= 1

    def cancelled(self) -> bool:
        """Whether the client cancelled the run. An in-process store answers for free; a
        remote one is asked at most every `cancel_check_s` to keep it off the hot path."""
        if self._cancel_seen:
            return True
        if not self.store.in_process:
            now = time.monotonic()
            if now - self._cancel_checked_at < self.settings.cancel_check_s:
                return False
            self._cancel_checked_at = now
        self._cancel_seen = self.store.is_cancelled(self.run_id)
        return self._cancel_seen
