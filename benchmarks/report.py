"""Reporting a suite: ratios, the markdown table, the JSON file and the PNG chart.

Everything here reads the suite dict the runner builds (its layout is the JSON layout,
described in benchmarks/README.md) and changes nothing in it except `ratios`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .schedulers import DASK_SCHEDULERS

# Ratios are makespan(scheduler) / makespan(reference): below 1 means faster.
THREADS = "threads"


def is_kong(scheduler: str) -> bool:
    return scheduler.startswith("kong-")


def cells(suite: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """Results keyed by (workload, scheduler)."""
    return {(r["workload"], r["scheduler"]): r for r in suite["results"]}


def column_order(suite: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Workloads and schedulers in the order they ran."""
    workloads = list(dict.fromkeys(r["workload"] for r in suite["results"]))
    schedulers = list(dict.fromkeys(r["scheduler"] for r in suite["results"]))
    return workloads, schedulers


def compute_ratios(results: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per workload: the best dask scheduler, and for each scheduler that ran its median
    makespan over the medians of threads, of the best dask scheduler and of numpy."""
    by_workload: dict[str, dict[str, float]] = {}
    for r in results:
        if r["status"] == "ok":
            by_workload.setdefault(r["workload"], {})[r["scheduler"]] = r["median_s"]
    ratios: dict[str, dict[str, Any]] = {}
    for workload, medians in by_workload.items():
        dask_ok = {s: t for s, t in medians.items() if s in DASK_SCHEDULERS}
        best = min(dask_ok, key=dask_ok.__getitem__) if dask_ok else None
        references = {"vs_threads": THREADS, "vs_best_dask": best, "vs_numpy": "numpy"}
        ratios[workload] = {"best_dask": best, "schedulers": {}}
        for scheduler, median in medians.items():
            ratios[workload]["schedulers"][scheduler] = {
                key: _ratio(median, medians.get(ref)) if ref else None
                for key, ref in references.items()
            }
    return ratios


def _ratio(value: float, reference: float | None) -> float | None:
    if reference is None or reference <= 0:
        return None
    return round(value / reference, 3)


def format_seconds(seconds: float | None) -> str:
    """Three significant digits, in ms below one second."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def format_bytes(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} GB"


def markdown(suite: dict[str, Any]) -> str:
    """The whole report: a header, the makespan table, kong's run details and notes."""
    parts = [header(suite), makespan_table(suite)]
    kong = kong_table(suite)
    if kong:
        parts.append(kong)
    notes = cell_notes(suite)
    if notes:
        parts.append("\n".join(notes))
    return "\n\n".join(parts) + "\n"


def header(suite: dict[str, Any]) -> str:
    machine, versions, blas = suite["machine"], suite["versions"], suite["blas"]
    return (
        f"Size `{suite['size']}`, median makespan of {suite['repeat']} repeats "
        "(kong's ratios: to `threads`, and to the best dask scheduler when that is not "
        "`threads`; lower is better).  \n"
        f"Machine: {machine['cores']} cores, {machine['memory_gb']} GiB, {machine['cpu']}; "
        f"Python {machine['python']}; dask {versions['dask']}, distributed "
        f"{versions['distributed']}, numpy {versions['numpy']}, dask-kong "
        f"{versions['dask-kong']} ({versions.get('dask-kong-git')}).  \n"
        f"BLAS: {blas.get('library')}, {blas.get('threads')} threads per call "
        f"(from {blas.get('source')}).  \n"
        f"Command: `{suite['command']}`"
    )


def makespan_table(suite: dict[str, Any]) -> str:
    """One row per workload, one column per scheduler; kong cells carry their ratios."""
    workloads, schedulers = column_order(suite)
    table = cells(suite)
    rows = [
        ["workload", "tasks", *schedulers],
        ["---", "---:", *(["---:"] * len(schedulers))],
    ]
    for workload in workloads:
        tasks = next(r["tasks"] for r in suite["results"] if r["workload"] == workload)
        row = [workload, f"{tasks:,}" if tasks is not None else "-"]
        for scheduler in schedulers:
            row.append(_cell_text(table.get((workload, scheduler)), suite["ratios"]))
        rows.append(row)
    startups = [_median_startup(suite, s) for s in schedulers]
    if any(s is not None for s in startups):
        rows.append(["start-up (not timed)", "", *(format_seconds(s) for s in startups)])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def _cell_text(result: dict[str, Any] | None, ratios: dict[str, Any]) -> str:
    if result is None:
        return ""
    if result["status"] == "unavailable":
        return "n/a"
    if result["status"] == "failed":
        return "FAILED"
    text = format_seconds(result["median_s"])
    if result["repeats"] < result["repeats_asked"]:
        text += f" ({result['repeats']} of {result['repeats_asked']})"
    if is_kong(result["scheduler"]):
        text += _kong_ratios(ratios[result["workload"]], result["scheduler"])
    return text


def _kong_ratios(workload_ratios: dict[str, Any], scheduler: str) -> str:
    """ " (0.95x thr, 1.02x sync)": to threads, and to the best dask scheduler when that
    is not threads."""
    ratio, best = workload_ratios["schedulers"][scheduler], workload_ratios["best_dask"]
    pieces = []
    if ratio["vs_threads"] is not None:
        pieces.append(f"{ratio['vs_threads']:.2f}x thr")
    if ratio["vs_best_dask"] is not None and best != THREADS:
        pieces.append(f"{ratio['vs_best_dask']:.2f}x {best}")
    return f" ({', '.join(pieces)})" if pieces else ""


def _median_startup(suite: dict[str, Any], scheduler: str) -> float | None:
    startups: list[float] = sorted(
        r["startup_s"]
        for r in suite["results"]
        if r["scheduler"] == scheduler and r["startup_s"] is not None and r["status"] == "ok"
    )
    if not startups:
        return None
    return startups[len(startups) // 2]


def kong_table(suite: dict[str, Any]) -> str:
    """kong's own account of each cell's fastest repeat (`last_run()`)."""
    rows = [
        "| workload | scheduler | planner | tasks | workers | invocations | written | read "
        "| cached | uploaded | reused | translate | kong makespan | 1st repeat |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in suite["results"]:
        kong = r.get("kong")
        if r["status"] != "ok" or not kong:
            continue
        rows.append(
            f"| {r['workload']} | {r['scheduler']} | {kong.get('planner')} | "
            f"{kong.get('tasks')} | {kong.get('workers')} | {kong.get('invocations')} | "
            f"{format_bytes(kong.get('bytes_written'))} | {format_bytes(kong.get('bytes_read'))}"
            f" | {format_bytes(kong.get('bytes_cached'))}"
            f" | {format_bytes(kong.get('client_bytes_uploaded'))}"
            f" | {format_bytes(kong.get('data_bytes_reused'))}"
            f" | {format_seconds(kong.get('translate_s'))}"
            f" | {format_seconds(kong.get('makespan_s'))}"
            f" | {format_seconds((r.get('times_s') or [None])[0])} |"
        )
    if len(rows) == 2:
        return ""
    intro = (
        "kong runs (`last_run()` of each cell's fastest repeat; kong's makespan excludes "
        "translating and planning the graph, the table above includes them; written and "
        "read are the workers' store traffic (read includes the client reading the "
        "results), cached the user's data workers took from what their process kept from "
        "an earlier task or repeat instead of reading it, uploaded what the client wrote "
        "(the user's data, a large DAG), reused the user's data already in the session's "
        "store from an earlier repeat; 1st repeat the whole first compute, when the "
        "session's store and the workers held none of the data yet):"
    )
    return intro + "\n\n" + "\n".join(rows)


def cell_notes(suite: dict[str, Any]) -> list[str]:
    """Why cells are FAILED or n/a; a scheduler unavailable everywhere gets one line."""
    notes: list[str] = []
    workloads, _ = column_order(suite)
    unavailable: dict[tuple[str, str], list[str]] = {}
    for r in suite["results"]:
        if r["status"] == "failed":
            notes.append(f"- {r['workload']} / {r['scheduler']}: FAILED: {r['reason']}")
        elif r["status"] == "unavailable":
            unavailable.setdefault((r["scheduler"], r["reason"]), []).append(r["workload"])
        elif r.get("note"):
            notes.append(f"- {r['workload']} / {r['scheduler']}: {r['note']}")
    for (scheduler, reason), names in unavailable.items():
        where = "all workloads" if len(names) == len(workloads) else ", ".join(names)
        notes.append(f"- {scheduler}: n/a ({where}): {reason}")
    return ["Notes:", "", *notes] if notes else []


def write_json(suite: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Write the suite atomically (the runner rewrites it after every cell)."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(suite, indent=2, default=str) + "\n")
    partial.replace(target)


def plot(suite: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """A PNG: one panel per workload, a bar per scheduler (median makespan, whisker down
    to the fastest repeat), each labelled with its time and its ratio to threads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads, schedulers = column_order(suite)
    table = cells(suite)
    colors = _colors(schedulers)
    columns = min(3, len(workloads))
    rows = -(-len(workloads) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.6 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        _plot_workload(ax, workload, schedulers, table, suite["ratios"], colors)
    for ax in list(axes.flat)[len(workloads) :]:
        ax.set_visible(False)
    machine, blas = suite["machine"], suite["blas"]
    figure.suptitle(
        f"dask-kong benchmarks, size {suite['size']}: median makespan (ratio to threads), "
        f"{machine['cores']} cores, BLAS {blas.get('threads')} threads"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_workload(
    ax: Any,
    workload: str,
    schedulers: list[str],
    table: dict[tuple[str, str], dict[str, Any]],
    ratios: dict[str, Any],
    colors: dict[str, Any],
) -> None:
    positions = range(len(schedulers))
    tallest = max(
        (r["median_s"] for (w, _), r in table.items() if w == workload and r["status"] == "ok"),
        default=1.0,
    )
    for x, scheduler in zip(positions, schedulers, strict=True):
        result = table.get((workload, scheduler))
        if result is None or result["status"] != "ok":
            label = "FAILED" if result and result["status"] == "failed" else "n/a"
            ax.text(x, 0, label, ha="center", va="bottom", fontsize=7, color="red")
            continue
        median, fastest = result["median_s"], result["min_s"]
        ax.bar(x, median, color=colors[scheduler])
        ax.vlines(x, fastest, median, color="black", linewidth=0.8)
        ratio = ratios[workload]["schedulers"][scheduler]["vs_threads"]
        label = format_seconds(median) + (f"\n{ratio:.2f}x" if ratio is not None else "")
        ax.text(x, median, label, ha="center", va="bottom", fontsize=7)
    ax.set_title(workload, fontsize=10)
    ax.set_xticks(list(positions), schedulers, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.set_xlim(-0.6, len(schedulers) - 0.4)
    ax.set_ylim(0, tallest * 1.3)
    ax.tick_params(axis="y", labelsize=8)


def _colors(schedulers: list[str]) -> dict[str, Any]:
    """kong in warm colours, dask in blues, numpy in green: stable across panels."""
    import matplotlib

    kong = [s for s in schedulers if is_kong(s)]
    dask_like = [s for s in schedulers if not is_kong(s) and s != "numpy"]
    colors: dict[str, Any] = {"numpy": "tab:green"}
    colors.update(_spread(matplotlib.colormaps["autumn"], kong, 0.0, 0.7))
    colors.update(_spread(matplotlib.colormaps["Blues"], dask_like, 0.35, 0.95))
    return colors


def _spread(colormap: Any, names: list[str], low: float, high: float) -> dict[str, Any]:
    step = (high - low) / max(1, len(names) - 1)
    return {name: colormap(low + i * step) for i, name in enumerate(names)}
