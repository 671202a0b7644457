"""What a worker measures of the task it runs, recorded in one place.

A worker fills one `TaskMetrics` per task and ships it in the task's completion event.
The worker's functions do not pass that record around: the branch holds a `Recorder` for
the task it is running, and code that moves bytes or spends time says so through it
(`with branch.recorder.timing(Phase.READ): ...`, `branch.recorder.read(nbytes)`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..metrics.records import TaskMetrics


class Phase(enum.StrEnum):
    """Where a task's time goes; each names the `TaskMetrics` field it adds to."""

    READ = "read_s"  # reading inputs from the store (pre-load included)
    EXECUTE = "exec_s"  # running the task's own function
    WRITE = "write_s"  # committing its output and marks (serialization included)
    INVOKE = "invoke_s"  # starting the workers of its other dependents
    RECOMPUTE = "recompute_s"  # rerunning inputs published as recipes


class Recorder:
    """Measurements of the task a worker is running (`metrics`)."""

    def __init__(self, metrics: TaskMetrics) -> None:
        self.metrics = metrics

    @contextmanager
    def timing(self, phase: Phase) -> Iterator[None]:
        """Add the time the block takes to `phase` (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            setattr(self.metrics, phase, getattr(self.metrics, phase) + elapsed)

    def read(self, nbytes: int) -> None:
        """Bytes read from the store for this task."""
        self.metrics.read_bytes += nbytes

    def cached(self, nbytes: int) -> None:
        """Bytes of session data this task took from its process's cache instead of
        reading the store (`runtime.data_cache`)."""
        self.metrics.cached_bytes += nbytes

    def wrote(self, nbytes: int) -> None:
        """Bytes written for this task (at most one write per task and branch; the store
        may have stamped the size on the completion event already)."""
        self.metrics.written_bytes = max(self.metrics.written_bytes, nbytes)
