"""The `Store` protocol: where a run's intermediate data and coordination live.

Workers never talk to each other or to a scheduler: everything they share goes through a
store. `MemoryStore` serves the embedded mode (threads in one process, values kept as
Python objects, nothing serialized); `RedisStore` serves worker processes and AWS Lambda.
Nearly all runtime logic is tested against `MemoryStore`; `RedisStore` is tested against a
real redis-server.

Keys passed to a store are run-relative (see `dask_kong.constants`); the store prefixes
them with ``kong:{run_id}:`` and gives every key a TTL.

Correctness under at-least-once invocation rests on three rules every store implements:
outputs are write-once (a second write of the same key is a no-op), a fan-in is a set of
parent ids (a parent reported twice counts once), and within one `commit` the writes are
applied before the fan-in marks, so a dependent that becomes ready always finds its inputs.
"""

from __future__ import annotations

import dataclasses
import enum
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ..constants import output_key
from ..metrics.records import TaskMetrics


class EventKind(enum.StrEnum):
    """What an event reports."""

    TASK_STARTED = "task-started"  # only while a callback watches task starts (Profiler)
    TASK_DONE = "task-done"
    TASK_FAILED = "task-failed"
    WORKER_FAILED = "worker-failed"


@dataclass(frozen=True)
class Event:
    """One entry of a run's event stream.

    `task` is the task's index in the DAG. `metrics` carries the task's measurements
    (timings, bytes) so the client builds the run summary without extra store traffic.
    For failures, `error` is the exception itself for an in-process store, its pickle for a
    remote one (None when it could not be pickled); `message`/`traceback` are its text.
    `wake` marks events a client is blocked on (a requested output, a failure): a store may
    batch wake-ups for the others. A WORKER_FAILED event carries the lost invocation's
    `payload`, so that the client can invoke its branch again (issue #13), and names
    the lost delivery (`Invocation.delivery`) as its `worker`.
    """

    kind: EventKind
    task: int
    worker: str
    metrics: TaskMetrics | None = None
    error: BaseException | bytes | None = None
    message: str = ""
    traceback: str = ""
    wake: bool = True
    payload: bytes | None = None


#: `TaskMetrics`' fields in their order, as a tuple: an event's metrics travel as one.
_METRIC_NAMES = tuple(f.name for f in dataclasses.fields(TaskMetrics))
_metric_values = operator.attrgetter(*_METRIC_NAMES)
#: First item of a wire event: a worker and a client of different dask-kong versions
#: get a clear error, not fields read in the wrong places.
WIRE_VERSION = 2  # 2: a stream entry holds a tuple of them (store.redis)

#: An event as it travels through a store that serializes (`event_to_wire`).
WireEvent = tuple[Any, ...]


def event_to_wire(event: Event) -> WireEvent:
    """`event` as a tuple of plain values, metrics a tuple too: a pickled dataclass costs
    many times a tuple's each way, and a run of 10,000 tasks sends 10,000 events through
    the client (`event_from_wire` reverses)."""
    m = event.metrics
    metrics = None if m is None else _metric_values(m)
    return (
        WIRE_VERSION,
        event.kind.value,
        event.task,
        event.worker,
        metrics,
        event.error,
        event.message,
        event.traceback,
        event.wake,
        event.payload,
    )


def event_from_wire(wire: WireEvent) -> Event:
    """The `Event` that `event_to_wire` made `wire` of; `ValueError` naming the versions
    when another version of dask-kong wrote it."""
    if (
        not isinstance(wire, tuple)
        or len(wire) != 10
        or wire[0] != WIRE_VERSION
        or not _metrics_fit(wire[4])
    ):
        raise ValueError(
            f"an event in another format than this dask-kong's (version {WIRE_VERSION}): "
            "the client and its workers must run the same version of dask-kong"
        )
    _, kind, task, worker, metrics, error, message, traceback, wake, payload = wire
    return Event(
        EventKind(kind),
        task,
        worker,
        None if metrics is None else TaskMetrics(*metrics),
        error,
        message,
        traceback,
        wake,
        payload,
    )


def _metrics_fit(metrics: Any) -> bool:
    """Whether a wire event's metrics are absent or have `TaskMetrics`' fields."""
    return metrics is None or (isinstance(metrics, tuple) and len(metrics) == len(_METRIC_NAMES))


@dataclass(frozen=True)
class FanIn:
    """Report that `parent` finished to the fan-in of `child`, which has `in_degree` parents.

    `retake`: the mark comes from a re-invoked branch (its worker was lost). If an
    earlier mark of this same parent completed the set, this one is "ready" too: the
    lost worker was to run the child, and now nobody else would."""

    child: int
    parent: int
    in_degree: int
    retake: bool = False


@dataclass
class CommitResult:
    """What a `commit` did: bytes actually written and the fan-in children it made ready."""

    bytes_written: int = 0
    ready: list[int] = field(default_factory=list)


def stamp_written_bytes(events: Sequence[Event], sizes: Mapping[str, int]) -> None:
    """Give each event whose task's output is written here its written size."""
    for event in events:
        size = sizes.get(output_key(event.task)) if event.metrics is not None else None
        if size is not None and event.metrics is not None:
            event.metrics.written_bytes = size


#: The task a heartbeat names when its worker ended its branch (`Store.heartbeat`).
ENDED = -1


class MissingKeyError(KeyError):
    """A key asked for is not in the store (never written, or already cleaned up)."""


@runtime_checkable
class Store(Protocol):
    """Storage and coordination for runs. Implementations must be thread-safe."""

    #: True when values are kept as Python objects in this process (no serialization):
    #: inlining them into an invocation then costs nothing.
    in_process: bool

    def commit(
        self,
        run_id: str,
        writes: Mapping[str, Any],
        fan_ins: Sequence[FanIn] = (),
        events: Sequence[Event] = (),
    ) -> CommitResult:
        """Apply, in this order and in one round-trip: write-once `writes`, then the fan-in
        marks, then append `events`. A fan-in child is in `ready` only for the one caller
        whose mark completed its set of parents, however often a parent is reported.

        An event whose task's output is among `writes` gets `metrics.written_bytes` set to
        the size the store writes for it before the event is stored, so a task's output
        and its completion can travel in one round-trip."""
        ...

    def get_many(self, run_id: str, keys: Sequence[str]) -> tuple[list[Any], int]:
        """Values of `keys`, in order, and the bytes read; `MissingKeyError` names the
        first absent one."""
        ...

    def forget(self, run_id: str, keys: Sequence[str]) -> None:
        """Drop values no task will read again, to bound memory. Only an in-process store
        drops anything: a remote one keeps them until the run ends, because a re-delivered
        invocation may still read them."""
        ...

    def drop(self, run_id: str, keys: Sequence[str]) -> None:
        """Delete the values of `keys` now, in every store (a value stored in parts with
        its parts). For values kept beyond one run (`runtime.session_keys`: a session's
        uploaded data and persisted results), whose owner knows no run reads them any more;
        a run's own values go with `delete_run`."""
        ...

    def move(self, run_id: str, keys: Sequence[str], scope: str, new_keys: Sequence[str]) -> None:
        """Move the values of `keys` out of run `run_id` into `scope` under `new_keys`
        (persist: a run's outputs kept beyond the run, without passing through the
        client where the store can rename). `MissingKeyError` names an absent key."""
        ...

    def exists(self, run_id: str, key: str) -> bool:
        """Whether `key` was written (a late worker checks this, never a notification)."""
        ...

    def claim(self, run_id: str, names: Sequence[str], holder: str = "") -> list[bool]:
        """For each name, True only for the first caller ever to claim it in this run
        (e.g. the one parent of a fan-in allowed to delay its I/O), or the first after
        `release_claims` of its holder. `holder` names the claimant (an invocation id)."""
        ...

    def release_claims(self, run_id: str, holder: str) -> int:
        """Free the claims `holder` (a lost invocation) holds, so that another worker may
        take them; how many."""
        ...

    def fan_in_progress(self, run_id: str, children: Sequence[int]) -> list[int]:
        """How many distinct parents have marked each child's fan-in so far (delayed I/O
        polls this to learn whether it is the last parent)."""
        ...

    def sizes(self, run_id: str, keys: Sequence[str]) -> list[int]:
        """Stored size in bytes of each key (0 when absent): for metrics and planning."""
        ...

    def events(self, run_id: str, cursor: str, timeout_s: float) -> tuple[str, list[Event]]:
        """Events after `cursor` ("0" for the start), waiting up to `timeout_s` for the
        first one. Returns the new cursor and the events (empty on timeout)."""
        ...

    def open_run(self, run_id: str) -> None:
        """Mark the run live, before its first invocation (and before anything is
        committed to it). Only a live run takes commits, claims and heartbeats: those that
        arrive before `open_run` or after `delete_run` are dropped and leave no key, so a
        straggler that outlives its failed run recreates nothing."""
        ...

    def heartbeat(self, run_id: str, beats: Mapping[str, int]) -> None:
        """Record that each worker in `beats` is alive and running the given task (a no-op
        unless the run is open: see `open_run`). The task `ENDED` records that the worker
        ended its branch: no later beat of that worker changes it (a beat sent before
        the end can arrive after it)."""
        ...

    def live_workers(self, run_id: str, ttl_s: float) -> dict[str, int]:
        """Workers whose last heartbeat is younger than `ttl_s` and who did not end, with
        their current task."""
        ...

    def heartbeats(self, run_id: str) -> dict[str, tuple[float, int]]:
        """Every worker's last heartbeat: its age in seconds and its task (`ENDED` for a
        worker that ended its branch). What leases are judged by (`runtime.leases`)."""
        ...

    def cancel(self, run_id: str) -> None:
        """Flag the run as cancelled: workers stop at their next task boundary."""
        ...

    def is_cancelled(self, run_id: str) -> bool:
        """Whether `cancel` was called for this run, or the run is not open (never opened,
        or deleted: a worker that outlives its failed run stops at its next check)."""
        ...

    def delete_run(self, run_id: str) -> int:
        """Delete every key of the run; returns how many were deleted."""
        ...

    def run_keys(self, run_id: str) -> list[str]:
        """Run-relative names of every key the run still has (tests prove cleanup)."""
        ...

    def close(self) -> None:
        """Release connections (and stop a private server the store owns)."""
        ...
