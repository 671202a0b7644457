"""Heartbeats: how a client tells a slow task from a dead worker.

Workers note which task they run (a dict assignment, nothing on the hot path touches the
store); one background thread per process pushes the notes to the store every
`kong.heartbeat.interval_s`. The thread starts with the first beat and exits once no
worker has been active for a few intervals, so an idle process keeps no extra thread.
"""

from __future__ import annotations

import logging
import threading

from .. import config
from ..store.base import ENDED, Store

logger = logging.getLogger("dask_kong.runtime")

# Idle intervals after which the heartbeat thread exits (it restarts on the next beat).
_IDLE_INTERVALS_BEFORE_EXIT = 3


class Heartbeater:
    """Per-process heartbeat pusher for all workers that share `store`."""

    def __init__(self, store: Store, interval_s: float | None = None) -> None:
        self.store = store
        self.interval_s = float(config.get("heartbeat.interval_s", interval_s))
        self._active: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def beat(self, run_id: str, worker: str, task: int) -> None:
        """Note that `worker` now runs `task`; starts the pusher thread if needed."""
        self._active[(run_id, worker)] = task
        if self._thread is None:
            self._start()

    def done(self, run_id: str, worker: str) -> None:
        """`worker` left the run: stop beating for it."""
        self._active.pop((run_id, worker), None)

    def beat_now(self, run_id: str, worker: str, task: int) -> None:
        """`beat`, and push it at once (one store round-trip) rather than within the
        interval: for a worker whose loss must name the task it ran (a resumed branch),
        or whose lease must exist from its start (`runtime.leases`)."""
        self.beat(run_id, worker, task)
        self._push({(run_id, worker): task})

    def end(self, run_id: str, worker: str) -> None:
        """`done`, and record at once that `worker` ended (its lease is given back: a
        heartbeat that stops is then not taken for a lost worker)."""
        self.done(run_id, worker)
        self._push({(run_id, worker): ENDED})

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=self._loop, name="kong-heartbeat", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        idle = 0
        while not self._stop.wait(self.interval_s):
            beats = dict(self._active)
            idle = 0 if beats else idle + 1
            if idle >= _IDLE_INTERVALS_BEFORE_EXIT:
                break
            self._push(beats)
        with self._lock:
            self._thread = None
        if self._active and not self._stop.is_set():
            self._start()  # a beat raced with our exit: keep covering it

    def _push(self, beats: dict[tuple[str, str], int]) -> None:
        by_run: dict[str, dict[str, int]] = {}
        for (run_id, worker), task in beats.items():
            by_run.setdefault(run_id, {})[worker] = task
        for run_id, workers in by_run.items():
            try:
                self.store.heartbeat(run_id, workers)
            except Exception as exc:  # the next beat retries; the client tolerates gaps
                logger.warning("heartbeat for run %s failed: %s", run_id, exc)

    def close(self) -> None:
        """Stop the pusher thread and wait for it."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=self.interval_s * 2 + 1)
