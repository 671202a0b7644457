"""Predictions for planners, from the metrics history of earlier runs.

`Predictor` answers, per task and resource config: execution seconds (seconds per input
byte x input bytes, or seconds per task when sizes are unknown), output bytes, transfer
seconds (bytes / store throughput) and worker start-up seconds (cold or warm). Every
answer is None when the history knows nothing that applies: planners must cope.

Values are taken at the SLA percentile ("p50", "p90", ..., or "mean"). For durations and
sizes a higher percentile is more conservative; for throughputs the mirrored percentile
is (p90 of a transfer's time is p10 of the throughput), so `sla` always means "how
pessimistic".

Across resource configs: execution time is normalised by `scale_exec_s` (Amdahl's law
over the configs' cpus), and a config with fewer than `kong.planning.min_samples`
samples of a metric borrows the nearest config that has enough (`nearest_resources`:
closest cpus, then closest memory). Sizes, throughputs and start-ups are borrowed as is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from .. import config
from .history import History, Metric, Stats
from .plan import ResourceSpec

_SLA_PATTERN = re.compile(r"p(\d+(?:\.\d+)?)")
# Metrics where larger is better: the conservative end is the low percentile.
_HIGHER_IS_BETTER = frozenset({Metric.READ_BPS, Metric.WRITE_BPS})


def parse_sla(sla: str) -> float | None:
    """The percentile (0..100) an SLA names: "p90" -> 90.0; "mean" -> None."""
    if sla == "mean":
        return None
    match = _SLA_PATTERN.fullmatch(sla)
    if match is None or float(match.group(1)) > 100:
        raise ValueError(f"unknown SLA {sla!r}: use 'mean' or a percentile such as 'p50', 'p90'")
    return float(match.group(1))


def scale_exec_s(seconds: float, from_cpus: int, to_cpus: int, parallel_fraction: float) -> float:
    """Execution time observed on `from_cpus` cpus, predicted for `to_cpus` (Amdahl).

    A task whose work is a fraction f parallel takes t1 * ((1 - f) + f / c) on c cpus.
    f = 1 (kong.planning.parallel_fraction's default) is pure CPU-bound parallel work:
    time scales with 1 / cpus; f = 0 is single-threaded Python: no change.
    """
    if from_cpus < 1 or to_cpus < 1:
        raise ValueError(f"cpus must be at least 1 (got {from_cpus} and {to_cpus})")
    f = min(1.0, max(0.0, parallel_fraction))
    return seconds * ((1 - f) + f / to_cpus) / ((1 - f) + f / from_cpus)


def nearest_resources(
    target: ResourceSpec, resources: Sequence[ResourceSpec]
) -> list[ResourceSpec]:
    """`resources` from the most to the least like `target`: closest cpus first, then
    closest memory; between two equally near, the weaker first, since its timings err on
    the slow (safe) side."""
    return sorted(
        resources,
        key=lambda r: (
            abs(r.cpus - target.cpus),
            abs(r.memory_mb - target.memory_mb),
            r.cpus,
            r.memory_mb,
            r.name,
        ),
    )


class Predictor:
    """Predictions at one SLA from one history, for the configs in `resources`.

    Look-ups are cached: call `prefetch` with every function of a DAG first, so that a
    Redis history answers in one round-trip instead of one per function.
    """

    def __init__(
        self,
        history: History | None,
        sla: str = "p50",
        resources: Sequence[ResourceSpec] = (ResourceSpec("default", 1024, 1),),
        *,
        min_samples: int | None = None,
        parallel_fraction: float | None = None,
    ) -> None:
        self.history = history
        self.sla = sla
        self.quantile = parse_sla(sla)
        self.resources = {r.name: r for r in resources}
        self.min_samples = int(config.get("planning.min_samples", min_samples))
        self.parallel_fraction = float(config.get("planning.parallel_fraction", parallel_fraction))
        self._functions: dict[str, dict[str, Stats]] = {}
        self._resources: dict[str, Stats] | None = None
        self._values: dict[tuple[str | None, str, Metric], tuple[ResourceSpec, float] | None] = {}

    # -- look-ups -------------------------------------------------------------------

    def prefetch(self, functions: Iterable[str]) -> None:
        """Load the stats of `functions` on every config (one history look-up)."""
        missing = sorted(set(functions) - set(self._functions))
        if not missing:
            return
        found = {}
        if self.history is not None:
            pairs = [(f, r) for f in missing for r in self.resources]
            found = self.history.function_stats(pairs)
        for function in missing:
            self._functions[function] = {
                r: found[(function, r)] for r in self.resources if (function, r) in found
            }

    def knows(self, function: str) -> bool:
        """Whether any config has history of `function`."""
        return bool(self._function_stats(function))

    def _function_stats(self, function: str) -> dict[str, Stats]:
        if function not in self._functions:
            self.prefetch([function])
        return self._functions[function]

    def _resource_stats(self) -> dict[str, Stats]:
        if self._resources is None:
            self._resources = self.history.resource_stats(self.resources) if self.history else {}
        return self._resources

    def spec(self, resource: str) -> ResourceSpec:
        """The config called `resource`; one the planner was not given is an error."""
        try:
            return self.resources[resource]
        except KeyError:
            known = ", ".join(self.resources)
            raise ValueError(f"unknown resource config {resource!r}; known: {known}") from None

    def pick(
        self, by_resource: dict[str, Stats], resource: str, metric: Metric
    ) -> tuple[ResourceSpec, Stats] | None:
        """The config whose samples of `metric` stand in for `resource`: itself with
        enough samples, else the nearest with enough, else the nearest with any."""
        ranked = nearest_resources(self.spec(resource), list(self.resources.values()))
        with_samples = [
            r for r in ranked if r.name in by_resource and by_resource[r.name].count(metric)
        ]
        for spec in with_samples:
            if by_resource[spec.name].count(metric) >= self.min_samples:
                return spec, by_resource[spec.name]
        if with_samples:
            return with_samples[0], by_resource[with_samples[0].name]
        return None

    def value(self, stats: Stats, metric: Metric) -> float | None:
        """`metric` at the SLA: its mean, or its (mirrored, for throughputs) percentile."""
        if self.quantile is None:
            return stats.mean(metric)
        q = 100 - self.quantile if metric in _HIGHER_IS_BETTER else self.quantile
        return stats.percentile(metric, q)

    def _at(
        self, function: str | None, resource: str, metric: Metric
    ) -> tuple[ResourceSpec, float] | None:
        """`metric` of `function` (None: of the config itself) at the SLA, for
        `resource`, and the config it was observed on. Cached: planners ask per task."""
        key = (function, resource, metric)
        if key not in self._values:
            stats = self._function_stats(function) if function else self._resource_stats()
            picked = self.pick(stats, resource, metric)
            value = self.value(picked[1], metric) if picked else None
            self._values[key] = None if picked is None or value is None else (picked[0], value)
        return self._values[key]

    # -- predictions ----------------------------------------------------------------

    def exec_s(
        self, function: str, resource: str, input_bytes: float | None = None
    ) -> float | None:
        """Execution seconds of one task of `function` on `resource`."""
        if input_bytes:
            rate = self._at(function, resource, Metric.EXEC_S_PER_BYTE)
            if rate is not None:
                return self._normalised(rate[1] * input_bytes, rate[0], resource)
        per_task = self._at(function, resource, Metric.EXEC_S)
        return None if per_task is None else self._normalised(per_task[1], per_task[0], resource)

    def _normalised(self, seconds: float, observed_on: ResourceSpec, resource: str) -> float:
        target = self.spec(resource)
        return scale_exec_s(seconds, observed_on.cpus, target.cpus, self.parallel_fraction)

    def output_bytes(
        self, function: str, resource: str, input_bytes: float | None = None
    ) -> float | None:
        """Output size of one task of `function`: output/input ratio x input bytes, or the
        typical output size when the input size is unknown."""
        if input_bytes:
            ratio = self._at(function, resource, Metric.OUTPUT_RATIO)
            if ratio is not None:
                return ratio[1] * input_bytes
        size = self._at(function, resource, Metric.OUTPUT_BYTES)
        return None if size is None else size[1]

    def publishes_recipe(self, function: str, resource: str) -> bool:
        """Whether tasks of `function` usually publish a recipe, not their output (their
        readers then recompute them instead of reading: runtime.recompute)."""
        share = self._at(function, resource, Metric.RECIPE)
        return share is not None and share[1] >= 0.5

    def is_stateful(self, function: str) -> bool:
        """Whether any task of `function` was ever seen reading or making a handle to
        state (`dask_kong.values`) on any config: such a task must never run twice, so
        no planner duplicates it."""
        stats = self._function_stats(function).values()
        return any(s.sums.get(Metric.STATEFUL, 0.0) > 0 for s in stats)

    def transfer_s(self, nbytes: float | None, source: str, dest: str) -> float | None:
        """Seconds to move an output: written by a worker of `source`, read by one of
        `dest`. With the size unknown, the typical time of one write and one read."""
        write = self.write_s(nbytes, source)
        read = self.read_s(nbytes, dest)
        if write is None and read is None:
            return None
        return (write or 0.0) + (read or 0.0)

    def write_s(self, nbytes: float | None, resource: str) -> float | None:
        """Seconds a worker of `resource` takes to write `nbytes` to the store."""
        return self._io_s(nbytes, resource, Metric.WRITE_BPS, Metric.WRITE_S)

    def read_s(self, nbytes: float | None, resource: str) -> float | None:
        """Seconds a worker of `resource` takes to read `nbytes` from the store."""
        return self._io_s(nbytes, resource, Metric.READ_BPS, Metric.READ_S)

    def _io_s(
        self, nbytes: float | None, resource: str, rate: Metric, per_op: Metric
    ) -> float | None:
        """Latency (the typical small transfer) plus bytes over throughput (sampled on
        large transfers only): either part may be unknown, both unknown is None."""
        latency = self._at(None, resource, per_op)
        bps = self._at(None, resource, rate)
        if nbytes is not None and bps is not None and bps[1] > 0:
            return (latency[1] if latency else 0.0) + nbytes / bps[1]
        return None if latency is None else latency[1]

    def startup_s(self, resource: str, cold: bool | None) -> float | None:
        """Seconds from invocation to a worker of `resource` running its first task:
        cold, warm, or (None) as the backend's pool mixes them."""
        if cold is None:
            metric = Metric.STARTUP_S
        else:
            metric = Metric.STARTUP_COLD_S if cold else Metric.STARTUP_WARM_S
        seconds = self._at(None, resource, metric)
        return None if seconds is None else seconds[1]

    def invoke_s(self, resource: str) -> float | None:
        """Seconds a worker of `resource` spends invoking another."""
        seconds = self._at(None, resource, Metric.INVOKE_S)
        return None if seconds is None else seconds[1]
