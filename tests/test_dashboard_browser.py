"""The dashboard and the report in a real browser: headless Chromium from the Debian
packages, driven over the DevTools protocol (tests/browser.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dask
import pytest

from dask_kong import Kong, performance_report

from .browser import Browser, bokeh, click_task, find_chromium, wait_bokeh, wait_for_graph

pytestmark = pytest.mark.skipif(
    find_chromium() is None, reason="no chromium on PATH (apt-get install -y chromium)"
)

# A short task for runs that must take some time (the replay needs distinct times).
TASK_S = 0.1
WIDTH = 8
# The live test's tasks wait for this: the page is checked while the run is still going.
GATE = threading.Event()
# Longest a gated task waits (the test opens the gate within seconds).
GATE_TIMEOUT_S = 20.0


def slow(i: int) -> int:
    time.sleep(TASK_S)
    return i


def gated(i: int) -> int:
    GATE.wait(GATE_TIMEOUT_S)
    return i


#: Titles of figures the report must have: the run's views and plan against reality.
VIEWS = (
    "task graph",
    "task stream per worker",
    "progress per function",
    "bytes moved through the store",
    "invocations: start-up, cold and warm",
    "times: predicted against observed",
    "planners on this shape (metrics history): median makespan",
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    try:
        yield b
    finally:
        b.close()


def header_status(b: Browser) -> str:
    return str(
        bokeh(
            b,
            "(() => { const c = kongDeepAll('.kong-count[data-name=status]');"
            " return c.length ? c[0].textContent : ''; })()",
        )
    )


def test_live_page_shows_a_run_as_it_happens_and_a_clicked_tasks_details(
    browser: Browser,
) -> None:
    GATE.clear()
    # Heartbeats name running tasks: beat often, so the page shows them within the test.
    with dask.config.set({"kong.heartbeat.interval_s": 0.1}):
        kong = Kong(backend="threads", store="memory", workers=2, dashboard=True)
    with kong:
        assert kong.dashboard_link and kong.dashboard_link.startswith("http://127.0.0.1:")
        total = dask.delayed(sum)([dask.delayed(gated)(i) for i in range(WIDTH)])
        result: list[int] = []
        run = threading.Thread(target=lambda: result.extend(dask.compute(total)))
        run.start()
        try:
            browser.goto(kong.dashboard_link)
            wait_for_graph(browser, WIDTH + 1)
            assert "running" in header_status(browser)  # drawn while the run goes on
            wait_bokeh(browser, "kongNodes().data.state.filter(s => s == 'running').length == 2")
            GATE.set()
            wait_bokeh(browser, "kongNodes().data.state.every(s => s == 'done')")
            detail = click_task(browser, 0)
            assert "gated-" in detail and "worker" in detail and "execute" in detail
        finally:
            GATE.set()
            run.join(timeout=GATE_TIMEOUT_S)
        assert result == [sum(range(WIDTH))]
        browser.wait_for(
            "kongDeepAll('.kong-count[data-name=status]')[0].textContent.includes('finished')"
        )


def test_report_file_opens_offline_and_shows_its_views(browser: Browser, tmp_path: Path) -> None:
    report = tmp_path / "run.html"
    with Kong(backend="threads", store="memory", workers=2), performance_report(filename=report):
        dask.compute(dask.delayed(sum)([dask.delayed(slow)(i) for i in range(4)]))
    text = report.read_text()
    assert "cdn.bokeh.org" not in text  # bokeh's JavaScript is inlined: works offline
    browser.goto(report.as_uri())
    wait_for_graph(browser, 5)
    titles = bokeh(browser, "kongModels(m => m.type == 'Figure').map(m => m.title.text).join('|')")
    for view in VIEWS:
        assert view in titles
    detail = click_task(browser, 4)
    assert "sum-" in detail and "start / end" in detail


def test_replay_recolours_the_graph_at_a_chosen_time(browser: Browser, tmp_path: Path) -> None:
    report = tmp_path / "replay.html"
    with Kong(backend="threads", store="memory", workers=1), performance_report(filename=report):
        dask.compute(dask.delayed(sum)([dask.delayed(slow)(i) for i in range(3)]))
    browser.goto(report.as_uri())
    wait_for_graph(browser, 4)
    bokeh(browser, "kongModels(m => m.type == 'RadioButtonGroup')[0].active = 1")  # by state
    # One worker ran the three sleeps one after the other: halfway, some are done, the
    # sum waits, and none of what was still to come shows as done.
    bokeh(browser, "(s => { s.value = s.end / 2; })(kongModels(m => m.type == 'Slider')[0])")
    colors = bokeh(browser, "kongNodes().data.color_replay")
    done, waiting = "#74c476", "#d9d9d9"
    assert colors.count(done) in (1, 2) and colors[-1] in (waiting, "#9ecae1")
    bokeh(browser, "(s => { s.value = s.end; })(kongModels(m => m.type == 'Slider')[0])")
    assert bokeh(browser, "kongNodes().data.color_replay") == [done] * 4
    graph = "kongGraphView().model.renderers.find(r => r.node_renderer)"
    shown = f"{graph}.node_renderer.glyph.fill_color.field"
    assert bokeh(browser, shown) == "color_state"  # the replay at its end: the mode again
