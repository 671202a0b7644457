"""Ctrl-C during a run: control comes back within a second, the run is cancelled, the
workers running its tasks are stopped (processes: killed by PID) or written off
(threads: a thread cannot be killed), their slots are free for the next compute, which
starts at once, and the run's keys are deleted.

Every cancelled run here holds 20 s tasks (interrupt_helpers.LONG_TASK_S): nothing may
wait for them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dask_kong import Kong, last_run
from dask_kong.store.server import LocalRedisCluster, RedisServer
from dask_kong.waits import poll_until

from .interrupt_helpers import (
    SETTLE_S,
    compute_and_interrupt,
    inc,
    long_run,
    marked_pids,
    pid_alive,
    timed,
)

# The bar: Ctrl-C returns, and the next small compute completes, within this.
WITHIN_S = 1.0


SESSIONS = ("threads", "processes")
#: For the tests that check cleanup: "processes-cluster" too, worker processes on the
#: session's Redis Cluster (issue #17), whose keys are spread over its shards.
ON_A_CLUSTER_TOO = pytest.mark.parametrize(
    "session", [*SESSIONS, "processes-cluster"], indirect=True
)


@pytest.fixture(params=SESSIONS)
def session(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[Kong]:
    """A session of its own (interrupts kill workers: the shared ones must not see it),
    two workers, warmed by one compute so that what is timed is the interrupt."""
    if request.param == "threads":
        kong = Kong(backend="threads", store="memory", workers=2)
    elif request.param == "processes-cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        kong = Kong(backend="processes", store=cluster.url, workers=2)
    else:
        kong = Kong(backend="processes", store=redis_server.url, workers=2)
    try:
        assert kong.get({"a": (inc, 1)}, "a") == 2
        yield kong
    finally:
        kong.close()


def interrupt_long_run(kong: Kong, marks: Path, running: int = 2) -> float:
    """Ctrl-C a run of long tasks once `running` of them have started; the time to return."""
    return compute_and_interrupt(
        kong, long_run(marks), "total", lambda: len(list(marks.iterdir())) >= running
    )


def test_ctrl_c_returns_within_a_second(session: Kong, tmp_path: Path) -> None:
    return_s = interrupt_long_run(session, tmp_path)
    assert return_s < WITHIN_S, f"Ctrl-C took {return_s:.2f} s to return"


def test_the_next_compute_after_ctrl_c_starts_at_once(session: Kong, tmp_path: Path) -> None:
    """Not held up by the slots of the cancelled run's 20 s tasks. On processes its
    worker was killed, so the next compute may pay a start-up of the replacement process
    (started at the kill; the issue allows it), which the task's metrics report; nothing
    else may delay it."""
    interrupt_long_run(session, tmp_path)
    value, next_s = timed(lambda: session.get({"a": (inc, 1), "b": (inc, "a")}, "b"))
    assert value == 3
    summary = last_run()
    assert summary is not None
    startup_s = max(m.startup_s for m in summary.task_metrics.values())
    if session.backend_name == "threads":
        assert startup_s < 0.1
    assert next_s - startup_s < WITHIN_S, f"next compute {next_s:.2f} s, start-up {startup_s:.2f} s"


@ON_A_CLUSTER_TOO
def test_an_interrupted_run_deletes_its_keys(session: Kong, tmp_path: Path) -> None:
    interrupt_long_run(session, tmp_path)
    run_id = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run_id) == [], SETTLE_S)
    assert session.store.is_cancelled(run_id)


def test_an_interrupt_kills_the_worker_processes_running_the_run(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    with Kong(backend="processes", store=redis_server.url, workers=2) as kong:
        interrupt_long_run(kong, tmp_path)
        pids = marked_pids(tmp_path)
        assert len(pids) == 2
        assert poll_until(lambda: not any(pid_alive(p) for p in pids), SETTLE_S), pids
        stats = kong.backend.gateway.stats()  # type: ignore[attr-defined]
        assert stats.busy == 0 and stats.queued == 0  # slots freed, queued branches dropped
        assert stats.cancelled == 4  # 2 running (killed) + 2 queued (dropped)
        assert stats.workers_lost == 0  # killed on purpose: not reported as lost


def test_an_interrupt_writes_off_the_threads_running_the_run(tmp_path: Path) -> None:
    with Kong(backend="threads", store="memory", workers=2) as kong:
        interrupt_long_run(kong, tmp_path)
        pool: Any = kong.backend
        assert len(pool._written_off) == 2  # still in their 20 s task, not counted
        assert not pool._threads & pool._written_off
        assert not pool._work  # the queued branches were dropped
        # the pool grows past its cap by the written-off threads, never by more
        values = kong.get(
            {f"x{i}": (time.sleep, 0.2) for i in range(4)}, [f"x{i}" for i in range(4)]
        )
        assert values == (None,) * 4
        assert len(pool._threads) <= pool.max_workers


def test_an_interrupted_run_stops_its_other_branches_at_the_next_task(tmp_path: Path) -> None:
    started: list[int] = []

    def step(i: int, *_: int) -> int:
        started.append(i)
        time.sleep(0.05)
        return i

    # A chain of short tasks next to long ones: after Ctrl-C the chain stops at its next
    # task boundary, not at its end (2 s).
    dsk: dict[str, Any] = long_run(tmp_path, n=1)
    dsk["c0"] = (step, 0)
    dsk.update({f"c{i}": (step, i, f"c{i - 1}") for i in range(1, 40)})
    dsk["out"] = (sum, ["c39", "total"])
    with Kong(backend="threads", store="memory", workers=2) as kong:
        compute_and_interrupt(kong, dsk, "out", lambda: bool(started) and any(tmp_path.iterdir()))
        stopped_at = len(started)
        time.sleep(0.3)
        assert len(started) <= stopped_at + 1  # at most the task running at the interrupt
        assert len(started) < 20


def test_an_interrupt_as_the_run_starts_still_cleans_up(session: Kong) -> None:
    # Ctrl-C as soon as the run has an id: while it is planned, submitted or followed.
    before = session.last_run_id
    dsk = {"a": (time.sleep, 20.0), "b": (inc, 1), "c": (lambda *_: 0, "a", "b")}
    return_s = compute_and_interrupt(session, dsk, "c", lambda: session.last_run_id != before)
    assert return_s < WITHIN_S
    run_id = session.last_run_id or ""
    assert poll_until(lambda: session.store.run_keys(run_id) == [], SETTLE_S)
    assert session.get({"a": (inc, 1)}, "a") == 2
