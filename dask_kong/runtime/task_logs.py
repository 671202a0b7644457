"""What a task prints or logs in a worker process, kept for the client.

In a worker process (processes and lambda backends) nobody reads the task's stdout:
`BranchCapture` collects what each task writes to stdout and stderr, the log records it
emits (those its loggers' levels let through) and the warnings it raises, at most
`kong.logs.max_task_bytes` characters of text per task, so that the client can log them
(`runtime.client.forward_logs`), raise the warnings again, and `RunSummary.task_logs()`
can show them per task afterwards. Threads-backend tasks write to the client's own stdout
already and are not captured.

It is installed once per branch, not per task: redirecting the streams, adding a log
handler and entering `warnings.catch_warnings` cost more than a small task itself
(about 50 us per task). Between tasks the streams write through to the process's own
and log records are not kept, so the worker's own messages go where they always went.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from types import TracebackType
from typing import Any, TextIO


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


def _filters_mutated() -> None:
    """Tell the warnings machinery its filters changed (what `catch_warnings.__exit__`
    does), so that no cached decision of the old filters survives."""
    mutated = getattr(warnings, "_filters_mutated", None)
    if mutated is not None:
        mutated()


class _TaskStream(io.TextIOBase):
    """stdout or stderr while a branch runs: the running task's sink, else `through`."""

    def __init__(self, capture: BranchCapture, through: TextIO) -> None:
        self.capture = capture
        self.through = through

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        sink = self.capture.sink
        return sink.write(text) if sink is not None else self.through.write(text)

    def flush(self) -> None:
        if self.capture.sink is None:
            self.through.flush()


class _TaskLogHandler(logging.Handler):
    """Writes each record emitted while a task runs to its sink, one line each."""

    def __init__(self, capture: BranchCapture) -> None:
        super().__init__()
        self.capture = capture
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        sink = self.capture.sink
        if sink is not None:
            sink.write(self.format(record) + "\n")


class BranchCapture:
    """What the tasks of one branch print, log and warn, task by task (module docstring).

    =========  ======================================================================
    field      what it holds
    =========  ======================================================================
    limit      characters of text kept per task (`kong.logs.max_task_bytes`)
    sink       the running task's text, None between tasks (streams write through)
    _filters   the warning filters as the running task found them: restored after it,
               so that a task's `simplefilter("error")` does not reach the next one
    caught     warnings recorded since the running task started (every one: "always";
               the client's own filters decide what shows)
    =========  ======================================================================

    Use: `with BranchCapture(limit) as capture:` around the branch, then for each task
    `capture.start_task()`, run it, and read `capture.finish_task()`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sink: BoundedText | None = None
        self.caught: list[warnings.WarningMessage] = []
        self._stack = contextlib.ExitStack()
        self._handler = _TaskLogHandler(self)
        self._showwarning = warnings.showwarning
        self._filters: list[Any] = []

    def __enter__(self) -> BranchCapture:
        self._showwarning = warnings.showwarning
        self.caught = self._stack.enter_context(warnings.catch_warnings(record=True))
        warnings.simplefilter("always")
        self._stack.enter_context(contextlib.redirect_stdout(_TaskStream(self, sys.stdout)))
        self._stack.enter_context(contextlib.redirect_stderr(_TaskStream(self, sys.stderr)))
        root = logging.getLogger()
        root.addHandler(self._handler)
        self._stack.callback(root.removeHandler, self._handler)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.sink = None
        self._show_stray_warnings()
        self._stack.close()

    def start_task(self) -> None:
        """A task starts: what follows is its own."""
        self._show_stray_warnings()
        self._filters = list(warnings.filters)
        self.sink = BoundedText(self.limit)

    def finish_task(self) -> tuple[str, list[warnings.WarningMessage]]:
        """The text and warnings of the task that just ran; streams write through again."""
        text = self.sink.text() if self.sink is not None else ""
        self.sink = None
        if warnings.filters != self._filters:  # the task changed them: not for the next
            warnings.filters = self._filters
            _filters_mutated()
        caught, self.caught[:] = list(self.caught), []
        return text, caught

    def _show_stray_warnings(self) -> None:
        """Warnings raised between tasks (the worker's own) are shown as they would be."""
        for w in self.caught:
            self._showwarning(w.message, w.category, w.filename, w.lineno, w.file, w.line)
        self.caught[:] = []
