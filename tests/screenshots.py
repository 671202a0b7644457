"""The screenshots of the user guide: the live dashboard during a run, and a report.

    python -m tests.screenshots [--out docs]

Runs a tree reduction of sleeping tasks on the processes backend (worker processes behind
the local gateway, a private redis-server), once per planner run needed for `uniform` to
predict, then: the live page mid-run (coloured by state), the report's run tab with a
task's details open, and its plan tab. Uses the same headless Chromium as the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from typing import Any

import dask
import numpy as np

from dask_kong import Kong, performance_report

from .browser import Browser, bokeh, click_task, wait_bokeh, wait_for_graph

LEAVES = 16
TASK_S = 1.5


#: Values of 2 MB, so that the views have bytes to show.
BLOCK = 250_000


def nap(i: int) -> np.ndarray:
    time.sleep(TASK_S)
    block: np.ndarray = np.full(BLOCK, float(i))
    return block


def add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    time.sleep(TASK_S / 4)
    total: np.ndarray = a + b
    return total


def tree() -> Any:
    """A pairwise sum over LEAVES sleeping leaves."""
    level = [dask.delayed(nap)(i) for i in range(LEAVES)]
    while len(level) > 1:
        level = [dask.delayed(add)(a, b) for a, b in zip(level[::2], level[1::2], strict=True)]
    return level[0]


def show_tab(b: Browser, title: str) -> None:
    bokeh(
        b,
        "kongModels(m => m.type == 'Tabs' && m.tabs.length > 1 && m.tabs[1].title == 'plan')"
        f".forEach(m => {{ m.active = m.tabs.findIndex(t => t.title == '{title}'); }})",
    )
    time.sleep(1.0)  # let bokeh lay the tab out


def shoot_live_page(b: Browser, kong: Kong, out: str) -> None:
    """The live page during a run of the tree, coloured by state."""
    run = threading.Thread(target=lambda: dask.compute(tree()))
    run.start()
    try:
        b.goto(str(kong.dashboard_link))
        wait_for_graph(b, 2 * LEAVES - 1)
        bokeh(b, "kongModels(m => m.type == 'RadioButtonGroup')[0].active = 1")
        # Best a moment when a heartbeat shows a task running; on a busy machine the
        # page may miss those, then any moment with work done and work left.
        partial = "(s => s.includes('done') && !s.every(x => x == 'done'))"
        wait_bokeh(b, f"{partial}(kongNodes().data.state)", 30)
        with contextlib.suppress(TimeoutError):
            wait_bokeh(b, "kongNodes().data.state.includes('running')", 5)
        time.sleep(0.3)  # let the page draw what it just received
        b.screenshot(os.path.join(out, "dashboard.png"))
    finally:
        run.join(timeout=60)


def shoot_report(b: Browser, report: str, out: str) -> None:
    """The report's run tab with the last task's details open, then its plan tab."""
    b.goto("file://" + report)
    wait_for_graph(b, 2 * LEAVES - 1)
    click_task(b, 2 * LEAVES - 2)
    b.click(2, 2)  # the mouse off the graph: no tooltip over it
    b.screenshot(os.path.join(out, "report.png"))
    show_tab(b, "plan")
    b.screenshot(os.path.join(out, "report-plan.png"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs")
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    report = os.path.abspath(os.path.join(out, "report-example.html"))
    # Beat often (workers get the client's settings with each run): running tasks show.
    settings = dask.config.set({"kong.heartbeat.interval_s": 0.2})
    kong = Kong(backend="processes", workers=4, planner="uniform", dashboard=True)
    b = Browser(width=1280, height=1100)
    try:
        with settings, kong:
            for planner in ("naive", "wukong", "uniform", "uniform"):  # history to compare
                dask.compute(tree(), planner=planner)
            shoot_live_page(b, kong, out)
            with performance_report(filename=report):
                dask.compute(tree())
        shoot_report(b, report, out)
    finally:
        b.close()
        if os.path.exists(report):
            os.remove(report)


if __name__ == "__main__":
    main()
