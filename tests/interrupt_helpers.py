"""Helpers for the interrupt and close tests: a Ctrl-C delivered to the calling thread
while it computes, tasks that leave a mark before they block, and a backend that
delivers every invocation twice so that a run ends with a straggler still running.

Tasks live here, at module level, so that worker processes import them by name.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from dask_kong import Kong
from dask_kong.invocation.model import Invocation
from dask_kong.runtime.context import RunContext
from dask_kong.waits import poll_until

# Long enough that no test could wait for it: an interrupt must not.
LONG_TASK_S = 20.0
# How long a test waits for a condition that should hold at once (workers reaped, keys
# deleted): generous, so a loaded machine does not fail a test that is right.
SETTLE_S = 5.0


def mark_and_sleep(i: int, marks: str) -> int:
    """Leave `<marks>/<i>` holding this process's PID, then block for LONG_TASK_S."""
    Path(marks, str(i)).write_text(str(os.getpid()))
    time.sleep(LONG_TASK_S)
    return i


def shout(i: int) -> int:
    """A task that prints, as user code does: its line crosses the gateway's pipe."""
    print(f"task {i} says hello")
    return i + 1


def first_copy_returns(marks: str, straggle_s: float) -> int:
    """Run as a duplicated invocation: the first copy here returns once the other copy
    has started (so that one is surely in flight when the run ends), and the other copy
    straggles for `straggle_s` (an at-least-once duplicate the run outlives)."""
    try:
        os.close(os.open(Path(marks, "first"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        Path(marks, "second").touch()
        time.sleep(straggle_s)
    else:
        poll_until(Path(marks, "second").exists, SETTLE_S)
    return 1


def inc(i: int) -> int:
    return i + 1


def long_run(marks: Path, n: int = 4) -> dict[str, Any]:
    """`n` long tasks (more than the 2 slots: some run, some queue) and their sum."""
    dsk: dict[str, Any] = {f"long-{i}": (mark_and_sleep, i, str(marks)) for i in range(n)}
    dsk["total"] = (sum, [f"long-{i}" for i in range(n)])
    return dsk


def marked_pids(marks: Path) -> list[int]:
    """PIDs the long tasks wrote (the processes that ran them)."""
    return [int(p.read_text()) for p in marks.iterdir() if p.name.isdigit() and p.read_text()]


def compute_and_interrupt(
    kong: Kong, dsk: dict[str, Any], key: str, ready: Callable[[], bool]
) -> float:
    """Compute `key` and press Ctrl-C (SIGINT to the main thread) once `ready()` holds;
    the seconds from the signal until KeyboardInterrupt reached this caller."""
    sent_at: list[float] = []
    main = threading.main_thread().ident
    assert threading.current_thread() is threading.main_thread(), "SIGINT goes to main"
    assert main is not None

    def press_ctrl_c() -> None:
        if poll_until(ready, SETTLE_S):
            sent_at.append(time.monotonic())
            signal.pthread_kill(main, signal.SIGINT)

    # Python's own Ctrl-C handler, as in a terminal: a suite started in the background
    # (nohup, a CI runner's shell) inherits SIGINT ignored, and would never see it.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    presser = threading.Thread(target=press_ctrl_c, name="test-ctrl-c", daemon=True)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            kong.get(dsk, key)
        returned_at = time.monotonic()
    finally:
        presser.join(SETTLE_S)
        signal.signal(signal.SIGINT, previous)
    assert sent_at, "the tasks never started, so Ctrl-C was never pressed"
    return returned_at - sent_at[0]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`fn()` and the seconds it took."""
    started = time.monotonic()
    value = fn()
    return value, time.monotonic() - started


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class DuplicatingBackend:
    """Delivers every invocation twice, as an at-least-once platform may: the copy that
    loses the race is still running when the run ends."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.inner.invoke(ctx, [*invocations, *invocations])
