"""What Ctrl-C costs (issue #11): the time from SIGINT until `compute` gives control back,
and the time of the next small computation, per backend.

    python -m benchmarks.interrupts --backends threads processes --repeat 5 --pause 0 1.5

Each repeat starts a run of four 20 s tasks on two workers, presses Ctrl-C (SIGINT to
the main thread) once two of them run, then times a two-task computation after `pause`
seconds (0: at once; a person typing the next command takes longer, and the processes
backend's replacement worker starts meanwhile). Prints every sample and the medians.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from dask_kong import Kong
from dask_kong.waits import poll_until

LONG_TASK_S = 20.0


def mark_and_sleep(i: int, marks: str) -> int:
    Path(marks, str(i)).write_text(str(os.getpid()))
    time.sleep(LONG_TASK_S)
    return i


def inc(i: int) -> int:
    return i + 1


def interrupted(kong: Kong, marks: Path) -> float:
    """Seconds from SIGINT until KeyboardInterrupt reached the caller."""
    dsk: dict[str, Any] = {f"long-{i}": (mark_and_sleep, i, str(marks)) for i in range(4)}
    dsk["total"] = (sum, [f"long-{i}" for i in range(4)])
    main = threading.main_thread().ident
    assert main is not None
    sent: list[float] = []

    def press() -> None:
        if poll_until(lambda: len(list(marks.iterdir())) >= 2, 30.0):
            sent.append(time.monotonic())
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=press, daemon=True).start()
    try:
        kong.get(dsk, "total")
    except KeyboardInterrupt:
        return time.monotonic() - sent[0]
    raise RuntimeError("the run ended without being interrupted")


def measure(backend: str, pause_s: float, repeat: int) -> list[tuple[float, float]]:
    """(return seconds, next compute seconds) per repeat, on one session."""
    options: dict[str, Any] = {"store": "memory"} if backend == "threads" else {}
    samples = []
    with Kong(backend=backend, workers=2, **options) as kong:
        kong.get({"a": (inc, 1)}, "a")  # warm
        for _ in range(repeat):
            with tempfile.TemporaryDirectory() as marks:
                return_s = interrupted(kong, Path(marks))
            time.sleep(pause_s)
            started = time.monotonic()
            kong.get({"a": (inc, 1), "b": (inc, "a")}, "b")
            samples.append((return_s, time.monotonic() - started))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["threads", "processes"])
    parser.add_argument("--pause", nargs="+", type=float, default=[0.0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    for backend in args.backends:
        for pause_s in args.pause:
            samples = measure(backend, pause_s, args.repeat)
            returns = [r for r, _ in samples]
            nexts = [n for _, n in samples]
            print(
                f"{backend:9} pause {pause_s:.1f} s: return after Ctrl-C "
                f"median {statistics.median(returns):.3f} s (max {max(returns):.3f}), "
                f"next compute median {statistics.median(nexts):.3f} s "
                f"(max {max(nexts):.3f}); samples {[f'{r:.3f}/{n:.3f}' for r, n in samples]}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
