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
