"""What the dashboard costs a run (issue #16): makespan and the client's CPU time with the
dashboard off, on (served, no page open) and on with a page open in headless Chromium.

    python -m benchmarks.dashboard_cost --workloads trivial gemm --size core --repeat 5

One session per mode and backend, started before timing. Each repeat runs every mode
once, in turn (off, on, page; the order rotates per repeat), so drifts of a shared,
noisy machine spread over the modes instead of biasing one. Per run: the makespan, the
client process's CPU time (all its threads; the threads backend's workers too) and the
CPU time of the session's dashboard threads (the run's follower and the bokeh server,
read from /proc), and with a page open the CPU time of the browser's processes: the
dashboard threads' time is the dashboard's cost itself, which the other two
show only through the noise of a shared machine. Results are checked as in the
benchmark runner. Prints every sample, the medians, and what the hooks in `Kong.get`
cost per run while the dashboard is off.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dask

from dask_kong import Kong, last_run

from .workloads import resolve

#: off: Kong(); on: Kong(dashboard=True), no page open; page: a page open in Chromium.
MODES = ("off", "on", "page")


@contextmanager
def open_page(kong: Kong) -> Iterator[Any]:
    """A headless Chromium showing the session's dashboard (tests/browser.py)."""
    from tests.browser import Browser, wait_bokeh

    browser = Browser()
    try:
        browser.goto(str(kong.dashboard_link))
        wait_bokeh(browser, "window.Bokeh && Bokeh.documents.length > 0", 60)
        yield browser
    finally:
        browser.close()


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group (the browser's
    renderer, GPU and browser processes), from /proc."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def dashboard_cpu_s(kong: Kong, run_id: str | None) -> float:
    """CPU seconds the session's dashboard has used so far: its server thread (pages), and
    the follower of run `run_id` once it has ended. What the dashboard costs, apart from
    the run's own work and whatever else the machine does."""
    dashboards = [o for o in kong.run_observers if hasattr(o, "server_cpu_s")]
    if not dashboards:
        return 0.0
    dashboard = dashboards[0]
    total = dashboard.server_cpu_s()
    follower = dashboard.followers.get(run_id)
    if follower is not None:
        follower.join(10.0)  # it ends within one poll of the run's end
        total += follower.cpu_s
    return total


def timed(
    kong: Kong, collections: tuple[Any, ...], browser_pgid: int | None = None
) -> tuple[dict[str, float], Any]:
    browser = group_cpu_s(browser_pgid) if browser_pgid else 0.0
    wall, cpu, server = time.perf_counter(), time.process_time(), dashboard_cpu_s(kong, None)
    results = dask.compute(*collections, scheduler=kong.get)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    times = {
        "wall_s": wall,
        "cpu_s": cpu,
        "dashboard_cpu_s": dashboard_cpu_s(kong, kong.last_run_id) - server,
        "browser_cpu_s": group_cpu_s(browser_pgid) - browser if browser_pgid else 0.0,
    }
    return times, results


def hook_cost_s(repeat: int = 100_000) -> float:
    """Seconds per run that the observer hooks of Kong.get take when no dashboard is on:
    the whole cost of an "off" dashboard (a look at two empty lists, twice)."""
    from dask_kong.diagnostics import observers

    with Kong(backend="threads", store="memory") as kong:
        summary = last_run()
        started = time.perf_counter()
        for _ in range(repeat):
            observers.run_started(kong, "run", None, None)  # type: ignore[arg-type]
            observers.run_finished(kong, summary)  # type: ignore[arg-type]
        return (time.perf_counter() - started) / repeat


def measure(backend: str, names: list[str], size: str, repeat: int) -> list[dict[str, Any]]:
    cases = [(spec.name, spec.module.build(spec.params)) for spec in resolve(names, size)]
    samples: list[dict[str, Any]] = []
    with ExitStack() as stack:
        sessions = {
            mode: stack.enter_context(Kong(backend=backend, dashboard=mode != "off"))
            for mode in MODES
        }
        for name, case in cases:
            for kong in sessions.values():  # warm every session on this workload
                timed(kong, case.collections)
            tasks = last_run().tasks  # type: ignore[union-attr]
            with open_page(sessions["page"]) as browser:  # one page, this workload only
                for r in range(repeat):
                    for mode in MODES[r % 3 :] + MODES[: r % 3]:
                        pgid = browser.process.pid if mode == "page" else None
                        times, results = timed(sessions[mode], case.collections, pgid)
                        problem = case.check(results)
                        if problem:
                            raise AssertionError(f"{name} ({mode}): {problem}")
                        sample = {"backend": backend, "workload": name, "mode": mode}
                        samples.append({**sample, "tasks": tasks, **times})
                        print(json.dumps(samples[-1]), flush=True)
    return samples


def cell(sample: dict[str, Any]) -> tuple[str, str, str]:
    return sample["backend"], sample["workload"], sample["mode"]


def table(samples: list[dict[str, Any]]) -> str:
    rows = [
        "| backend | workload | tasks | dashboard | makespan median (min) | client CPU median "
        "| dashboard threads' CPU per run | browser's CPU per run |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for backend, workload in sorted({(s["backend"], s["workload"]) for s in samples}):
        base: dict[str, float] = {}
        for mode in MODES:
            chosen = [s for s in samples if cell(s) == (backend, workload, mode)]
            wall = statistics.median(s["wall_s"] for s in chosen)
            fastest = min(s["wall_s"] for s in chosen)
            cpu = statistics.median(s["cpu_s"] for s in chosen)
            dash = statistics.median(s["dashboard_cpu_s"] for s in chosen)
            browser = statistics.median(s["browser_cpu_s"] for s in chosen)
            base.setdefault("wall", wall)
            base.setdefault("cpu", cpu)
            rows.append(
                f"| {backend} | {workload} | {chosen[0]['tasks']:,} | {mode} | "
                f"{wall * 1000:.0f} ms ({wall / base['wall']:.2f}x; min {fastest * 1000:.0f}) | "
                f"{cpu * 1000:.0f} ms ({cpu / base['cpu']:.2f}x) | {dash * 1000:.0f} ms | "
                f"{browser * 1000:.0f} ms |"
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["threads"])
    parser.add_argument("--workloads", nargs="+", default=["trivial", "gemm"])
    parser.add_argument("--size", default="core")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    samples = []
    for backend in args.backends:
        samples += measure(backend, args.workloads, args.size, args.repeat)
    print(table(samples))
    print(f"observer hooks with the dashboard off: {hook_cost_s() * 1e6:.2f} us per run")


if __name__ == "__main__":
    main()
