"""What signing costs on the core suite (issue #18): the processes backend with
kong.security.sign on (the default) and off, run by run in alternation, on generated
data and on the user's data (`da.from_array` of NumPy arrays).

    python -m benchmarks.signing_suite [--size core] [--repeat 5] [--json PATH]

Two sessions stay open side by side (processes backend, a private Redis each, two
workers, the wukong planner): one signs every pickle, the other has signing off, its
workers started with it off too. Per workload and data (the recovery benchmark's GEMM,
TSQR-SVD and tree reduction: `benchmarks.recovery.workloads`), each session first does
one untimed run (it starts the workers, uploads the user's data once per session, fills
the planner's history), then `--repeat` timed pairs: one signed and one unsigned run,
the order swapped every pair so that neither always runs first on a machine whose load
drifts. Every result is checked. Each pair prints the load average (1 min) beside its
times; the table gives the medians and the median of the per-pair ratios (the ratio of
two runs made seconds apart is what load drift disturbs least).

Besides the makespan, each run's CPU time: the client process's (`time.process_time`:
the session's gateway runs in it) plus its worker processes' (utime + stime from
/proc/<pid>/stat, before and after). Signing's cost is CPU (a keyed BLAKE3 pass over
every pickle and its buffers, and the copy of the buffers into the blob), and CPU seconds
are far less disturbed by other programs on the machine than wall-clock seconds are.

`python -m benchmarks.signing_cost` measures the per-pickle cost apart.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import dask

from dask_kong import Kong, last_run

from .recovery import SIZES, Workload, workloads

#: The two settings compared, by label.
MODES = {"signed": True, "unsigned": False}


@contextmanager
def signing(sign: bool) -> Iterator[None]:
    """kong.security.sign for what runs inside (the client reads it at every pickle)."""
    with dask.config.set({"kong.security.sign": sign}):
        yield


def open_sessions(stack: ExitStack) -> dict[str, Kong]:
    """One processes session per mode; each one's workers inherit its signing setting."""
    sessions = {}
    for label, sign in MODES.items():
        with signing(sign):
            sessions[label] = stack.enter_context(
                Kong(backend="processes", store="redis", workers=2)
            )
    return sessions


def worker_cpu_s(kong: Kong) -> dict[int, float]:
    """CPU seconds (user + system) used so far by each of the session's worker processes."""
    gateway = kong.backend.gateway  # type: ignore[attr-defined]
    used = {}
    for pid in gateway.worker_pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        used[pid] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    return used


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def one_run(kong: Kong, sign: bool, workload: Workload) -> dict[str, Any]:
    """One timed, checked run; its makespan and CPU time, what it moved, and the load
    around it."""
    _, collections, check = workload
    load_before = os.getloadavg()[0]
    with signing(sign):
        workers_before, client_before = worker_cpu_s(kong), time.process_time()
        started = time.perf_counter()
        results = dask.compute(*collections(), scheduler=kong.get)
        seconds = time.perf_counter() - started
        client_s = time.process_time() - client_before
        workers_after = worker_cpu_s(kong)
    workers_s = sum(t - workers_before.get(pid, 0.0) for pid, t in workers_after.items())
    if not check(results):
        raise AssertionError(f"{workload[0]}: wrong result with sign={sign}")
    summary = last_run()
    assert summary is not None
    return {
        "seconds": seconds,
        "cpu_s": client_s + workers_s,
        "client_cpu_s": client_s,
        "tasks": summary.tasks,
        "invocations": summary.invocations,
        "bytes_written": summary.bytes_written,
        "bytes_read": summary.bytes_read,
        "load_1min": [load_before, os.getloadavg()[0]],
    }


def measure_case(
    sessions: dict[str, Kong], workload: Workload, data: str, repeat: int
) -> dict[str, Any]:
    """The untimed warm-up runs, then `repeat` alternating pairs."""
    for label, kong in sessions.items():
        with signing(MODES[label]):
            dask.compute(*workload[1](), scheduler=kong.get)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in MODES}
    for pair in range(repeat):
        order = list(MODES) if pair % 2 == 0 else list(reversed(MODES))
        for label in order:
            runs[label].append(one_run(sessions[label], MODES[label], workload))
        print(describe_pair(workload[0], data, pair, runs), file=sys.stderr, flush=True)
    return {"workload": workload[0], "data": data, "order_first": "alternating", "runs": runs}


def describe_pair(name: str, data: str, pair: int, runs: dict[str, list[dict[str, Any]]]) -> str:
    signed, unsigned = runs["signed"][pair], runs["unsigned"][pair]
    loads = signed["load_1min"] + unsigned["load_1min"]
    return (
        f"{name:15} {data:9} pair {pair}: signed {signed['seconds']:7.2f} s  unsigned "
        f"{unsigned['seconds']:7.2f} s  ratio {signed['seconds'] / unsigned['seconds']:.2f}"
        f"  CPU {signed['cpu_s']:6.2f} / {unsigned['cpu_s']:6.2f} s"
        f"  load {min(loads):.1f}-{max(loads):.1f}"
    )


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table of docs/benchmarks.md."""
    lines = [
        "| data | workload | tasks | MB written | signed (median) | unsigned (median) "
        "| signed / unsigned (median of pairs) | pairs' ratios | CPU signed (median) "
        "| CPU unsigned (median) | CPU signed / unsigned (median of pairs) | load (1 min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        signed, unsigned = row["runs"]["signed"], row["runs"]["unsigned"]
        ratios = [s["seconds"] / u["seconds"] for s, u in zip(signed, unsigned, strict=True)]
        loads = [x for r in signed + unsigned for x in r["load_1min"]]
        written = statistics.median(r["bytes_written"] for r in signed) / 1e6
        cpu_ratios = [s["cpu_s"] / u["cpu_s"] for s, u in zip(signed, unsigned, strict=True)]
        lines.append(
            f"| {row['data']} | {row['workload']} | {signed[0]['tasks']:,} | {written:.0f} "
            f"| {statistics.median(r['seconds'] for r in signed):.2f} s "
            f"| {statistics.median(r['seconds'] for r in unsigned):.2f} s "
            f"| {statistics.median(ratios):.2f}x "
            f"| {min(ratios):.2f}-{max(ratios):.2f} "
            f"| {statistics.median(r['cpu_s'] for r in signed):.2f} s "
            f"| {statistics.median(r['cpu_s'] for r in unsigned):.2f} s "
            f"| {statistics.median(cpu_ratios):.2f}x "
            f"| {min(loads):.1f}-{max(loads):.1f} |"
        )
    return "\n".join(lines)


def git_commit() -> str:
    """The commit of the checkout in the working directory (`unknown` outside git); run
    a snapshot (`git archive`) from the checkout it was taken of."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="core", choices=sorted(SIZES))
    parser.add_argument("--repeat", type=int, default=5, help="timed pairs per case")
    parser.add_argument("--data", nargs="+", default=["generated", "user"])
    parser.add_argument("--workloads", nargs="+", help="gemm, tsqr-svd, tree-reduction")
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args(argv)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    header = f"commit {git_commit()}, started {started}, load {os.getloadavg()}"
    print(header, file=sys.stderr, flush=True)
    rows = []
    with ExitStack() as stack:
        sessions = open_sessions(stack)
        for data in args.data:
            for workload in workloads(args.size, data):
                if args.workloads and workload[0] not in args.workloads:
                    continue
                rows.append(measure_case(sessions, workload, data, args.repeat))
    ended = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"{header}; ended {ended}, load {os.getloadavg()}")
    print(table(rows))
    if args.json:
        report = {"command": sys.argv, "header": header, "ended": ended, "rows": rows}
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
