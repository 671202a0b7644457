"""The schedulers the suite compares, behind one small surface.

`open_scheduler(name)` starts a scheduler and returns it ready to time: anything that needs
starting (a LocalCluster, a process pool, a kong session) is started and warmed up by one
tiny computation here, so that the runner reports start-up apart from makespans. Each
scheduler then offers `settle()` (before each timed compute), `compute(case)`,
`run_details()` (kong's `last_run()` summary, None for the others) and `close()`.

Names: sync, threads, processes, distributed, numpy, kong-threads, kong-processes,
kong-threads-redis, and kong-processes-unsigned / kong-threads-redis-unsigned (signing
off, to measure what signing costs), and
kong-<backend>:<planner> for a kong planner by name (e.g. kong-processes:naive), and an
optional @N suffix capping kong's concurrent workers (e.g. kong-threads@64).
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import dask
import dask.array as da

from .workloads.base import Case

DASK_LOCAL = ("sync", "threads", "processes")
DASK_SCHEDULERS = (*DASK_LOCAL, "distributed")
# kong scheduler name -> Kong(...) arguments.
KONG_SESSIONS: dict[str, dict[str, Any]] = {
    "kong-threads": {"backend": "threads", "store": "memory"},
    "kong-processes": {"backend": "processes", "store": "redis"},
    # Signing off (kong.security.sign: false), beside the default, to measure its cost.
    "kong-processes-unsigned": {"backend": "processes", "store": "redis", "sign": False},
    "kong-threads-redis": {"backend": "threads", "store": "redis"},
    "kong-threads-redis-unsigned": {"backend": "threads", "store": "redis", "sign": False},
}
DEFAULT_SCHEDULERS = ("kong-threads", "kong-processes", *DASK_SCHEDULERS, "numpy")
KNOWN_SCHEDULERS = (*KONG_SESSIONS, *DASK_SCHEDULERS, "numpy")
# The serverless issue's baseline: two single-threaded worker processes.
DISTRIBUTED_CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True}
# Bound on waiting for distributed to release the previous compute's keys (see settle).
SETTLE_TIMEOUT_S = 30.0


class Scheduler:
    """A started scheduler, ready to compute a workload under the runner's stopwatch.
    Subclasses start what they need in `__init__` and override what differs."""

    def __init__(self, name: str) -> None:
        self.name = name

    def settle(self) -> None:
        """Called before each timed compute, outside the timing: leave nothing from the
        previous compute that could make this one faster (cached results)."""

    def compute(self, case: Case) -> tuple[Any, ...]:
        """Compute the workload; results in the order of `case.collections`."""
        return compute_case(case, scheduler=self.name)

    def run_details(self) -> dict[str, Any] | None:
        """What the scheduler reports about the last compute (kong), else None."""
        return None

    def close(self) -> None:
        """Stop everything `__init__` started."""


def split_workers(name: str) -> tuple[str, int | None]:
    """ "kong-threads:wukong@64" -> ("kong-threads:wukong", 64): @N caps kong's workers."""
    base, at, workers = name.partition("@")
    return base, int(workers) if at else None


def check_name(name: str) -> None:
    """Raise ValueError for a name that no scheduler could ever have (a typo)."""
    name, workers = split_workers(name)
    base = name.split(":", 1)[0]
    if workers is not None and base not in KONG_SESSIONS:
        raise ValueError(f"@N (worker limit) only applies to kong schedulers, not {base!r}")
    if base not in KNOWN_SCHEDULERS or (":" in name and base not in KONG_SESSIONS):
        known = ", ".join(KNOWN_SCHEDULERS)
        raise ValueError(f"unknown scheduler {name!r}; known: {known}, kong-<backend>:<planner>")


def open_scheduler(name: str) -> Scheduler:
    """Start the scheduler called `name`. Raises whatever its import or start-up raises."""
    check_name(name)
    plain, workers = split_workers(name)
    base, _, planner = plain.partition(":")
    if base in KONG_SESSIONS:
        return KongScheduler(name, planner=planner or None, workers=workers, **KONG_SESSIONS[base])
    if base == "distributed":
        return DistributedScheduler(name)
    if base == "processes":
        return ProcessPoolScheduler(name)
    if base == "numpy":
        return NumpyScheduler(name)
    return DaskLocalScheduler(name)


def compute_case(case: Case, **kwargs: Any) -> tuple[Any, ...]:
    """`dask.compute` of the case's collections, typed: results in their order."""
    results: tuple[Any, ...] = dask.compute(*case.collections, **kwargs)
    return results


def warm_up(get: Any, **kwargs: Any) -> None:
    """One tiny dask.array computation: worker processes import numpy and dask.array now,
    during start-up, rather than during the first timed repeat."""
    dask.compute(da.ones(8, chunks=4).sum(), scheduler=get, **kwargs)


class DaskLocalScheduler(Scheduler):
    """dask's sync and threads schedulers: nothing to start."""


class ProcessPoolScheduler(Scheduler):
    """dask's processes scheduler on a pool started before timing.

    Given no pool, dask starts one (spawning fresh interpreters) inside every compute; we
    start it once, as dask would (same size, context and initializer), so that the
    makespan compares running graphs, not starting interpreters.
    """

    def __init__(self, name: str) -> None:
        from dask.multiprocessing import get_context, initialize_worker_process
        from dask.system import CPU_COUNT

        super().__init__(name)
        if os.environ.get("PYTHONHASHSEED") in (None, "0"):
            os.environ["PYTHONHASHSEED"] = "6640"  # what dask sets for its own pools
        workers = dask.config.get("num_workers", None) or CPU_COUNT
        self.pool = ProcessPoolExecutor(
            workers, mp_context=get_context(), initializer=initialize_worker_process
        )
        warm_up("processes", pool=self.pool)

    def compute(self, case: Case) -> tuple[Any, ...]:
        return compute_case(case, scheduler="processes", pool=self.pool)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DistributedScheduler(Scheduler):
    """A distributed LocalCluster (DISTRIBUTED_CLUSTER) and a Client, started before timing."""

    def __init__(self, name: str) -> None:
        from distributed import Client, LocalCluster

        super().__init__(name)
        self.cluster = LocalCluster(
            **DISTRIBUTED_CLUSTER, dashboard_address=None, silence_logs=logging.ERROR
        )
        try:
            self.client = Client(self.cluster, set_as_default=False)
            warm_up(self.client.get)
        except BaseException:
            self.cluster.close()
            raise

    def settle(self) -> None:
        """Wait (bounded) until the scheduler has forgotten every task: keys are
        deterministic, so results of the last compute still held when the next one
        starts would be reused and its makespan would be wrong."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        pause = 0.01
        while self.client.run_on_scheduler(_count_scheduler_tasks):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"distributed still holds tasks {SETTLE_TIMEOUT_S} s after a compute"
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def compute(self, case: Case) -> tuple[Any, ...]:
        return compute_case(case, scheduler=self.client.get)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.cluster.close()


def _count_scheduler_tasks(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


class KongScheduler(Scheduler):
    """A dask-kong session, created before timing; `run_details` is `last_run()`."""

    def __init__(
        self,
        name: str,
        backend: str,
        store: str,
        planner: str | None,
        workers: int | None,
        sign: bool = True,
    ) -> None:
        from dask_kong import Kong, last_run

        super().__init__(name)
        self._last_run = last_run
        # Held until close: the client reads kong.security.sign at every pickle, and the
        # session hands the setting to the workers it starts.
        self._signing = dask.config.set({"kong.security.sign": sign})
        try:
            # planner=None: the session's default (dask config `kong.planner`).
            self.session = Kong(backend=backend, store=store, planner=planner, workers=workers)
        except BaseException:
            self._signing.__exit__(None, None, None)
            raise
        try:
            warm_up(self.session.get)
        except BaseException:
            self.close()
            raise
        self._details: dict[str, Any] | None = None

    def compute(self, case: Case) -> tuple[Any, ...]:
        before = self._last_run()
        results = compute_case(case, scheduler=self.session.get)
        summary = self._last_run()
        # A summary left over from an earlier run would be silently wrong: report none.
        self._details = summary.as_dict() if summary is not None and summary is not before else None
        return results

    def run_details(self) -> dict[str, Any] | None:
        return self._details

    def close(self) -> None:
        try:
            self.session.close()
        finally:
            self._signing.__exit__(None, None, None)


class NumpyScheduler(Scheduler):
    """Not a scheduler: the workload's NumPy equivalent, where it has one."""

    def compute(self, case: Case) -> tuple[Any, ...]:
        if case.numpy_fn is None:
            raise NotImplementedError("this workload has no NumPy equivalent")
        return case.numpy_fn()
