"""Embedded backend: workers are threads of this process, behaving like warm containers.

An invocation is a queue entry. A thread takes it if one is idle ("warm start"); else a
new thread starts ("cold start") up to the worker limit, beyond which invocations queue;
waiting invocations start most urgent first (`DAG.urgency`), then oldest, as the
local gateway's do.
An idle thread exits after `kong.threads.keep_warm_s`, like a container after its
keep-warm window, so an idle session holds no threads.

An interrupted run (`cancel_run`) cannot have its threads killed: Python cannot stop a
thread in the middle of a task. Its queued branches are dropped, and the threads running
its branches are written off: they stop counting against the worker limit and exit as
soon as their branch returns (at its next task boundary, the run being cancelled). So
the next run starts its threads at once, and for as long as a cancelled run's task is
still running, the pool holds up to that many threads beyond its limit.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence

from ... import config
from ...invocation.model import Invocation
from ...planning import ResourceSpec
from ...runtime.context import RunContext
from ...runtime.worker import run_branch

logger = logging.getLogger("dask_kong.backends.threads")

_Work = tuple[RunContext, Invocation]
# (-priority, arrival number, work): a heap, most urgent first, FIFO among equals
_Item = tuple[int, int, _Work]


class ThreadBackend:
    """Runs each invocation's branch on a pool thread."""

    name = "threads"

    def __init__(self, workers: int | None = None, keep_warm_s: float | None = None) -> None:
        self.max_workers = int(config.get("workers", workers) or os.cpu_count() or 1)
        self.keep_warm_s = float(config.get("threads.keep_warm_s", keep_warm_s))
        # Work waits in a heap; a thread takes one token per piece of work from a
        # SimpleQueue (True: take the most urgent work; None: stop). The C SimpleQueue
        # wakes threads far faster than queue.PriorityQueue's Condition: with 1,024
        # threads PriorityQueue made WUKONG's 0 ms sleeping tree 1.5x slower.
        self._work: list[_Item] = []
        self._work_lock = threading.Lock()
        self._tokens: queue.SimpleQueue[bool | None] = queue.SimpleQueue()
        self._arrivals = itertools.count()
        self._lock = threading.Lock()
        # Threads counted against max_workers.
        self._threads: set[threading.Thread] = set()
        # The run each thread is running a branch of (guarded by _lock).
        self._running: dict[threading.Thread, RunContext] = {}
        # Threads finishing a cancelled run's task: not counted, they exit after it.
        self._written_off: set[threading.Thread] = set()
        self._idle = 0
        self._closed = False
        self.cold_starts = 0
        self.warm_starts = 0

    def prepare_run(self, ctx: RunContext) -> None:
        """Nothing to do: threads share the client's RunContext."""

    def resources(self) -> tuple[ResourceSpec, ...]:
        """One size: threads share this process's memory and cores."""
        return (ResourceSpec("default", memory_mb=0, cpus=1),)

    def concurrency(self) -> int | None:
        """At most this many worker threads run at once."""
        return self.max_workers

    def prewarm(self, resource: str) -> None:
        """Threads start in microseconds: nothing to warm."""

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        if self._closed:
            raise RuntimeError("this Kong session is closed")
        urgency = ctx.dag.urgency
        for invocation in invocations:
            ctx.branch_started()
            item = (-urgency[invocation.start], next(self._arrivals), (ctx, invocation))
            with self._work_lock:
                heapq.heappush(self._work, item)
            self._tokens.put(True)
        self._grow(len(invocations))

    def _grow(self, wanted: int) -> None:
        """Start threads for invocations no idle thread will take (cold starts)."""
        with self._lock:
            missing = min(wanted - self._idle, self.max_workers - len(self._threads))
            self.warm_starts += min(wanted, self._idle)
            for _ in range(max(missing, 0)):
                thread = threading.Thread(target=self._serve, name="kong-worker", daemon=True)
                self._threads.add(thread)
                self.cold_starts += 1
                thread.start()

    def _serve(self) -> None:
        """Worker thread: run branches until idle for the keep-warm window, closed, or
        written off (see `cancel_run`)."""
        me = threading.current_thread()
        while True:
            with self._lock:
                self._running.pop(me, None)
                if me in self._written_off:
                    self._written_off.discard(me)
                    return
                self._idle += 1
            try:
                token = self._tokens.get(timeout=self.keep_warm_s)
            except queue.Empty:
                token = None
            with self._lock:
                self._idle -= 1
                if token is None:
                    if self._tokens.empty() or self._closed:
                        self._threads.discard(me)
                        return
                    continue
                work = self._take_work(me)
            if work is None:  # its run was cancelled: cancel_run dropped it
                continue
            ctx, invocation = work
            queued_s = max(0.0, time.time() - invocation.sent_at)
            try:
                run_branch(ctx, dataclasses.replace(invocation, queued_s=queued_s))
            except BaseException:  # run_branch reports task errors; this is a bug guard
                logger.exception("worker thread crashed running %s", invocation)
            finally:
                ctx.branch_ended()

    def _take_work(self, me: threading.Thread) -> _Work | None:
        """The most urgent piece of work, noted as `me`'s (caller holds `_lock`, so that
        `cancel_run` sees it either queued or running). None when a cancelled run's work
        was dropped after its token was put."""
        with self._work_lock:
            if not self._work:
                return None
            work = heapq.heappop(self._work)[2]
        self._running[me] = work[0]
        return work

    def cancel_run(self, ctx: RunContext) -> None:
        """Drop the run's queued branches and write off the threads running its others
        (they no longer count against `max_workers` and exit once their branch returns),
        so the next run gets threads at once. See the module docstring."""
        with self._lock:
            with self._work_lock:
                kept = [item for item in self._work if item[2][0] is not ctx]
                dropped = len(self._work) - len(kept)
                heapq.heapify(kept)
                self._work = kept
            for thread, run in self._running.items():
                if run is ctx and thread in self._threads:
                    self._threads.discard(thread)
                    self._written_off.add(thread)
        for _ in range(dropped):  # their tokens stay queued and wake a thread for nothing
            ctx.branch_ended()

    def close(self) -> None:
        """Stop accepting invocations and join every thread (not those written off: they
        finish a cancelled run's task, which nothing can stop, and then exit)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._tokens.put(None)
        for thread in threads:
            thread.join(timeout=10)
