"""Following one run as it happens: its event stream and heartbeats, into its record.

The client reads the run's event stream to know when outputs are ready; a dashboard reads
the same stream, from its own cursor, in a thread of its own (`RunFollower`). Both the
Redis Stream and the memory store's list keep events for every reader until the run is
deleted, so the follower takes nothing from the client. Heartbeats name the task each
live worker runs now; the follower looks at them every `kong.dashboard.poll_s`.

A follower ends when its record is finished (the session, or the run's "finished"
announcement, hands over the summary), when asked to stop, or when the run has not been
open for `kong.dashboard.follow_idle_s` (its client died, or it ended unannounced). Every
wait is one bounded read of the stream; store errors are logged and retried with backoff,
a few times, then the follower gives up.
"""

from __future__ import annotations

import logging
import threading
import time

from .. import config
from ..store.base import Store
from .runs import RunRecord

logger = logging.getLogger("dask_kong.diagnostics")

# Consecutive store errors after which a follower gives up (its record keeps what it has).
_MAX_ERRORS = 5
# First pause after a store error; doubled per error.
_FIRST_ERROR_PAUSE_S = 0.1


class RunFollower:
    """A daemon thread that feeds `record` from `store` until the run is over."""

    def __init__(self, store: Store, record: RunRecord) -> None:
        self.store = store
        self.record = record
        self.poll_s = float(config.get("dashboard.poll_s"))
        self.idle_s = float(config.get("dashboard.follow_idle_s"))
        self.heartbeat_ttl_s = float(config.get("heartbeat.ttl_s"))
        #: CPU seconds the thread used, once it has ended (what following a run costs).
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"kong-dashboard-follow-{record.run_id[:8]}", daemon=True
        )

    def start(self) -> RunFollower:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the thread to end; it does within one `poll_s` (no waiting here)."""
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        """Wait at most `timeout_s` for the thread; whether it ended."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._follow()
        finally:
            self.cpu_s = time.thread_time()

    def _follow(self) -> None:
        cursor = "0"
        errors = 0
        last_open = time.monotonic()
        next_beats = 0.0
        while not self._stop.is_set() and not self.record.finished:
            try:
                cursor, events = self.store.events(self.record.run_id, cursor, self.poll_s)
                if events:
                    self.record.apply(events)
                    last_open = time.monotonic()
                if time.monotonic() >= next_beats:
                    next_beats = time.monotonic() + self.poll_s
                    last_open = self._look_at_workers(last_open)
                errors = 0
            except Exception as exc:
                errors += 1
                if errors >= _MAX_ERRORS:
                    logger.warning("dashboard stops following run %s: %s", self.record.run_id, exc)
                    return
                self._stop.wait(_FIRST_ERROR_PAUSE_S * 2**errors)
                continue
            if time.monotonic() - last_open > self.idle_s:
                logger.info("run %s is not open any more: not followed", self.record.run_id)
                return

    def _look_at_workers(self, last_open: float) -> float:
        """Update which tasks run now; returns when the run was last seen open."""
        run_id = self.record.run_id
        self.record.set_running(self.store.live_workers(run_id, self.heartbeat_ttl_s))
        # is_cancelled is also true for a run that is not open (not yet, or not any more)
        return last_open if self.store.is_cancelled(run_id) else time.monotonic()
