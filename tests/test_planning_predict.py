"""Predictions: SLA percentiles, cross-config normalisation, nearest-config fallback."""

from __future__ import annotations

import pytest

from dask_kong.planning import MemoryHistory, Predictor, ResourceSpec
from dask_kong.planning.history import Metric, function_group, resource_group
from dask_kong.planning.predict import nearest_resources, parse_sla, scale_exec_s

SMALL = ResourceSpec("small", 1024, 1)
MEDIUM = ResourceSpec("medium", 2048, 2)
LARGE = ResourceSpec("large", 3072, 2)
HUGE = ResourceSpec("huge", 8192, 4)
RESOURCES = (SMALL, MEDIUM, LARGE, HUGE)


def exec_samples(function: str, resource: str, samples: list[float]) -> MemoryHistory:
    history = MemoryHistory()
    history._apply({function_group(function, resource): {Metric.EXEC_S: samples}})
    return history


SKEWED = [1.0] * 80 + [10.0] * 20


def test_p90_is_at_least_p50_on_skewed_samples() -> None:
    history = exec_samples("f", "small", SKEWED)
    p50 = Predictor(history, "p50", RESOURCES).exec_s("f", "small")
    p90 = Predictor(history, "p90", RESOURCES).exec_s("f", "small")
    mean = Predictor(history, "mean", RESOURCES).exec_s("f", "small")
    assert p50 == 1.0 and p90 == 10.0 and p90 >= p50
    assert mean == pytest.approx(2.8)


def test_conservative_sla_takes_the_low_end_of_throughput() -> None:
    """p90 means 'pessimistic': slow transfers, i.e. the 10th percentile of bytes/s."""
    history = MemoryHistory()
    throughputs = [100.0] * 20 + [1000.0] * 80
    history._apply(
        {resource_group("small"): {Metric.READ_BPS: throughputs, Metric.WRITE_BPS: throughputs}}
    )
    p50 = Predictor(history, "p50", RESOURCES).transfer_s(1000, "small", "small")
    p90 = Predictor(history, "p90", RESOURCES).transfer_s(1000, "small", "small")
    assert p50 == pytest.approx(2.0)  # 1000 B at 1000 B/s, written then read
    assert p90 == pytest.approx(20.0)  # at 100 B/s


def test_unknown_sla_is_rejected() -> None:
    assert parse_sla("p99.9") == 99.9
    assert parse_sla("mean") is None
    for bad in ("p101", "90", "fast"):
        with pytest.raises(ValueError, match="SLA"):
            parse_sla(bad)


def test_exec_time_scales_with_one_over_cpus_for_cpu_bound_work() -> None:
    assert scale_exec_s(8.0, from_cpus=1, to_cpus=2, parallel_fraction=1.0) == 4.0
    assert scale_exec_s(8.0, from_cpus=4, to_cpus=1, parallel_fraction=1.0) == 32.0
    assert scale_exec_s(8.0, from_cpus=1, to_cpus=4, parallel_fraction=0.0) == 8.0
    # Amdahl: half parallel on 2 cpus takes 0.5 + 0.25 of the time on 1 cpu.
    assert scale_exec_s(8.0, from_cpus=1, to_cpus=2, parallel_fraction=0.5) == 6.0
    with pytest.raises(ValueError):
        scale_exec_s(1.0, from_cpus=0, to_cpus=1, parallel_fraction=1.0)


def test_prediction_for_another_config_is_normalised_by_cpus() -> None:
    history = exec_samples("f", "small", [4.0] * 10)
    predictor = Predictor(history, "p50", RESOURCES, min_samples=5, parallel_fraction=1.0)
    assert predictor.exec_s("f", "small") == 4.0
    assert predictor.exec_s("f", "large") == 2.0
    assert predictor.exec_s("f", "huge") == 1.0
    serial = Predictor(history, "p50", RESOURCES, min_samples=5, parallel_fraction=0.0)
    assert serial.exec_s("f", "huge") == 4.0


def test_nearest_config_ranks_by_cpus_then_memory() -> None:
    assert [r.name for r in nearest_resources(LARGE, RESOURCES)] == [
        "large",
        "medium",
        "small",
        "huge",
    ]
    assert [r.name for r in nearest_resources(MEDIUM, RESOURCES)] == [
        "medium",
        "large",
        "small",
        "huge",
    ]


def test_config_with_too_few_samples_borrows_the_nearest_config_with_enough() -> None:
    history = MemoryHistory()
    history._apply(
        {
            function_group("f", "large"): {Metric.EXEC_S: [100.0] * 2},  # too few
            function_group("f", "medium"): {Metric.EXEC_S: [3.0] * 5},  # nearest with enough
            function_group("f", "small"): {Metric.EXEC_S: [8.0] * 50},
        }
    )
    predictor = Predictor(history, "p50", RESOURCES, min_samples=5, parallel_fraction=1.0)
    assert predictor.exec_s("f", "large") == 3.0  # medium's 3 s, both have 2 cpus
    assert predictor.exec_s("f", "huge") == 1.5  # medium's 3 s on 4 cpus instead of 2
    assert predictor.exec_s("f", "small") == 8.0  # enough of its own


def test_config_falls_back_to_its_own_few_samples_when_no_config_has_enough() -> None:
    history = exec_samples("f", "large", [6.0, 6.0])
    predictor = Predictor(history, "p50", RESOURCES, min_samples=5, parallel_fraction=1.0)
    assert predictor.exec_s("f", "large") == 6.0
    assert predictor.exec_s("f", "small") == 12.0


def test_per_byte_rate_is_used_when_the_input_size_is_known() -> None:
    history = MemoryHistory()
    history._apply(
        {
            function_group("f", "small"): {
                Metric.EXEC_S: [5.0] * 5,
                Metric.EXEC_S_PER_BYTE: [0.001] * 5,
                Metric.OUTPUT_RATIO: [0.5] * 5,
                Metric.OUTPUT_BYTES: [300.0] * 5,
            }
        }
    )
    predictor = Predictor(history, "p50", RESOURCES)
    assert predictor.exec_s("f", "small", input_bytes=2000) == pytest.approx(2.0)
    assert predictor.exec_s("f", "small", input_bytes=None) == 5.0
    assert predictor.output_bytes("f", "small", input_bytes=2000) == 1000.0
    assert predictor.output_bytes("f", "small") == 300.0


def test_startup_is_predicted_cold_or_warm() -> None:
    history = MemoryHistory()
    history.record_startup("small", cold=True, seconds=2.0)
    history.record_startup("small", cold=False, seconds=0.1)
    predictor = Predictor(history, "p50", RESOURCES)
    assert predictor.startup_s("small", cold=True) == 2.0
    assert predictor.startup_s("small", cold=False) == 0.1
    assert predictor.startup_s("huge", cold=True) == 2.0  # borrowed from the nearest


def test_no_history_predicts_nothing() -> None:
    for history in (None, MemoryHistory()):
        predictor = Predictor(history, "p90", RESOURCES)
        assert predictor.exec_s("f", "small", 100) is None
        assert predictor.output_bytes("f", "small") is None
        assert predictor.transfer_s(100, "small", "large") is None
        assert predictor.startup_s("small", cold=True) is None
        assert predictor.invoke_s("small") is None
        assert not predictor.knows("f")


def test_unknown_resource_config_is_named_in_the_error() -> None:
    predictor = Predictor(exec_samples("f", "small", [1.0]), "p50", RESOURCES)
    with pytest.raises(ValueError, match="unknown resource config 'tiny'; known: small"):
        predictor.exec_s("f", "tiny")
