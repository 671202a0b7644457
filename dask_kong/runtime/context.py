"""What a worker needs to run tasks of one run: the DAG, the plan, the store, an invoker.

A `RunContext` is built by the client (embedded mode: shared by all worker threads) or by
`dask_kong.handler` in a worker process from its invocation payload (serverless modes).
What one invocation carries is `dask_kong.invocation.model.Invocation`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..dag import DAG
from ..invocation.model import Invocation
from ..invocation.payload import DataRefs, RunSettings, Shipment
from ..planning.plan import Plan
from ..store.base import Store
from .heartbeat import Heartbeater


class Invoker(Protocol):
    """Starts new workers. Fire-and-forget: a worker never waits for the ones it starts."""

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        """Start one worker per invocation (concurrently where the backend can)."""
        ...


class CancelProbe:
    """Whether a run was cancelled, asked of the store at most every `interval_s`.

    One probe per run per process, shared by every branch the process runs for it: a
    warm serverless worker serves many short invocations of one run, and a store
    round-trip at the start of each would cost as much as the tasks themselves."""

    def __init__(self, store: Store, run_id: str, interval_s: float) -> None:
        self.store = store
        self.run_id = run_id
        self.interval_s = 0.0 if store.in_process else interval_s
        self._seen = False
        self._checked_at = float("-inf")

    def cancelled(self) -> bool:
        if self._seen:
            return True
        now = time.monotonic()
        if now - self._checked_at < self.interval_s:
            return False
        self._checked_at = now
        self._seen = self.store.is_cancelled(self.run_id)
        return self._seen


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
    # How invocations refer to this run when workers live in other processes (set by the
    # backend's prepare_run: runtime.remote); None in the embedded mode.
    shipment: Shipment | None = None
    # Data entries kept in the session's scope, not in the DAG (runtime.upload); None
    # when every data entry is in the DAG (the embedded mode).
    data_refs: DataRefs | None = None
    active: int = 0
    cancel_probe: CancelProbe | None = None
    # Handles to state this process's tasks made for the run, by task (dask_kong.values):
    # kept alive until the run ends here, and used by every task of this process that
    # reads them. A worker process shares one dict per run across its invocations.
    handles: dict[int, Any] = field(default_factory=dict)
    # True in a worker process (not the client's): warnings a task raises are recorded
    # and raised again in the client, where the user's filters and pytest.warns are.
    captures_warnings: bool = False
    # True in a worker process: fault injection (kong.faults) may end it. Never in the
    # client's process, whose threads the embedded backend's workers are.
    fault_injection: bool = False
    # Values of tasks computed in the client's own process (the threads backend), by
    # task, for dask's `posttask` callbacks, which take a task's result: set by the
    # client only while one watches, filled by its worker threads, and emptied as the
    # client passes each on. None otherwise (worker processes never fill it).
    task_values: dict[int, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.cancel_probe is None:
            self.cancel_probe = CancelProbe(self.store, self.run_id, self.settings.cancel_check_s)

    def branch_started(self) -> None:
        with self._lock:
            self.active += 1

    def branch_ended(self) -> None:
        with self._lock:
            self.active -= 1

    @property
    def holds_leases(self) -> bool:
        """Whether the run's invocations hold leases (`runtime.leases`): on Lambda."""
        return self.shipment is not None and self.shipment.invoker.holds_leases

    def cancelled(self) -> bool:
        """Whether the client cancelled the run (see `CancelProbe`)."""
        assert self.cancel_probe is not None
        return self.cancel_probe.cancelled()
