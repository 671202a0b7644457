"""A fast slice of dask's own tests on kong (`benchmarks.dask_suites`), on every change.

The full comparison (thousands of dask's tests, both backends) takes long and lives in
`python -m benchmarks.dask_suites`; this slice runs a few dozen of the same tests through
the same functions: bag folds and reductions, array reductions, dataframe groupbys on the
threads backend, and a smaller mix on the processes backend (worker processes and a
private redis-server, which must all be gone when the kong run ends).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.dask_suites import SuiteResult, make_settings, run_suite

#: Test ids relative to the installed dask package; every parameter of each runs.
THREADS_SLICE = [
    "bag/tests/test_bag.py::test_foldby",
    "bag/tests/test_bag.py::test_foldby_tree_reduction",
    "bag/tests/test_bag.py::test_topk",
    "array/tests/test_reductions.py::test_reductions_1D_nans",
    "array/tests/test_reductions.py::test_moment",
    "array/tests/test_reductions.py::test_tree_reduce_depth",
    "array/tests/test_reductions.py::test_topk_argtopk1",
    "dataframe/tests/test_groupby.py::test_full_groupby",
    "dataframe/tests/test_groupby.py::test_series_groupby",
    "dataframe/tests/test_groupby.py::test_groupby_dir",
    "dataframe/tests/test_groupby.py::test_shuffle_aggregate_defaults",
    "dataframe/tests/test_groupby.py::test_groupby_apply_tasks",
    "dataframe/tests/test_groupby.py::test_groupby_split_out_num",
    "dataframe/tests/test_groupby.py::test_series_groupby_idxmax",
]
PROCESSES_SLICE = [
    "bag/tests/test_bag.py::test_foldby",
    "bag/tests/test_bag.py::test_topk",
    "array/tests/test_reductions.py::test_tree_reduce_depth",
    "array/tests/test_reductions.py::test_moment",
    "dataframe/tests/test_groupby.py::test_full_groupby",
    "dataframe/tests/test_groupby.py::test_shuffle_aggregate_defaults",
    "dataframe/tests/test_groupby.py::test_groupby_split_out_num",
]
#: Far above what a test of the slice takes, far below the suite's own timeout.
TEST_TIMEOUT_S = 30.0


def run_slice(backend: str, targets: list[str], work_dir: Path) -> SuiteResult:
    settings = make_settings(
        backend, work_dir, timeout_s=TEST_TIMEOUT_S, budget_s=120.0, concurrent=True
    )
    return run_suite(f"ci-slice-{backend}", settings, modules=targets)


def assert_kong_passes_what_dask_passes(result: SuiteResult, at_least: int) -> None:
    """Both runs ran the slice, dask passed most of it, kong every test dask passed, and
    the kong session left no process alive."""
    assert result.note == "", result.note
    assert result.passed_dask >= at_least, [run.counts for run in result.runs]
    assert result.kong_failures == {}
    assert result.passed_both == result.passed_dask
    assert all(run.leaked_pids == [] for run in result.runs)


@pytest.mark.timeout(150)
def test_a_slice_of_dask_tests_that_pass_under_dask_pass_on_kong_threads(
    tmp_path: Path,
) -> None:
    result = run_slice("threads", THREADS_SLICE, tmp_path)
    assert_kong_passes_what_dask_passes(result, at_least=28)


@pytest.mark.timeout(150)
def test_a_slice_of_dask_tests_that_pass_under_dask_pass_on_kong_processes(
    tmp_path: Path,
) -> None:
    result = run_slice("processes", PROCESSES_SLICE, tmp_path)
    assert_kong_passes_what_dask_passes(result, at_least=8)
