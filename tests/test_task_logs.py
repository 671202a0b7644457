"""What a task prints or logs in a worker process reaches the client's logging, on a
logger per worker, and stays readable per task in the run's summary, bounded."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import dask
import pytest

from dask_kong import Kong, last_run
from dask_kong.runtime.task_logs import BranchCapture


def chatty(x: int) -> int:
    print(f"hello from task {x}")
    logging.getLogger("user.code").warning("careful with %d", x)
    return x


def flood(x: int) -> int:
    print("y" * 1_000_000)
    return x


def test_prints_and_log_records_reach_the_client_per_worker(
    kong_sessions: Callable[[str], Kong], caplog: pytest.LogCaptureFixture
) -> None:
    session = kong_sessions("processes")
    task = dask.delayed(chatty, pure=False)(7)
    with caplog.at_level(logging.INFO, logger="dask_kong.worker"):
        assert dask.compute(task, scheduler=session.get) == (7,)
    forwarded = [r for r in caplog.records if r.name.startswith("dask_kong.worker.")]
    assert len(forwarded) == 1
    text = forwarded[0].getMessage()
    assert "hello from task 7" in text and "WARNING user.code: careful with 7" in text
    summary = last_run()
    assert summary is not None
    logs = summary.task_logs()
    assert list(logs) == [task.key] and "hello from task 7" in logs[task.key]


def test_a_task_that_prints_a_lot_is_cut_at_the_limit(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("processes")
    task = dask.delayed(flood, pure=False)(1)
    with dask.config.set({"kong.logs.max_task_bytes": 1000}):
        dask.compute(task, scheduler=session.get)
    summary = last_run()
    assert summary is not None
    text = summary.task_logs()[task.key]
    assert text.startswith("y" * 1000) and "more characters dropped" in text
    assert len(text) < 1200


def test_bounded_capture_keeps_the_first_characters_of_each_task(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with BranchCapture(24) as capture:
        capture.start_task()
        print("0123456789abcdef0123456789abcdef")
        warnings.warn("first task's", UserWarning, stacklevel=1)
        text, caught = capture.finish_task()
        print("between tasks")  # the worker's own: written through
        capture.start_task()
        logging.getLogger("a.task").warning("second")
        second, none = capture.finish_task()
    assert text.startswith("0123456789abcdef01234567") and "9 more characters" in text
    assert [str(w.message) for w in caught] == ["first task's"]
    assert second == "WARNING a.task: second\n" and none == []
    assert "between tasks" in capsys.readouterr().out


def test_a_tasks_warning_filters_do_not_reach_the_next_task() -> None:
    with BranchCapture(100) as capture:
        capture.start_task()
        warnings.simplefilter("error")  # the task's own choice
        capture.finish_task()
        capture.start_task()
        warnings.warn("a later task's", UserWarning, stacklevel=1)  # recorded, not raised
        _, caught = capture.finish_task()
    assert [str(w.message) for w in caught] == ["a later task's"]
