"""Failures are loud, named, bounded in time, and leave nothing behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import dask
import pytest

from dask_kong import Kong
from dask_kong.errors import StuckRunError
from dask_kong.invocation.model import Invocation
from dask_kong.runtime.context import RunContext

from .kong_fixtures import ON_A_CLUSTER_TOO, on_a_cluster_too


class TaskBoomError(Exception):
    pass


def boom(v: int) -> int:
    raise TaskBoomError(f"bad value {v}")


def inc(v: int) -> int:
    return v + 1


@on_a_cluster_too("threads-cluster")
def test_task_exception_keeps_type_message_and_remote_traceback(kong: Kong) -> None:
    dsk = {"a": 1, "b": (inc, "a"), "c": (boom, "b"), "d": (inc, "c")}
    with pytest.raises(TaskBoomError, match="bad value 2") as info:
        kong.get(dsk, "d")
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "'c'" in notes  # names the failing task
    frames = [entry.name for entry in info.traceback]
    assert "boom" in frames or "in boom" in notes  # the worker-side frame is shown


@ON_A_CLUSTER_TOO
def test_failed_run_deletes_its_keys(kong: Kong) -> None:
    dsk = {"a": (inc, 1), "b": (inc, "a"), "c": (boom, "a"), "d": (inc, "b")}
    with pytest.raises(TaskBoomError):
        kong.get(dsk, ["c", "d"])
    assert kong.last_run_id is not None
    assert kong.store.run_keys(kong.last_run_id) == []


@on_a_cluster_too("threads-cluster")
def test_successful_run_deletes_its_keys(kong: Kong) -> None:
    from dask_kong import last_run

    assert kong.get({"a": (inc, 1), "b": (inc, "a")}, "b") == 3
    summary = last_run()
    assert summary is not None
    assert kong.store.run_keys(summary.run_id) == []


def test_other_branches_stop_after_a_failure() -> None:
    started = []

    def slow(i: int, *_: int) -> int:
        started.append(i)
        time.sleep(0.05)
        return i

    # Two roots: a chain of 40 slow tasks, and a task that fails at once. The chain must
    # stop at a task boundary soon after, not run to its end (2 s).
    dsk: dict[str, Any] = {"s0": (slow, 0)}
    dsk.update({f"s{i}": (slow, i, f"s{i - 1}") for i in range(1, 40)})
    dsk["bad"] = (boom, 0)
    dsk["out"] = (sum, ["s39", "bad"])
    before = threading.active_count()
    with Kong(workers=2) as session, pytest.raises(TaskBoomError):
        session.get(dsk, "out")
    assert len(started) < 20  # cancelled, not run to the end
    assert threading.active_count() <= before


def test_compute_after_failure_works(kong: Kong) -> None:
    with pytest.raises(TaskBoomError):
        kong.get({"a": (boom, 1)}, "a")
    assert kong.get({"a": (inc, 1)}, "a") == 2


class DroppingBackend:
    """Loses one invocation, as a serverless platform may: the run must fail, not hang."""

    name = "dropping"

    def __init__(self, inner: object, drop_start: int) -> None:
        self.inner = inner
        self.drop_start = drop_start

    def prepare_run(self, ctx: RunContext) -> None:
        self.inner.prepare_run(ctx)  # type: ignore[attr-defined]

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        kept = [i for i in invocations if i.start != self.drop_start]
        self.inner.invoke(ctx, kept)  # type: ignore[attr-defined]

    def resources(self) -> object:
        return self.inner.resources()  # type: ignore[attr-defined]

    def prewarm(self, resource: str) -> None:
        self.inner.prewarm(resource)  # type: ignore[attr-defined]

    def concurrency(self) -> int | None:
        return self.inner.concurrency()  # type: ignore[attr-defined, no-any-return]

    def close(self) -> None:
        self.inner.close()  # type: ignore[attr-defined]


def test_lost_invocation_fails_within_stall_timeout_naming_the_task() -> None:
    dsk = {"a": (inc, 1), "b": (inc, 2), "c": (sum, ["a", "b"])}
    with dask.config.set({"kong.run.stall_timeout_s": 0.5}), Kong() as session:
        dag_keys = ["a", "b"]  # roots, in whichever order: drop the one computing "b"
        from dask_kong.dag import to_dag

        dropped = to_dag(dsk, "c").keys.index(dag_keys[1])
        session.backend = DroppingBackend(session.backend, dropped)  # type: ignore[assignment]
        started = time.monotonic()
        with pytest.raises(StuckRunError, match="'b'"):
            session.get(dsk, "c")
        assert time.monotonic() - started < 5


def test_unknown_planner_and_store_and_backend_are_named() -> None:
    with pytest.raises(ValueError, match="unknown planner 'nope'"):
        Kong(planner="nope")
    with pytest.raises(ValueError, match="unknown store 'nope'"):
        Kong(store="nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        Kong(backend="nope")
