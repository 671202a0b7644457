"""Smoke tests of the benchmark harness's own parts that need no dask.distributed."""

from __future__ import annotations

import os

import pytest

from benchmarks.runner import isolated_environ
from benchmarks.store_throughput import measure


def test_a_cell_cannot_leave_its_environment_to_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What dask.distributed's LocalCluster does to os.environ, undone after the cell."""
    monkeypatch.setenv("KONG_TEST_KEPT", "before")
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    with isolated_environ():
        os.environ["MALLOC_TRIM_THRESHOLD_"] = "65536"
        os.environ["KONG_TEST_KEPT"] = "changed"
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ
    assert os.environ["KONG_TEST_KEPT"] == "before"


def test_store_throughput_moves_a_block_through_a_private_redis() -> None:
    result = measure(0.5, 2)
    assert result["bytes"] == 0.5 * 2**20
    assert result["write_s"] > 0 and result["read_s"] > 0


def test_every_data_workload_runs_on_the_users_own_data_too() -> None:
    from benchmarks.workloads import resolve

    names = [spec.name for spec in resolve(None, "quick")]
    for name in ("gemm", "tsqr-svd", "svd-compressed", "tree-reduction", "dataframe-groupby"):
        assert name in names and f"{name}-data" in names
    (spec,) = resolve(["tree-reduction-data"], "quick")
    case = spec.module.build(spec.params)
    (collection,) = case.collections
    graph = dict(collection.__dask_graph__())
    assert any(getattr(node, "nbytes", 0) > 0 for node in graph.values())  # NumPy in the graph
    assert case.check([collection.compute(scheduler="sync")]) is None
