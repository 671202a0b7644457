"""Runs announced in the store, for a dashboard in another process.

A run's own keys are deleted when it ends and hold task numbers, not the graph; a
dashboard elsewhere needs both the graph and the end of the story. So a session with
`kong.dashboard.publish` on (and a Redis store) appends two entries per run to one capped
Redis Stream, `RUNS_KEY`, which is not run-scoped and outlives the runs:

* ``kind=started``: the run's `RunGraph` as JSON (structure and plan), before submission;
* ``kind=finished``: the summary's fields and every task's metrics, as JSON.

`serve_store` (`python -m dask_kong dashboard --store URL`) reads the stream from its
start, so the runs still kept there can be replayed, and follows each started run's own
event stream through a `RedisStore`, exactly as the in-process dashboard does. The
stream keeps the latest `kong.dashboard.published_runs` runs (two entries each) and
expires `kong.dashboard.published_ttl_s` after the last one.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any

import redis

from .. import config
from ..metrics.records import RunSummary
from .observers import RunStart
from .runs import RunBook, RunGraph, RunRecord, metrics_from_json, metrics_to_json, summary_fields

if TYPE_CHECKING:
    from ..session import Kong
    from ..store.redis import RedisStore
    from .server import Dashboard

logger = logging.getLogger("dask_kong.diagnostics")

#: The stream of run announcements (kong:dashboard:...: beside runs, never inside one).
RUNS_KEY = "kong:dashboard:runs"


def redis_client(url: str) -> redis.Redis:
    """A client with the store's timeouts, so no call here waits without a bound."""
    return redis.Redis.from_url(
        url,
        socket_timeout=float(config.get("store.socket_timeout_s")),
        socket_connect_timeout=float(config.get("store.connect_timeout_s")),
    )


class RunPublisher:
    """A session's observer that announces its runs in the store."""

    def __init__(self, url: str) -> None:
        self.client = redis_client(url)
        self.max_entries = 2 * int(config.get("dashboard.published_runs"))
        self.ttl_s = int(config.get("dashboard.published_ttl_s"))

    def _announce(self, fields: dict[str, str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(RUNS_KEY, fields, maxlen=self.max_entries, approximate=True)  # type: ignore[arg-type]
        pipe.expire(RUNS_KEY, self.ttl_s)
        pipe.execute()

    def run_started(self, start: RunStart) -> None:
        session = start.session
        graph = RunGraph.from_run(
            start.run_id,
            start.dag,
            start.plan,
            session.backend_name,
            session.store_spec,
            start.started,
        )
        self._announce({"kind": "started", "run_id": start.run_id, "graph": graph.to_json()})

    def run_finished(self, session: Kong, summary: RunSummary) -> None:
        self._announce(
            {
                "kind": "finished",
                "run_id": summary.run_id,
                "summary": json.dumps(summary_fields(summary)),
                "metrics": json.dumps(metrics_to_json(summary.task_metrics)),
            }
        )

    def close(self) -> None:
        self.client.close()


class AnnouncementReader:
    """Feeds a standalone dashboard: a daemon thread that reads `RUNS_KEY` and, for each
    started run, makes a record and has the dashboard follow it in `store`."""

    def __init__(self, store: RedisStore, dashboard: Dashboard) -> None:
        self.store = store
        self.dashboard = dashboard
        self.client = redis_client(store.url)
        self.poll_s = float(config.get("dashboard.poll_s"))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kong-dashboard-runs", daemon=True)

    def start(self) -> AnnouncementReader:
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop reading (within one `poll_s`) and release the connection."""
        self._stop.set()
        self._thread.join(self.poll_s * 4 + float(config.get("store.socket_timeout_s")))
        self.client.close()

    def _run(self) -> None:
        cursor = "0"
        block_ms = max(1, round(self.poll_s * 1000))
        while not self._stop.is_set():
            try:
                reply: Any = self.client.xread({RUNS_KEY: cursor}, block=block_ms)
            except redis.RedisError as exc:
                logger.warning("dashboard cannot read announced runs: %s", exc)
                self._stop.wait(self.poll_s * 4)
                continue
            for _, entries in reply or []:
                for entry_id, fields in entries:
                    cursor = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                    self.take(decode(fields))

    def take(self, fields: dict[str, str]) -> None:
        """One announcement: a run to show and follow, or the end of one."""
        book: RunBook = self.dashboard.book
        run_id = fields.get("run_id", "")
        if fields.get("kind") == "started":
            record = book.add(RunRecord(run_id, RunGraph.from_json(fields["graph"])))
            self.dashboard.watch(self.store, record)
        elif fields.get("kind") == "finished":
            known = book.get(run_id)
            if known is not None and not known.finished:
                known.finish(
                    json.loads(fields["summary"]), metrics_from_json(json.loads(fields["metrics"]))
                )


def decode(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def serve_store(url: str, host: str | None = None, port: int | None = None) -> Dashboard:
    """A standalone dashboard of the runs announced in the Redis at `url` (closing it
    stops the reader and releases the store and the history)."""
    from ..planning.history import RedisHistory
    from ..store.redis import connect
    from .runs import planners_of
    from .server import Dashboard

    store = connect(url)
    history = RedisHistory(url)
    dashboard = Dashboard(
        RunBook(keep=int(config.get("dashboard.keep_runs"))),
        host=host,
        port=port,
        planners=lambda record: planners_of(history, record.graph.shape_hash),
    )
    dashboard.feeder = AnnouncementReader(store, dashboard).start()
    dashboard.owned += [store, history]
    return dashboard
