"""Pytest plugin: one kong session serves every scheduler name dask knows.

Loaded with `-p benchmarks.kong_everywhere --kong-backend=threads|processes` into a
pytest run of dask's own test modules (see `benchmarks.dask_suites`). At session start it
opens one `Kong` session and, for the whole run:

* points every entry of `dask.base.named_schedulers` ("sync", "threads", "processes" and
  their aliases) at the session's `get`, so `compute(scheduler="sync")`, which dask's
  `assert_eq` helpers use, runs on kong;
* sets `dask.config.set(scheduler=session.get)`, so a bare `.compute()` runs on kong too
  (dask consults the config before a collection's own default scheduler).

Callables a test passes itself (`scheduler=dask.get`, `dask.threaded.get`) still run on
dask: they name no scheduler. The plugin leaves `dataframe.shuffle.method` alone on
purpose: choosing a shuffle that works on kong's workers is dask-kong's job, and this run
is meant to show whether it does. The session is closed at session end; with
`--kong-pids-file` the plugin writes the PIDs of the processes the session started and
which of them were still alive after close, so a caller can prove nothing leaked.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from typing import Any

import dask
import dask.base
import pytest

from dask_kong import Kong

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
        """Open the session and route every scheduler name and the default to it."""
        self.session = Kong(backend=self.backend)
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
        if self.pids_file:
            left = [pid for pid in pids if pid_alive(pid)]
            with open(self.pids_file, "w") as f:
                json.dump({"pids": pids, "alive_after_close": left}, f)


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


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie awaiting its parent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state != "Z"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kong", "run every dask scheduler name on one kong session")
    group.addoption("--kong-backend", default="threads", choices=("threads", "processes"))
    group.addoption("--kong-pids-file", default=None, help="write the session's PIDs here")


def pytest_configure(config: pytest.Config) -> None:
    plugin = KongEverywhere(
        config.getoption("--kong-backend"), config.getoption("--kong-pids-file")
    )
    config.stash[PLUGIN_KEY] = plugin


PLUGIN_KEY = pytest.StashKey[KongEverywhere]()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[PLUGIN_KEY].start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[PLUGIN_KEY].ensure_default()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    session.config.stash[PLUGIN_KEY].stop()
