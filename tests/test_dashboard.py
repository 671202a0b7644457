"""The dashboard without a browser: what it records of runs, how it follows them (memory
store and a real Redis), the standalone dashboard and its command, the report file, and
that a dashboard that is off costs nothing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dask
import pytest

from dask_kong import Kong, last_run, performance_report
from dask_kong.diagnostics import columns as cols
from dask_kong.diagnostics import observers
from dask_kong.diagnostics.follow import RunFollower
from dask_kong.diagnostics.publish import RUNS_KEY, serve_store
from dask_kong.diagnostics.runs import RunBook, RunGraph, RunRecord, TaskState
from dask_kong.diagnostics.server import Dashboard
from dask_kong.metrics.records import RunSummary, TaskMetrics
from dask_kong.store.base import Event, EventKind
from dask_kong.store.memory import MemoryStore
from dask_kong.store.redis import RedisStore
from dask_kong.store.server import RedisServer

# Longest any test here waits for a thread, a page or a process.
WAIT_S = 10.0
# A gated task waits at most this long for its test to open the gate.
GATE_TIMEOUT_S = 20.0
GATE = threading.Event()


def inc(x: int) -> int:
    return x + 1


def gated(i: int) -> int:
    GATE.wait(GATE_TIMEOUT_S)
    return i


def diamond() -> Any:
    """a -> (b, c) -> d: four tasks, one fan-in."""
    a = dask.delayed(inc)(1)
    return dask.delayed(sum)([dask.delayed(inc)(a), dask.delayed(inc)(a)])


def run_once(**session: object) -> RunSummary:
    with Kong(backend="threads", store="memory", workers=2, **session):  # type: ignore[arg-type]
        assert dask.compute(diamond()) == (6,)
    summary = last_run()
    assert summary is not None
    return summary


def record_of(summary: RunSummary, finished: bool = True) -> RunRecord:
    graph = RunGraph.from_run(
        summary.run_id, summary.dag, summary.plan, "threads", "memory", time.time()
    )
    record = RunRecord(summary.run_id, graph)
    if finished:
        record.finish_from_summary(summary)
    return record


def wait_until(condition: Callable[[], object], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        time.sleep(0.02)


# -- what a record says ----------------------------------------------------------------


def test_a_tasks_details_show_what_it_printed_escaped() -> None:
    summary = run_once()
    record = record_of(summary)
    task, metrics = next(iter(summary.task_metrics.items()))
    metrics.logs = "loading <chunk 3>\nwarning: slow disk\n"
    record.metrics[task] = metrics
    detail = cols.task_detail(record.graph, task, TaskState.DONE, metrics, None)
    assert "<b>logs</b>" in detail
    assert "loading &lt;chunk 3&gt;" in detail and "slow disk" in detail
    quiet = dataclasses.replace(metrics, logs="")
    assert "<b>logs</b>" not in cols.task_detail(record.graph, task, TaskState.DONE, quiet, None)


def test_record_states_follow_events_heartbeats_and_the_summary() -> None:
    summary = run_once()
    record = record_of(summary, finished=False)
    dag = summary.dag
    a = next(i for i, p in enumerate(dag.parents) if not p)
    b, c = dag.children[a]
    d = dag.children[b][0]
    assert record.states()[a] is TaskState.READY and record.states()[d] is TaskState.WAITING
    version = record.version
    record.apply([Event(EventKind.TASK_DONE, a, "w1", metrics=summary.task_metrics[a])])
    record.set_running({"w1": b})
    states = record.states()
    assert record.version > version
    assert (states[a], states[b], states[c], states[d]) == (
        TaskState.DONE,
        TaskState.RUNNING,
        TaskState.READY,
        TaskState.WAITING,
    )
    record.apply([Event(EventKind.TASK_FAILED, c, "w2", message="boom", traceback="tb")])
    assert record.states()[c] is TaskState.FAILED
    assert "boom" in cols.node_columns(record)["detail"][c]
    record.finish_from_summary(summary)  # every task's metrics, the run's keys long gone
    assert record.finished and record.states()[d] is TaskState.DONE
    assert cols.summary_counts(record)["status"] == "finished"


def test_run_graph_survives_json_for_a_dashboard_in_another_process() -> None:
    summary = run_once(planner="uniform")
    graph = record_of(summary).graph
    assert RunGraph.from_json(graph.to_json()) == graph
    assert len(graph) == 4 and graph.names.count("inc") == 3


def test_columns_lay_out_every_task_and_draw_each_phase_of_each_task() -> None:
    record = record_of(run_once())
    nodes = cols.node_columns(record)
    assert len(nodes["x"]) == 4 and set(nodes["state"]) == {"done"}
    assert set(nodes["color_state"]) == {cols.STATE_COLORS[TaskState.DONE]}
    # the root is left of its children, the fan-in right of them (networkx's layers)
    dag = record.graph
    root = dag.parents.index(())
    assert all(nodes["x"][root] < x for i, x in enumerate(nodes["x"]) if i != root)
    stream, drawn = cols.stream_columns(record)
    assert sorted(drawn) == [0, 1, 2, 3]
    assert stream["key"].count(dag.keys[root]) >= 1 and "execute" in stream["phase"]
    assert all(left <= right for left, right in zip(stream["left"], stream["right"], strict=True))
    progress = cols.progress_columns(record)
    assert dict(zip(progress["name"], progress["done"], strict=True)) == {"inc": 3, "sum": 1}


def test_plan_against_reality_reports_errors_per_measure_once_predicted() -> None:
    with Kong(backend="threads", store="memory", workers=2, planner="uniform") as kong:
        for _ in range(3):  # history first: then uniform predicts
            dask.compute(diamond())
        summary = last_run()
        assert summary is not None
        record = record_of(summary)
        stats = observers_planners(kong, summary)
    assert record.graph.has_predictions
    errors = cols.plan_errors(record)
    assert errors["execute"] is not None and errors["makespan"] is not None
    assert "prediction error" in cols.plan_html(record)
    planners = cols.planner_columns(stats)
    assert planners["planner"] == ["uniform"] and planners["runs"] == [3]


def observers_planners(kong: Kong, summary: RunSummary) -> dict[str, object]:
    from dask_kong.diagnostics.runs import planners_of

    return planners_of(kong.history, summary.shape_hash)


def test_a_plan_without_predictions_says_so() -> None:
    record = record_of(run_once(planner="wukong"))
    assert not record.graph.has_predictions
    assert "made no predictions" in cols.plan_html(record)


def test_run_book_keeps_live_runs_and_the_latest_finished_ones() -> None:
    summary = run_once()
    book = RunBook(keep=2)
    live = book.add(RunRecord("live", record_of(summary).graph))
    for i in range(4):
        done = RunRecord(f"done-{i}", record_of(summary).graph)
        done.finish({"succeeded": True})
        book.add(done)
    assert [r.run_id for r in book.all()] == ["done-3", "done-2", "live"]
    assert book.get("live") is live and book.latest() is book.get("done-3")


# -- following runs ----------------------------------------------------------------------


def test_follower_reads_a_memory_stores_stream_and_stops_when_told() -> None:
    store = MemoryStore()
    summary = run_once()
    record = record_of(summary, finished=False)
    store.open_run(summary.run_id)
    follower = RunFollower(store, record).start()
    task = next(iter(summary.task_metrics))
    event = Event(EventKind.TASK_DONE, task, "w", metrics=summary.task_metrics[task])
    store.commit(summary.run_id, {}, events=[event])
    wait_until(lambda: task in record.metrics)
    follower.stop()
    assert follower.join(WAIT_S)


def test_dashboard_of_a_redis_session_follows_a_run_once_a_page_opens(
    redis_server: RedisServer,
) -> None:
    GATE.clear()
    with Kong(backend="threads", store=redis_server.url, workers=2, dashboard=True) as kong:
        dashboard = kong.run_observers[0]
        assert isinstance(dashboard, Dashboard)
        # A requested output's completion is sent at once (progress of other tasks is
        # batched by the worker): `inc` is reported while `gated` still waits.
        wanted = (dask.delayed(inc)(0), dask.delayed(gated)(1))
        result: list[int] = []
        run = threading.Thread(target=lambda: result.extend(dask.compute(*wanted)))
        run.start()
        try:
            wait_until(lambda: dashboard.book.latest() is not None)
            record = dashboard.book.latest()
            assert record is not None
            time.sleep(0.5)  # the run goes on, nobody looks: nothing is read
            assert not dashboard.followers and not record.metrics
            dashboard.page_opened()  # what a browser's page does when it opens
            wait_until(lambda: len(record.metrics) >= 1)  # from the Redis stream, mid-run
            assert not record.finished
        finally:
            GATE.set()
            run.join(GATE_TIMEOUT_S)
        assert result == [1, 1]
        wait_until(lambda: record.finished)
        assert set(record.metrics) == set(range(len(record.graph)))
        followers = list(dashboard.followers.values())
    assert all(not f.alive for f in followers)  # closing the session stopped them
    assert not [t for t in threading.enumerate() if t.name.startswith("kong-dashboard")]


def fail(x: int) -> int:
    raise ValueError(f"no {x}")


def test_a_failed_run_is_kept_with_its_error(redis_server: RedisServer) -> None:
    with Kong(backend="threads", store=redis_server.url, workers=2, dashboard=True) as kong:
        dashboard = kong.run_observers[0]
        assert isinstance(dashboard, Dashboard)
        dashboard.page_opened()
        with pytest.raises(ValueError, match="no 1"):
            dask.compute(dask.delayed(fail)(1))
        record = dashboard.book.latest()
        assert record is not None and record.outcome is not None
        counts = cols.summary_counts(record)
        assert counts["status"] == "failed" and "ValueError: no 1" in counts["error"]
        dashboard.page_closed()


# -- standalone ---------------------------------------------------------------------------


def test_standalone_dashboard_follows_runs_a_session_announces(
    redis_server: RedisServer, redis_store: RedisStore
) -> None:
    redis_store._client.delete(RUNS_KEY)
    dashboard = serve_store(redis_server.url)
    try:
        with (
            dask.config.set({"kong.dashboard.publish": True}),
            Kong(backend="threads", store=redis_server.url, workers=2),
        ):
            dask.compute(diamond())
        summary = last_run()
        assert summary is not None
        wait_until(lambda: (r := dashboard.book.get(summary.run_id)) is not None and r.finished)
        record = dashboard.book.get(summary.run_id)
        assert record is not None and len(record.graph) == 4
        assert set(record.metrics) == set(range(4))
        with urllib.request.urlopen(dashboard.link, timeout=WAIT_S) as page:
            assert page.status == 200 and b"Bokeh" in page.read()
    finally:
        dashboard.close()
    announced = redis_store._client.xrange(RUNS_KEY)
    assert announced is not None and len(announced) == 2  # started, finished


def test_dashboard_command_prints_its_link_serves_and_stops_on_sigterm(
    redis_server: RedisServer,
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "dask_kong", "-q", "dashboard", "--store", redis_server.url],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        link = process.stdout.readline().strip()
        assert link.startswith("http://127.0.0.1:") and link.endswith("/status")
        with urllib.request.urlopen(link, timeout=WAIT_S) as page:
            assert page.status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT_S) == 0
        if process.stdout is not None:
            process.stdout.close()


# -- the report -----------------------------------------------------------------------


def test_report_has_every_run_of_its_block_and_no_cdn(tmp_path: Path) -> None:
    path = tmp_path / "report.html"
    with (
        Kong(backend="threads", store="memory", workers=2),
        performance_report(filename=path) as report,
    ):
        dask.compute(diamond())
        dask.compute(diamond())
    assert [r.finished for r in report.records] == [True, True]
    page = path.read_text()
    assert "cdn.bokeh.org" not in page and "run 2: wukong, 4 tasks" in page
    assert not observers._process_observers  # the block's end unhooks it


def test_report_of_a_block_without_runs_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.html"
    with performance_report(filename=path):
        pass
    assert "No dask-kong run finished" in path.read_text()


# -- what it costs when off ------------------------------------------------------------------


def test_dashboard_off_imports_no_bokeh_and_watches_nothing() -> None:
    code = (
        "import sys, dask, dask_kong\n"
        "from dask_kong import Kong\n"
        "with Kong(backend='threads', store='memory') as kong:\n"
        "    dask.compute(dask.delayed(sum)([1, 2]))\n"
        "    print(kong.run_observers, kong.dashboard_link)\n"
        "print(sorted(m for m in ('bokeh', 'networkx', 'tornado') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[] None", "[]"]


@pytest.fixture
def port_taken() -> Iterator[int]:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_a_dashboard_that_cannot_bind_fails_the_session_and_leaves_nothing(
    port_taken: int,
) -> None:
    with dask.config.set({"kong.dashboard.port": port_taken}), pytest.raises(OSError):
        Kong(backend="threads", store="memory", dashboard=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("kong-dashboard")]


def test_summary_json_round_trip_for_announced_runs() -> None:
    from dask_kong.diagnostics.runs import metrics_from_json, metrics_to_json

    metrics = {3: TaskMetrics("w", start=1.0, end=2.0, exec_s=0.5, cold_start=True)}
    assert metrics_from_json(json.loads(json.dumps(metrics_to_json(metrics)))) == metrics
