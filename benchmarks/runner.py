"""The runner: every workload under every scheduler, `--repeat` times, checked and timed.

For each workload: build the collections once (and the reference the check needs), count
the tasks of the graph the schedulers receive, then for each scheduler: start it (timed
apart, as start-up), compute `--repeat` times timing only `dask.compute` with
time.perf_counter, check every result before its time counts, close the scheduler. A
scheduler that cannot start is "unavailable: <reason>"; a wrong result or an exception
makes the cell "failed: <reason>"; either way the run goes on.

Progress goes to stderr, one line per step; the JSON (if asked) is rewritten after every
cell, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import environment, report, workloads
from .schedulers import DEFAULT_SCHEDULERS, Scheduler, check_name, open_scheduler
from .workloads.base import Case

KONG_SUMMARY_FROM = "last_run() of the fastest repeat"
NOTHING_TO_START = ("sync", "threads", "numpy")  # no start-up to report
REASON_CHARS = 500  # a reason is one line in a table note, not a traceback


@dataclass
class Options:
    """The command line, parsed."""

    workloads: list[str] | None
    schedulers: list[str]
    size: str
    repeat: int
    json: str | None
    plot: str | None
    cell_budget_s: float
    blas_threads: int | None
    argv: list[str]


@dataclass
class CellResult:
    """One workload under one scheduler: the JSON `results` entry."""

    workload: str
    scheduler: str
    status: str = "ok"  # "ok" | "failed" | "unavailable"
    reason: str | None = None
    note: str | None = None
    repeats: int = 0
    repeats_asked: int = 0
    times_s: list[float] = field(default_factory=list)
    min_s: float | None = None
    median_s: float | None = None
    tasks: int | None = None
    startup_s: float | None = None
    kong: dict[str, Any] | None = None


class Progress:
    """Prints `[elapsed] message` lines to stderr."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, message: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="dask.array workloads under kong, dask's schedulers, distributed and NumPy.",
    )
    parser.add_argument(
        "--workloads",
        type=_names,
        help="comma-separated (default: every workload at --size); a name such as "
        "tree-sleep runs all its variants, tree-sleep-<ms> one",
    )
    parser.add_argument(
        "--schedulers",
        type=_names,
        default=list(DEFAULT_SCHEDULERS),
        help=f"comma-separated (default: {','.join(DEFAULT_SCHEDULERS)}); "
        "kong-<backend>:<planner> picks a kong planner",
    )
    parser.add_argument("--size", choices=workloads.SIZES, default="quick")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per cell")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG bar chart")
    parser.add_argument(
        "--cell-budget",
        type=float,
        default=300.0,
        metavar="SECONDS",
        dest="cell_budget_s",
        help="stop repeating a cell once its repeats took this long (at least one runs)",
    )
    parser.add_argument(
        "--blas-threads",
        type=int,
        metavar="N",
        help="BLAS threads per call, here and in processes started later "
        "(default: leave as found; the JSON reports it either way)",
    )
    parser.add_argument("--list", action="store_true", help="list workloads and exit")
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        help="run nothing: print the table (and --plot) of a JSON written earlier",
    )
    namespace = parser.parse_args(argv)
    if namespace.list:
        print(list_workloads())
        raise SystemExit(0)
    if namespace.from_json:
        report_from_json(namespace.from_json, namespace.plot)
        raise SystemExit(0)
    if namespace.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        for name in namespace.schedulers:
            check_name(name)
        workloads.resolve(namespace.workloads, namespace.size)
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        workloads=namespace.workloads,
        schedulers=namespace.schedulers,
        size=namespace.size,
        repeat=namespace.repeat,
        json=namespace.json,
        plot=namespace.plot,
        cell_budget_s=namespace.cell_budget_s,
        blas_threads=namespace.blas_threads,
        argv=argv,
    )


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def report_from_json(path: str, plot_path: str | None) -> None:
    suite = json.loads(Path(path).read_text())
    print(report.markdown(suite))
    if plot_path:
        report.plot(suite, plot_path)


def list_workloads() -> str:
    lines = []
    for module in workloads.MODULES:
        lines.append(" ".join((module.__doc__ or module.NAME).split("\n\n")[0].split()))
        for size, params in module.SIZES.items():
            lines.append(f"    {size}: {params}")
    return "\n".join(lines)


def count_tasks(collections: tuple[Any, ...]) -> int:
    """Tasks in the graph a scheduler receives from `dask.compute(*collections)`:
    collections merged and optimized exactly as dask.compute does it."""
    from dask._expr import FinalizeCompute
    from dask.base import collections_to_expr

    expr = FinalizeCompute(collections_to_expr(collections, True)).optimize()
    return len(expr.__dask_graph__())


def run_suite(options: Options, progress: Progress) -> dict[str, Any]:
    """Run every cell; return the suite dict (the JSON layout)."""
    described = environment.describe()
    suite: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "benchmarks", *options.argv]),
        "size": options.size,
        "repeat": options.repeat,
        "machine": described["machine"],
        "versions": described["versions"],
        "blas": described["blas"],
        "kong_summary_from": KONG_SUMMARY_FROM,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "complete": False,
        "wall_s": None,
        "workloads": {},
        "results": [],
        "ratios": {},
    }
    specs = workloads.resolve(options.workloads, options.size)
    progress(
        f"size {options.size}: {len(specs)} workloads x {len(options.schedulers)} schedulers "
        f"x {options.repeat} repeats; BLAS {suite['blas']['threads']} threads"
    )
    for spec in specs:
        progress(f"{spec.name}: building {spec.params}")
        started = time.perf_counter()
        case = spec.module.build(spec.params)
        tasks = count_tasks(case.collections)
        suite["workloads"][spec.name] = {
            "description": case.description,
            "params": spec.params,
            "tasks": tasks,
            "build_s": round(time.perf_counter() - started, 3),
        }
        progress(f"{spec.name}: {tasks:,} tasks, built in {time.perf_counter() - started:.1f} s")
        for scheduler in options.schedulers:
            with isolated_environ():
                cell = run_cell(spec.name, case, tasks, scheduler, options, progress)
            suite["results"].append(asdict(cell))
            suite["ratios"] = report.compute_ratios(suite["results"])
            if options.json:
                report.write_json(suite, options.json)
        del case
        gc.collect()
    suite["complete"] = True
    suite["wall_s"] = round(progress.elapsed(), 1)
    return suite


@contextlib.contextmanager
def isolated_environ() -> Iterator[None]:
    """Put os.environ back as it was once the cell ends.

    A scheduler may change this process's environment for good: dask.distributed's
    LocalCluster leaves `MALLOC_TRIM_THRESHOLD_=65536` and `OMP_NUM_THREADS=1` (its
    nanny's pre-spawn settings) in os.environ after it closes. Every process a later cell
    starts would inherit them: kong's workers, with that malloc setting, ran TSQR-SVD 15%
    slower than in a fresh interpreter. Each cell must see the environment the run began
    with, whatever ran before it.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:  # key by key: the environment is never empty, even for an instant
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        for key, value in saved.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def run_cell(
    workload: str,
    case: Case,
    tasks: int,
    scheduler_name: str,
    options: Options,
    progress: Progress,
) -> CellResult:
    """Start one scheduler, time `options.repeat` checked computes, close it."""
    cell = CellResult(workload, scheduler_name, tasks=tasks, repeats_asked=options.repeat)
    label = f"{workload} / {scheduler_name}"
    if scheduler_name == "numpy" and case.numpy_fn is None:
        return _give_up(cell, "unavailable", "no NumPy equivalent", label, progress)
    started = time.perf_counter()
    try:
        scheduler = open_scheduler(scheduler_name)
    except Exception as exc:
        return _give_up(cell, "unavailable", _reason(exc), label, progress)
    if scheduler_name not in NOTHING_TO_START:
        cell.startup_s = round(time.perf_counter() - started, 4)
        progress(f"{label}: started in {cell.startup_s:.2f} s (not timed)")
    try:
        failure = time_repeats(scheduler, case, cell, options, lambda m: progress(f"{label}: {m}"))
    finally:
        _close(scheduler, label, progress)
    if failure:
        return _give_up(cell, "failed", failure, label, progress)
    cell.repeats = len(cell.times_s)
    cell.min_s = min(cell.times_s)
    cell.median_s = round(statistics.median(cell.times_s), 6)
    return cell


def time_repeats(
    scheduler: Scheduler,
    case: Case,
    cell: CellResult,
    options: Options,
    progress: Callable[[str], None],
) -> str | None:
    """Time checked computes into `cell.times_s` (and kong's details of the fastest into
    `cell.kong`); stop early at the cell budget. Returns why the cell failed, or None."""
    fastest = float("inf")
    for repeat in range(1, options.repeat + 1):
        gc.collect()
        try:
            scheduler.settle()
            started = time.perf_counter()
            results = scheduler.compute(case)
            seconds = time.perf_counter() - started
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            return _reason(exc)
        wrong = _check(case, results)
        del results
        if wrong:
            return f"wrong result: {wrong}"
        cell.times_s.append(round(seconds, 6))
        if seconds < fastest:
            fastest, cell.kong = seconds, scheduler.run_details()
        progress(f"repeat {repeat}/{options.repeat} {seconds:.3f} s, checked")
        if sum(cell.times_s) >= options.cell_budget_s and repeat < options.repeat:
            cell.note = (
                f"{repeat} of {options.repeat} repeats: stopped at the "
                f"{options.cell_budget_s:g} s cell budget"
            )
            progress(cell.note)
            break
    return None


def _check(case: Case, results: Any) -> str | None:
    """The workload's verdict on `results`; a check that crashes is a wrong result too."""
    try:
        return case.check(results)
    except Exception as exc:
        return f"check raised {_reason(exc)}"


def _give_up(
    cell: CellResult, status: str, reason: str, label: str, progress: Progress
) -> CellResult:
    cell.status, cell.reason = status, reason
    cell.times_s, cell.repeats, cell.kong = [], 0, None
    progress(f"{label}: {status.upper()}: {reason}")
    return cell


def _close(scheduler: Scheduler, label: str, progress: Progress) -> None:
    try:
        scheduler.close()
    except Exception as exc:
        progress(f"{label}: close() raised {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 3] + "..."


def stop_leftover_processes(progress: Progress) -> None:
    """Every scheduler closes its own processes; anything still running under us now was
    started by this run and leaked: say so, and stop it (only our own descendants)."""
    try:
        import psutil
    except ImportError:
        return
    leftovers = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = " ".join(child.cmdline())
            # multiprocessing's resource tracker lives until we exit, by design.
            if "resource_tracker" not in command:
                leftovers.append(child)
                progress(f"leftover process {child.pid} ({command[:120]}): terminating")
    for child in leftovers:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=5)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def main(argv: list[str] | None = None) -> int:
    options = parse_args(sys.argv[1:] if argv is None else argv)
    progress = Progress()
    if options.blas_threads is not None:
        how = environment.set_blas_threads(options.blas_threads)
        progress(f"BLAS threads set to {options.blas_threads} via {how}")
    try:
        suite = run_suite(options, progress)
    finally:
        stop_leftover_processes(progress)
    print(report.markdown(suite))
    if options.json:
        report.write_json(suite, options.json)
        progress(f"wrote {options.json}")
    if options.plot:
        report.plot(suite, options.plot)
        progress(f"wrote {options.plot}")
    progress(f"done in {suite['wall_s']:.1f} s")
    failed = [r for r in suite["results"] if r["status"] == "failed"]
    return 1 if failed else 0
