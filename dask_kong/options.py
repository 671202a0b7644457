"""The one place that says which scheduling options kong cannot honour, and warns.

Nothing a user passes is silently ignored: a keyword of `dask.compute`, of
`Client.submit`, or an annotation (`dask.annotate`) that kong does not act on warns once
per name and process, naming it and saying why. Honoured ones never reach here.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable

#: Scheduling keywords of distributed's submit/map/compute, and why kong ignores each.
SCHEDULING_KEYWORDS: dict[str, str] = {
    "workers": "there are no named workers: every task runs on whichever worker gets it",
    "allow_other_workers": "there are no named workers to restrict tasks to",
    "resources": "pass resources as dask.annotate(resources=...) around the collection",
    "priority": "pass priority as dask.annotate(priority=...) around the collection",
    "fifo_timeout": "there is no central scheduler queue to apply it to",
    "actor": "actors need a long-lived worker; kong's workers are serverless",
    "actors": "actors need a long-lived worker; kong's workers are serverless",
    "broadcast": "workers hold no data between runs",
    "direct": "the client always talks to the store directly",
    "timeout": "kong bounds each run with kong.run.stall_timeout_s and kong.run.deadline_s",
}

#: Annotations kong does not honour, and why.
ANNOTATIONS: dict[str, str] = {
    "workers": "there are no named workers: every task runs on whichever worker gets it",
    "allow_other_workers": "there are no named workers to restrict tasks to",
}

_warned: set[str] = set()
_lock = threading.Lock()


class UnsupportedOptionWarning(UserWarning):
    """An option, keyword or annotation dask-kong does not act on."""


def warn_unsupported(names: Iterable[str], where: str) -> None:
    """Warn once per process for each of `names` given to `where` (e.g. "submit",
    "dask.compute", "dask.annotate"), with the reason kong ignores it."""
    for name in sorted(set(names)):
        tag = f"{where}:{name}"
        with _lock:
            if tag in _warned:
                continue
            _warned.add(tag)
        reason = ANNOTATIONS.get(name) if where == "dask.annotate" else None
        reason = reason or SCHEDULING_KEYWORDS.get(name) or "dask-kong does not know it"
        warnings.warn(
            f"{where}: {name!r} is ignored by dask-kong ({reason})",
            UnsupportedOptionWarning,
            stacklevel=3,
        )


def warn_once(tag: str, message: str) -> None:
    """Warn `message` (an `UnsupportedOptionWarning`) the first time `tag` is seen in
    this process: for what kong cannot give beyond options, such as the task result
    dask's `posttask` callbacks take."""
    with _lock:
        if tag in _warned:
            return
        _warned.add(tag)
    warnings.warn(message, UnsupportedOptionWarning, stacklevel=3)


def forget_warnings() -> None:
    """Warn again for names already warned about (tests)."""
    with _lock:
        _warned.clear()
