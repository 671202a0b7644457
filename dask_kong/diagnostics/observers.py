"""Who watches runs: the one hook between a session and its diagnostics.

`Kong.get` tells this module when a run starts and when it has ended; observers get told
in turn: the live dashboard of `Kong(dashboard=True)` (`diagnostics.server`), a publisher
that announces runs in the store for a dashboard in another process
(`diagnostics.publish`), and `performance_report` while its block is open. When nobody
watches, a hook is a look at two empty lists: a dashboard that is off costs a run nothing,
and nothing here imports bokeh.

Observers never fail a run: an observer's error is logged and the run goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .. import config
from ..dag import DAG
from ..metrics.records import RunSummary
from ..planning import Plan

if TYPE_CHECKING:
    from ..session import Kong

logger = logging.getLogger("dask_kong.diagnostics")


@dataclass(frozen=True)
class RunStart:
    """A run about to be submitted, and the session running it (its store, history)."""

    run_id: str
    dag: DAG
    plan: Plan
    session: Kong
    #: Wall clock at submission: what task times are shown from.
    started: float


class RunObserver(Protocol):
    """Something told about runs. Both calls come from the client's thread, between
    planning and submission and after the run: they must return quickly."""

    def run_started(self, start: RunStart) -> None: ...

    def run_finished(self, session: Kong, summary: RunSummary) -> None: ...

    def close(self) -> None: ...


# Process-wide observers (performance_report's blocks), beside each session's own.
_process_observers: list[RunObserver] = []
_lock = threading.Lock()


def add_process_observer(observer: RunObserver) -> None:
    """Tell `observer` about every run of every session in this process."""
    with _lock:
        _process_observers.append(observer)


def remove_process_observer(observer: RunObserver) -> None:
    with _lock:
        if observer in _process_observers:
            _process_observers.remove(observer)


def open_for(session: Kong, dashboard: bool | None) -> list[RunObserver]:
    """The observers of a new session: its live dashboard when `dashboard` (None: the
    setting `kong.dashboard.enabled`) says so; a publisher when `kong.dashboard.publish`
    is on and the session's store is a Redis server other processes can reach."""
    observers: list[RunObserver] = []
    if config.get("dashboard.enabled", dashboard):
        from .server import Dashboard

        observers.append(Dashboard.for_session(session))
    url = getattr(session.store, "url", None)
    if config.get("dashboard.publish") and url and not session.store.in_process:
        from .publish import RunPublisher

        observers.append(RunPublisher(url))
    return observers


def _watchers(session: Kong) -> list[RunObserver]:
    own: list[RunObserver] = getattr(session, "run_observers", [])
    if not own and not _process_observers:
        return own
    with _lock:
        return [*own, *_process_observers]


def run_started(session: Kong, run_id: str, dag: DAG, plan: Plan) -> None:
    """Called by `Kong.get` just before it submits a run."""
    watchers = _watchers(session)
    if not watchers:
        return
    start = RunStart(run_id=run_id, dag=dag, plan=plan, session=session, started=time.time())
    for observer in watchers:
        _tell(observer, "run_started", start)


def run_finished(session: Kong, summary: RunSummary) -> None:
    """Called by `Kong.get` with the summary of every run, failed or not."""
    for observer in _watchers(session):
        _tell(observer, "run_finished", session, summary)


def close_for(session: Kong) -> None:
    """Close a session's own observers (its dashboard stops serving)."""
    for observer in getattr(session, "run_observers", []):
        _tell(observer, "close")


def dashboard_link(session: Kong) -> str | None:
    """The address of the session's live dashboard, None when it has none."""
    for observer in getattr(session, "run_observers", []):
        link = getattr(observer, "link", None)
        if link:
            return str(link)
    return None


def _tell(observer: RunObserver, method: str, *args: Any) -> None:
    try:
        getattr(observer, method)(*args)
    except Exception:
        logger.exception("dashboard observer %r failed in %s", observer, method)
