"""The live dashboard: a bokeh server, in a thread of its own, showing a `RunBook`.

    with Kong(dashboard=True) as kong:
        print(kong.dashboard_link)  # http://127.0.0.1:<free port>/status
        x.compute()

`Dashboard` serves one bokeh application (`/status`). Each open page picks a run (the
newest by default, and it moves on to each new run until the user picks one) and shows
it with `diagnostics.views.RunViews`, brought up to date every `kong.dashboard.refresh_ms`
from the run's record. Where records come from:

* in a session (`Dashboard.for_session`): the session tells the dashboard when a run
  starts; while a page is open, a `RunFollower` thread follows the run's event stream
  and heartbeats (with no page open, nothing is read: a dashboard nobody looks at costs
  the run nothing); the session hands over the finished summary, which holds every
  task's metrics (the run's keys are gone by then);
* standalone (`python -m dask_kong dashboard --store URL`, `diagnostics.publish`): runs
  announced in the store by sessions with `kong.dashboard.publish` on.

The server runs on a tornado IOLoop in a daemon thread and binds loopback by default
(`kong.dashboard.host`) on a free port (`kong.dashboard.port: 0`). Pages load bokeh's
JavaScript from the server itself, so the dashboard works without internet. Nothing of
this is imported unless a dashboard is asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models.widgets import Div, Select
from bokeh.server.server import BaseServer
from bokeh.server.tornado import BokehTornado
from bokeh.server.util import bind_sockets
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

from .. import config
from ..metrics.records import RunSummary
from .follow import RunFollower
from .observers import RunStart
from .runs import RunBook, RunGraph, RunRecord, planners_of
from .views import RunViews

if TYPE_CHECKING:
    from ..session import Kong

logger = logging.getLogger("dask_kong.diagnostics")

#: The page's path on the server.
PATH = "/status"
# Longest wait for the server thread to bind its port, or to stop.
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# How long a page may be closed before its session's state is dropped (bokeh's default
# of 15 s keeps views of a finished run around for nobody).
_UNUSED_SESSION_MS = 5000


class Dashboard:
    """A bokeh server showing the runs of `book`. `planners(record)` says how planners
    compared on the record's shape (None: the chart stays empty)."""

    def __init__(
        self,
        book: RunBook,
        host: str | None = None,
        port: int | None = None,
        planners: Callable[[RunRecord], dict[str, Any]] | None = None,
    ) -> None:
        self.book = book
        self.planners = planners
        self.host = str(config.get("dashboard.host", host))
        self.refresh_ms = int(config.get("dashboard.refresh_ms"))
        self.max_busy_fraction = float(config.get("dashboard.max_busy_fraction"))
        if not 0 < self.max_busy_fraction <= 1:
            raise ValueError("kong.dashboard.max_busy_fraction must be in (0, 1]")
        self._requested_port = int(config.get("dashboard.port", port))
        self.port = 0
        self.followers: dict[str, RunFollower] = {}
        #: Where each live run's events are (for followers started when a page opens).
        self.stores: dict[str, Any] = {}
        #: Pages open now: runs are followed only while there is one.
        self.pages = 0
        self._lock = threading.Lock()
        #: What feeds a standalone dashboard runs (`publish.AnnouncementReader`), and
        #: what it releases when closed (its store and history).
        self.feeder: Any = None
        self.owned: list[Any] = []
        self._server: BaseServer | None = None
        self._loop: IOLoop | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="kong-dashboard", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise TimeoutError(f"the dashboard did not start within {_START_TIMEOUT_S} s")
        if self._error is not None:
            raise self._error

    @classmethod
    def for_session(cls, session: Kong) -> Dashboard:
        """The dashboard of `Kong(dashboard=True)`: planners compared from its history."""
        history = session.history
        return cls(
            RunBook(keep=int(config.get("dashboard.keep_runs"))),
            planners=lambda record: planners_of(history, record.graph.shape_hash),
        )

    def server_cpu_s(self) -> float:
        """CPU seconds the server's thread has used so far (pages: building, updating,
        sending), read from /proc (Linux; 0.0 elsewhere): for measuring what it costs."""
        tid = self._thread.native_id
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    @property
    def link(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}{PATH}"

    def __repr__(self) -> str:
        return f"<Dashboard {self.link}>"

    # -- the server thread ----------------------------------------------------------

    def _serve(self) -> None:
        """The server thread: its own event loop, the server on it, until `close`."""
        asyncio.set_event_loop(asyncio.new_event_loop())
        loop = self._loop = IOLoop.current()
        try:
            self._server = self._start_server(loop)
        except BaseException as exc:  # raised again by __init__, in the caller's thread
            self._error = exc
            loop.close(all_fds=True)
            return
        finally:
            self._ready.set()
        try:
            loop.start()
        finally:
            loop.close(all_fds=True)

    def _start_server(self, loop: IOLoop) -> BaseServer:
        """Bind first, then allow websockets from the bound port (port 0: a free one)."""
        sockets, self.port = bind_sockets(self.host, self._requested_port)
        origins = [f"{self.host}:{self.port}", f"localhost:{self.port}"]
        app = BokehTornado(
            {PATH: Application(FunctionHandler(self.make_page))},
            extra_websocket_origins=origins,
            unused_session_lifetime_milliseconds=_UNUSED_SESSION_MS,
            check_unused_sessions_milliseconds=_UNUSED_SESSION_MS,
            redirect_root=True,
        )
        http = HTTPServer(app)
        http.add_sockets(sockets)
        server = BaseServer(loop, app, http)
        server.start()
        return server

    def close(self) -> None:
        """Stop following runs and serving pages; waits (bounded) for the threads, then
        releases what the dashboard owns (a standalone one's reader, store, history)."""
        if self.feeder is not None:
            self.feeder.close()  # first: it starts followers
        with self._lock:
            followers = list(self.followers.values())
        for follower in followers:
            follower.stop()
        for follower in followers:
            follower.join(_STOP_TIMEOUT_S)
        for owned in self.owned:
            owned.close()
        loop, server = self._loop, self._server
        if loop is not None and server is not None and self._thread.is_alive():

            def stop() -> None:
                server.stop(wait=False)
                loop.stop()

            loop.add_callback(stop)
        self._thread.join(_STOP_TIMEOUT_S)
        if self._thread.is_alive():
            logger.warning("the dashboard's server thread did not stop in %s s", _STOP_TIMEOUT_S)

    # -- RunObserver (a session's runs) ----------------------------------------------

    def run_started(self, start: RunStart) -> None:
        """Keep a record of the run, and follow it while a page is open. The graph is
        built on first view, by the server's thread, so the run starts without waiting."""
        session = start.session
        record = RunRecord(
            start.run_id,
            lambda: RunGraph.from_run(
                start.run_id,
                start.dag,
                start.plan,
                session.backend_name,
                session.store_spec,
                start.started,
            ),
        )
        self.watch(session.store, self.book.add(record))

    def run_finished(self, session: Kong, summary: RunSummary) -> None:
        record = self.book.get(summary.run_id)
        if record is not None:
            record.finish_from_summary(summary)
        with self._lock:
            self.stores.pop(summary.run_id, None)
            follower = self.followers.get(summary.run_id)
        if follower is not None:
            follower.stop()  # it ends within one poll; `close` waits for it

    def watch(self, store: Any, record: RunRecord) -> None:
        """Show `record`, a run going on in `store`: followed at once if a page is open,
        else when one opens. Nobody looking, nobody reads the run's events: the finished
        summary brings every task's metrics anyway."""
        with self._lock:
            if record.finished:
                return
            self.stores[record.run_id] = store
            if self.pages:
                self._follow(store, record)

    def _follow(self, store: Any, record: RunRecord) -> None:
        """Start a follower for `record` unless one runs; forget ended ones (lock held)."""
        for run_id, follower in list(self.followers.items()):
            if not follower.alive and run_id != record.run_id:
                del self.followers[run_id]
        current = self.followers.get(record.run_id)
        if current is None or not current.alive:
            self.followers[record.run_id] = RunFollower(store, record).start()

    def page_opened(self) -> None:
        """A page opened: follow every live run (from the start of its event stream)."""
        with self._lock:
            self.pages += 1
            for run_id, store in list(self.stores.items()):
                record = self.book.get(run_id)
                if record is None or record.finished:
                    del self.stores[run_id]
                else:
                    self._follow(store, record)

    def page_closed(self) -> None:
        """A page closed: with none left, the followers stop (a page that opens later
        starts them again, from the start of each run's stream)."""
        with self._lock:
            self.pages = max(0, self.pages - 1)
            if self.pages:
                return
            followers = list(self.followers.values())
        for follower in followers:
            follower.stop()

    # -- pages ----------------------------------------------------------------------

    def make_page(self, doc: Document) -> None:
        """Build one browser page (bokeh calls this per session, in the server thread)."""
        RunPage(self, doc)


class RunPage:
    """One open page: a run picker and the views of the picked run."""

    def __init__(self, dashboard: Dashboard, doc: Document) -> None:
        self.dashboard = dashboard
        self.book = dashboard.book
        self.doc = doc
        self.picked_by_user = False
        self.next_update = 0.0
        self.book_version = -1
        self.views: RunViews | None = None
        self.picker = Select(title="run", options=[], width=560, name="kong-run-picker")
        self.picker.on_change("value", self.on_pick)
        self.empty = Div(text="<p>No run yet: this page shows each run as it starts.</p>")
        self.body = column(self.empty, sizing_mode="stretch_width")
        doc.title = "dask-kong dashboard"
        doc.add_root(column(row(self.picker), self.body, sizing_mode="stretch_width"))
        dashboard.page_opened()
        doc.on_session_destroyed(lambda context: dashboard.page_closed())
        self.refresh()
        doc.add_periodic_callback(self.refresh, dashboard.refresh_ms)

    def refresh(self) -> None:
        """List new runs (following the newest unless the user picked one), then bring
        the shown run's views up to date. Changes go to the page in one message (the
        document is held while they are made), not one message per property.

        An update that took t seconds of the server thread's CPU, sending included, is
        followed by none for t / kong.dashboard.max_busy_fraction: however large the run
        or busy the machine, updating pages never keeps the client's process busier than
        that. (Building a newly shown run's views, once per run, is not counted.)"""
        if time.monotonic() < self.next_update and self.book.version == self.book_version:
            return
        cpu = time.thread_time()
        self.doc.hold("combine")
        try:
            updated = self._refresh()
        finally:
            self.doc.unhold()  # sends what changed
        if updated:
            spent = time.thread_time() - cpu
            self.next_update = time.monotonic() + spent / self.dashboard.max_busy_fraction

    def _refresh(self) -> bool:
        """Whether the shown run's views were updated (not when another run was shown)."""
        if self.book.version != self.book_version:
            self.book_version = self.book.version
            runs = self.book.all()
            newest = runs[0].run_id if runs else ""
            if newest and (not self.picked_by_user or not self.picker.value):
                self.show(newest)
                return False
        if self.views is None or time.monotonic() < self.next_update:
            return False
        if self.views.update():
            self.load_planners(self.views)
            self.relabel()
        return True

    def on_pick(self, attr: str, old: str, new: str) -> None:
        if self.views is None or new != self.views.record.run_id:
            self.picked_by_user = True
            self.show(new)

    def relabel(self) -> None:
        """Keep the picker's labels current (a run goes from running to done)."""
        options: list[Any] = [(r.run_id, run_label(r)) for r in self.book.all()]
        if options != self.picker.options:
            self.picker.options = options

    def show(self, run_id: str) -> None:
        record = self.book.get(run_id)
        if record is None:
            return
        self.relabel()
        if self.views is None:
            self.views = RunViews(record, live=True)
            self.body.children = [self.views.layout]
        else:
            self.views.show(record)
        self.picker.value = run_id  # after the views show it: on_pick sees no change
        self.load_planners(self.views)

    def load_planners(self, views: RunViews) -> None:
        """Once a run finished (the history holds it then), show how planners compared."""
        if views.planners_shown or not views.record.finished:
            return
        if self.dashboard.planners is None:
            views.planners_shown = True
            return
        views.set_planners(self.dashboard.planners(views.record))


def run_label(record: RunRecord) -> str:
    """A run in the picker: id, planner, size and state."""
    outcome = record.outcome
    state = "running" if outcome is None else "done" if outcome.succeeded else "failed"
    try:
        graph = record.graph
        what = f"{graph.planner}, {len(graph)} tasks"
    except Exception:  # a graph that cannot be built still gets a line
        what = "graph unavailable"
    return f"{record.run_id[:12]}: {what}, {state}"
