"""Read requested outputs while the run is still going.

The client needs every requested output at the end. Read only then, a TSQR-SVD of
200000x100 waits ~0.8 s after its last task for 160 MB of U blocks that finished one by
one over the run's last second. `OutputPrefetch` reads each requested output from the
store in a background thread as soon as its completion event arrives, so those reads
overlap the tasks still running; at the end the client reads only what is left.

Reads are batched: everything reported since the last read goes in one `get_many`. A
failed read is not an error here: the value stays unread and the client's final read
fetches it (and reports a real failure). Only stores outside the process are prefetched:
reading the memory store is a dict look-up.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

from ..constants import output_key
from .context import RunContext

logger = logging.getLogger("dask_kong.client")

# How often the reader thread checks whether the run ended while no output is reported.
_POLL_S = 0.05
# Not a task: put on the queue by `stop` to wake the reader at once.
_WAKE = -1


class OutputPrefetch:
    """A background reader of one run's requested outputs (see the module docstring)."""

    def __init__(self, ctx: RunContext, *, enabled: bool = True) -> None:
        self.ctx = ctx
        self.values: dict[int, Any] = {}
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._reported: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if enabled and not ctx.store.in_process and ctx.output_tasks:
            self._thread = threading.Thread(
                target=self._read_loop, name=f"kong-prefetch-{ctx.run_id[:8]}", daemon=True
            )
            self._thread.start()

    def task_done(self, task: int) -> None:
        """A task reported done: read its output soon if the client wants it."""
        if self._thread is not None and task in self.ctx.output_tasks:
            self._reported.put(task)

    def stop(self, timeout_s: float) -> None:
        """Stop reading: wait up to `timeout_s` for a read under way (0: do not wait, as
        when the run failed and nothing will be collected)."""
        self._stop.set()
        if self._thread is None:
            return
        self._reported.put(_WAKE)  # the reader stops now, not at its next poll
        self._thread.join(timeout_s)
        if timeout_s > 0 and self._thread.is_alive():
            logger.warning("run %s: output prefetch still reading", self.ctx.run_id)

    def taken(self) -> tuple[dict[int, Any], int]:
        """The outputs read so far, and their bytes (call after `stop`)."""
        with self._lock:
            return dict(self.values), self.bytes_read

    def _read_loop(self) -> None:
        while not self._stop.is_set():
            try:
                tasks = [self._reported.get(timeout=_POLL_S)]
            except queue.Empty:
                continue
            while not self._reported.empty():
                tasks.append(self._reported.get_nowait())
            tasks = [t for t in tasks if t != _WAKE]
            if tasks and not self._stop.is_set():
                self._read(tasks)

    def _read(self, tasks: list[int]) -> None:
        ctx = self.ctx
        try:
            values, nbytes = ctx.store.get_many(ctx.run_id, [output_key(t) for t in tasks])
        except Exception as exc:  # the final read fetches these and reports real failures
            logger.debug("run %s: prefetch of %d outputs failed: %s", ctx.run_id, len(tasks), exc)
            return
        with self._lock:
            self.values.update(zip(tasks, values, strict=True))
            self.bytes_read += nbytes
