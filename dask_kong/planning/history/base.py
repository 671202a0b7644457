"""What every history shares: the `History` protocol predictions read, the `Stats` it
answers with, and `SummaryHistory`, which turns runs into observations (`observe.py`)
and typed look-ups into group names (`taxonomy.py`) for the stores behind it.

A store only applies observations (`_apply`) and reads groups back (`_read`); the
in-process one is `memory.py`, the shared one `redis.py`, as with `dask_kong.store`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ... import config
from ...dag import DAG
from ...metrics.records import RunSummary
from ..plan import Plan
from .observe import Observations, observe_run
from .taxonomy import Metric, function_group, planner_shape_group, resource_group, shape_group

logger = logging.getLogger("dask_kong.planning")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of `values`, interpolating linearly between the two
    closest ranks (numpy's default), so p50 of [1, 2, 3, 4] is 2.5."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * min(100.0, max(0.0, q)) / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Stats:
    """One group's summary: per metric, observations ever, their sum, the latest samples."""

    counts: Mapping[Metric, int]
    sums: Mapping[Metric, float]
    samples: Mapping[Metric, tuple[float, ...]]

    def count(self, metric: Metric) -> int:
        return self.counts.get(metric, 0)

    def mean(self, metric: Metric) -> float | None:
        n = self.count(metric)
        return self.sums.get(metric, 0.0) / n if n else None

    def percentile(self, metric: Metric, q: float) -> float | None:
        """The q-th percentile of the latest samples (None without samples)."""
        values = self.samples.get(metric, ())
        return percentile(values, q) if values else None


@runtime_checkable
class History(Protocol):
    """Where metrics of earlier runs are summarised; what `Predictor` reads."""

    def record(self, dag: DAG, summary: RunSummary, plan: Plan | None = None) -> None:
        """Add one finished run: its per-task metrics and, if given, its plan's prediction."""
        ...

    def record_startup(self, resource: str, cold: bool, seconds: float) -> None:
        """Add one worker start-up of `resource` (the runtime measures these)."""
        ...

    def function_stats(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Stats]:
        """Stats of each known (function, resource) pair; unknown pairs are left out."""
        ...

    def resource_stats(self, resources: Iterable[str]) -> dict[str, Stats]:
        """Stats of each known resource config; unknown ones are left out."""
        ...

    def close(self) -> None:
        """Release connections (nothing for an in-memory history)."""
        ...

    def shape_stats(self, shape_hash: str) -> Stats | None:
        """Stats of a DAG shape, None before its first recorded run."""
        ...

    def planner_stats(self, shape_hash: str, planners: Iterable[str]) -> dict[str, Stats]:
        """Stats of a DAG shape per planner that ran it; planners without runs are left out."""
        ...


def bounded_sample(values: list[float], size: int) -> list[float]:
    """At most `size` of `values`: all of them, or a uniform random subset when a run
    brought more, so that a window is not filled by one run's last tasks alone."""
    return values if len(values) <= size else random.sample(values, size)


class SummaryHistory:
    """What both histories share: turning runs into observations, and typed look-ups.
    Subclasses store observations (`_apply`) and read groups back (`_read`)."""

    def __init__(self, samples: int | None = None) -> None:
        #: Samples kept per metric of a group (the percentile window).
        self.samples = int(config.get("planning.history_samples", samples))
        if self.samples < 1:
            raise ValueError(f"history_samples must be at least 1, not {self.samples}")

    def close(self) -> None:
        """Nothing to release by default; RedisHistory closes its pool."""

    def record(self, dag: DAG, summary: RunSummary, plan: Plan | None = None) -> None:
        self._apply(observe_run(dag, summary, plan))

    def record_startup(self, resource: str, cold: bool, seconds: float) -> None:
        metric = Metric.STARTUP_COLD_S if cold else Metric.STARTUP_WARM_S
        self._apply({resource_group(resource): {metric: [seconds]}})

    def function_stats(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Stats]:
        groups = {function_group(f, r): (f, r) for f, r in pairs}
        return {groups[g]: stats for g, stats in self._read(list(groups)).items()}

    def resource_stats(self, resources: Iterable[str]) -> dict[str, Stats]:
        groups = {resource_group(r): r for r in resources}
        return {groups[g]: stats for g, stats in self._read(list(groups)).items()}

    def shape_stats(self, shape_hash: str) -> Stats | None:
        return self._read([shape_group(shape_hash)]).get(shape_group(shape_hash))

    def planner_stats(self, shape_hash: str, planners: Iterable[str]) -> dict[str, Stats]:
        groups = {planner_shape_group(shape_hash, p): p for p in planners}
        return {groups[g]: stats for g, stats in self._read(list(groups)).items()}

    def _apply(self, obs: Observations) -> None:
        raise NotImplementedError

    def _read(self, groups: Sequence[str]) -> dict[str, Stats]:
        raise NotImplementedError


def record_run(history: History | None, dag: DAG, plan: Plan | None, summary: RunSummary) -> bool:
    """Add a finished run to `history` (None: nothing to do). Call it after every run.

    A history that cannot be written never fails the run whose results are already in
    hand: the error is logged and False returned.
    """
    if history is None or not summary.succeeded:
        return False
    try:
        history.record(dag, summary, plan)
    except Exception as exc:
        logger.warning("could not record run %s in the metrics history: %s", summary.run_id, exc)
        return False
    return True
