"""`MemoryHistory`: the metrics history in this process (embedded mode, tests).

Bounded like every history: at most `kong.planning.memory_history_groups` groups, the
least recently used dropped first, each metric's window `kong.planning.history_samples`
long. Gone when the process ends.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from ... import config
from .base import Stats, SummaryHistory, bounded_sample
from .observe import Observations
from .taxonomy import Metric


@dataclass
class _MemoryGroup:
    """One group's counts, sums and sample windows, per metric."""

    counts: dict[Metric, int]
    sums: dict[Metric, float]
    windows: dict[Metric, deque[float]]


class MemoryHistory(SummaryHistory):
    """History in this process (embedded mode, tests): gone when the process ends."""

    def __init__(self, samples: int | None = None, max_groups: int | None = None) -> None:
        super().__init__(samples)
        self.max_groups = int(config.get("planning.memory_history_groups", max_groups))
        self._groups: OrderedDict[str, _MemoryGroup] = OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryHistory({len(self._groups)} groups)"

    def _apply(self, obs: Observations) -> None:
        with self._lock:
            for name, by_metric in obs.items():
                group = self._groups.get(name)
                if group is None:
                    group = self._groups[name] = _MemoryGroup({}, {}, {})
                self._groups.move_to_end(name)
                for metric, values in by_metric.items():
                    group.counts[metric] = group.counts.get(metric, 0) + len(values)
                    group.sums[metric] = group.sums.get(metric, 0.0) + sum(values)
                    window = group.windows.setdefault(metric, deque(maxlen=self.samples))
                    window.extend(bounded_sample(values, self.samples))
            while len(self._groups) > self.max_groups:
                self._groups.popitem(last=False)

    def _read(self, groups: Sequence[str]) -> dict[str, Stats]:
        with self._lock:
            found = {}
            for name in groups:
                group = self._groups.get(name)
                if group is not None:
                    found[name] = Stats(
                        dict(group.counts),
                        dict(group.sums),
                        {m: tuple(w) for m, w in group.windows.items()},
                    )
            return found

    def stored_size(self) -> tuple[int, int]:
        """(groups, samples held in all windows): constant once every group is full."""
        with self._lock:
            samples = sum(len(w) for g in self._groups.values() for w in g.windows.values())
            return len(self._groups), samples
