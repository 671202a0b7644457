"""What a task prints or logs in a worker process, kept for the client.

In a worker process (processes and lambda backends) nobody reads the task's stdout:
`capture_output` collects what the task writes to stdout and stderr and the log records
it emits (those its loggers' levels let through), at most `kong.logs.max_task_bytes`
characters per task, so that the client can log them (`runtime.client.forward_logs`) and
`RunSummary.task_logs()` can show them per task afterwards. Threads-backend tasks write
to the client's own stdout already and are not captured.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator


class BoundedText(io.TextIOBase):
    """A text sink keeping its first `limit` characters and counting the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = max(self.limit - self.kept, 0)
        if room:
            self.parts.append(text[:room])
            self.kept += min(len(text), room)
        self.dropped += max(len(text) - room, 0)
        return len(text)

    def text(self) -> str:
        kept = "".join(self.parts)
        if self.dropped:
            kept += f"\n[... {self.dropped} more characters dropped: kong.logs.max_task_bytes]"
        return kept


class _SinkHandler(logging.Handler):
    """Writes each record the task emits to its `BoundedText`, one line each."""

    def __init__(self, sink: BoundedText) -> None:
        super().__init__()
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.write(self.format(record) + "\n")


@contextlib.contextmanager
def capture_output(limit: int) -> Iterator[BoundedText]:
    """Collect the task's stdout, stderr and log records while the block runs."""
    sink = BoundedText(limit)
    handler = _SinkHandler(sink)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield sink
    finally:
        root.removeHandler(handler)
