"""Pytest plugin for `benchmarks.dask_suites`: one kong session serves every scheduler name.

Loaded with `-p benchmarks.kong_everywhere --kong-backend=threads|processes` into a
pytest run of dask's own test modules. At session start it opens one `Kong` session and,
for the whole run:

* points every entry of `dask.base.named_schedulers` ("sync", "threads", "processes" and
  their aliases) at the session's `get`, so `compute(scheduler="sync")`, which dask's
  `assert_eq` helpers use, runs on kong;
* sets `dask.config.set(scheduler=session.get)`, so a bare `.compute()` runs on kong too
  (dask consults the config before a collection's own default scheduler).

Callables a test passes itself (`scheduler=dask.get`, `dask.threaded.get`) still run on
dask: they name no scheduler. The plugin leaves `dataframe.shuffle.method` alone on
purpose: choosing a shuffle that works on kong's workers is dask-kong's job, and this run
is meant to show whether it does. The session is closed at session end; with
`--kong-pids-file` the plugin writes the PIDs of the processes the session started (at
start, so a caller can clean up after a crash) and which of them were still alive after
close, so a caller can prove nothing leaked.

Without `--kong-backend` the plugin opens no session and changes nothing in how tests
run; the plain dask run loads it too, for the two things both runs need:

* `--progress-log PATH` appends a JSON line when each test starts and ends, and
  deselects the tests a previous attempt already started: if the pytest process dies
  (a segfault), junit XML is lost, and the caller restarts pytest on the remaining tests
  and blames the one that was running;
* SIGINT gets Python's KeyboardInterrupt handler back, even when the run was started
  from a background shell that ignores SIGINT: the caller stops a run that is over its
  budget with SIGINT, so that pytest still writes its junit XML and kong closes.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import AbstractContextManager
from typing import Any

import dask
import dask.base
import dask.multiprocessing
import pytest

from benchmarks.dask_suites import pid_alive
from dask_kong import Kong

#: The `--kong-backend` that routes every name to dask's multiprocessing scheduler.
DASK_PROCESSES = "dask-processes"

#: Every name `dask.base.get_scheduler` resolves through `named_schedulers`.
SCHEDULER_NAMES = (
    "sync",
    "synchronous",
    "single-threaded",
    "threads",
    "threading",
    "processes",
    "multiprocessing",
)


class KongEverywhere:
    """The session and what was patched, so that session end undoes exactly that."""

    def __init__(self, backend: str, pids_file: str | None) -> None:
        self.backend = backend
        self.pids_file = pids_file
        self.session: Kong | None = None
        #: The session's `get`, bound once: dask's config is compared to it by identity.
        self.get: Any = None
        self.saved: dict[str, Any] = {}
        self.config_ctx: AbstractContextManager[Any] | None = None

    def start(self) -> None:
        """Open the session and route every scheduler name and the default to it; with
        the backend `dask-processes`, route them to dask's own multiprocessing scheduler
        instead (no session): `dask_suites` re-runs kong's failures so, to tell a test that
        needs the test's own process (it counts calls, or reads a lock's state) from a kong
        failure."""
        if self.backend == DASK_PROCESSES:
            self.get = dask.multiprocessing.get
        else:
            self.session = Kong(backend=self.backend)
            self.write_pids(session_pids(self.session), alive_after_close=None)
            self.get = self.session.get
        self.saved = {n: dask.base.named_schedulers.get(n) for n in SCHEDULER_NAMES}
        self.config_ctx = dask.config.set(scheduler=self.get)
        self.config_ctx.__enter__()
        self.route_names()

    def route_names(self) -> None:
        """Point every scheduler name at the session (again: a test may have reset one)."""
        for name in SCHEDULER_NAMES:
            dask.base.named_schedulers[name] = self.get

    def ensure_default(self) -> None:
        """Re-assert kong as the configured default before a test: a test that replaced
        dask's global config (not through a `set` context) must not hand the rest of the
        run back to dask's schedulers."""
        if dask.config.get("scheduler", None) is not self.get:
            dask.config.config["scheduler"] = self.get
        self.route_names()

    def stop(self) -> None:
        """Undo the routing, close the session and (if asked) report its processes."""
        if self.config_ctx is not None:
            self.config_ctx.__exit__(None, None, None)
            self.config_ctx = None
        for name, get in self.saved.items():
            if get is None:
                dask.base.named_schedulers.pop(name, None)
            else:
                dask.base.named_schedulers[name] = get
        if self.session is None:
            return
        pids = session_pids(self.session)
        self.session.close()
        self.session = None
        self.write_pids(pids, alive_after_close=[pid for pid in pids if pid_alive(pid)])

    def write_pids(self, pids: list[int], alive_after_close: list[int] | None) -> None:
        """The session's PIDs for the caller; `alive_after_close` None: not closed yet."""
        if self.pids_file:
            with open(self.pids_file, "w") as f:
                json.dump({"pids": pids, "alive_after_close": alive_after_close}, f)


def session_pids(session: Kong) -> list[int]:
    """PIDs of the processes the session runs: its gateway's workers and its private
    redis-server (none for the threads backend with the memory store)."""
    pids: list[int] = []
    gateway = getattr(session.backend, "gateway", None)
    if gateway is not None:
        pids.extend(gateway.worker_pids())
    # The private server is the store's own; no public accessor, hence getattr.
    server = getattr(session.store, "_owned_server", None)
    if server is not None and server.pid is not None:
        pids.append(server.pid)
    return pids


class ProgressLog:
    """One JSON line per test start and end, appended as it happens (see module doc); the
    end line carries the test's status and the first line of its failure message, as
    junit XML would, because a process that dies never writes its junit XML.
    Registered as a plugin of its own when `--progress-log` is given."""

    def __init__(self, path: str) -> None:
        self.path = path
        #: nodeid -> (status, message) of the reports seen so far for a running test.
        self.outcomes: dict[str, tuple[str, str]] = {}

    def pytest_collection_modifyitems(
        self, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        """Deselect what an earlier attempt started."""
        done = {event["start"] for event in self.events() if "start" in event}
        if done:
            config.hook.pytest_deselected(items=[i for i in items if i.nodeid in done])
            items[:] = [i for i in items if i.nodeid not in done]

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self.write({"start": nodeid})

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Fold a phase's report into the test's status: a failed phase wins (a failed
        setup or teardown is an "error", as in junit XML), then a skip, then a pass."""
        status, message = self.outcomes.get(report.nodeid, ("passed", ""))
        if report.failed and status not in ("failed", "error"):
            status = "failed" if report.when == "call" else "error"
            message = failure_message(report)
        elif report.skipped and status == "passed":
            status, message = "skipped", failure_message(report)
        self.outcomes[report.nodeid] = (status, message)

    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        status, message = self.outcomes.pop(nodeid, ("passed", ""))
        self.write({"end": nodeid, "status": status, "message": message})

    def events(self) -> list[dict[str, str]]:
        """Every line written so far, by this attempt and earlier ones."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def write(self, event: dict[str, str]) -> None:
        # Flushed and closed at once: the next line may be the process's last.
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")


def failure_message(report: pytest.TestReport) -> str:
    """The first line of why a phase failed or skipped (junit XML's `message`)."""
    longrepr = report.longrepr
    if isinstance(longrepr, tuple):  # a skip: (path, line, reason)
        text = str(longrepr[2])
    else:
        crash = getattr(longrepr, "reprcrash", None)
        text = crash.message if crash is not None else str(longrepr or "")
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kong", "run every dask scheduler name on one kong session")
    group.addoption(
        "--kong-backend", default=None, choices=("threads", "processes", DASK_PROCESSES)
    )
    group.addoption("--kong-pids-file", default=None, help="write the session's PIDs here")
    group.addoption("--progress-log", default=None, help="test starts/ends; resume from it")


PLUGIN_KEY = pytest.StashKey[KongEverywhere | None]()


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGINT, signal.default_int_handler)
    backend = config.getoption("--kong-backend")
    pids_file = config.getoption("--kong-pids-file")
    config.stash[PLUGIN_KEY] = KongEverywhere(backend, pids_file) if backend else None
    log_path = config.getoption("--progress-log")
    if log_path:
        config.pluginmanager.register(ProgressLog(log_path), "kong_progress_log")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    plugin = session.config.stash[PLUGIN_KEY]
    if plugin:
        plugin.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    plugin = item.config.stash[PLUGIN_KEY]
    if plugin:
        plugin.ensure_default()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    plugin = session.config.stash[PLUGIN_KEY]
    if plugin:
        plugin.stop()
