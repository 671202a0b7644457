"""A fast slice of dask's own tests on kong (`benchmarks.dask_suites`), on every change.

The full comparison (thousands of dask's tests, both backends) takes long and lives in
`python -m benchmarks.dask_suites`; this slice runs a few dozen of the same tests through
the same functions: bag folds and groupbys, array reductions, dataframe groupbys on the
threads backend, and a smaller mix on the processes backend (worker processes and a
private redis-server, which must all be gone when the kong run ends).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.dask_suites import SuiteResult, make_settings, run_suite

#: Test ids relative to the installed dask package (without a parameter: all of them).
#: Chosen to take well under a second each, under dask and under kong alike (so not
#: test_foldby: bags default to dask's multiprocessing scheduler, whose pool start-up
#: makes it take 3 to 9 s under dask alone).
THREADS_SLICE = [
    "bag/tests/test_bag.py::test_fold_bag",
    "bag/tests/test_bag.py::test_groupby_tasks_2[1000-20-100]",
    "bag/tests/test_bag.py::test_groupby_tasks_3",
    "bag/tests/test_bag.py::test_bag_groupby_none[synchronous-tasks]",
    "bag/tests/test_bag.py::test_distinct_with_key",
    "bag/tests/test_bag.py::test_reduction_names",
    "array/tests/test_reductions.py::test_tree_reduce_depth",
    "array/tests/test_reductions.py::test_moment",
    "array/tests/test_reductions.py::test_array_cumreduction_axis[blelloch-None-False-cumsum]",
    "array/tests/test_reductions.py::test_topk_argtopk1[4-sort-topk]",
    "array/tests/test_reductions.py::test_topk_argtopk2[1-4-argsort-argtopk]",
    "array/tests/test_reductions.py::test_quantile[True-0.75-3]",
    "array/tests/test_reductions.py::test_chunk_structure_independence[axes7-2-chunks2]",
    "array/tests/test_reductions.py::test_regres_3940[blelloch-argmax]",
    "array/tests/test_reductions.py::test_nan_reduction_warnings[nanmax-nanmax]",
    "dataframe/tests/test_groupby.py::test_full_groupby",
    "dataframe/tests/test_groupby.py::test_groupby_dir",
    "dataframe/tests/test_groupby.py::test_shuffle_aggregate_defaults",
    "dataframe/tests/test_groupby.py::test_groupby_split_out_num",
    "dataframe/tests/test_groupby.py::test_groupby_multilevel_getitem[tasks-max-3-<lambda>]",
    "dataframe/tests/test_groupby.py::test_groupby_numeric_only_true[tasks-sum]",
    "dataframe/tests/test_groupby.py::test_groupby_agg_grouper_multiple[disk-a]",
    "dataframe/tests/test_groupby.py::test_groupby_get_group[tasks-False-<lambda>0]",
    "dataframe/tests/test_groupby.py::test_groupby_cov_non_numeric_grouping_column[tasks]",
    "dataframe/tests/test_groupby.py::test_series_aggregations_multilevel[tasks-count-1-<lambda>0]",
]
PROCESSES_SLICE = [
    "bag/tests/test_bag.py::test_groupby_tasks_2[1000-20-100]",
    "bag/tests/test_bag.py::test_bag_groupby_none[synchronous-tasks]",
    "array/tests/test_reductions.py::test_tree_reduce_depth",
    "dataframe/tests/test_groupby.py::test_full_groupby",
    "dataframe/tests/test_groupby.py::test_shuffle_aggregate_defaults",
    "dataframe/tests/test_groupby.py::test_groupby_numeric_only_true[tasks-sum]",
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
    assert_kong_passes_what_dask_passes(result, at_least=27)


@pytest.mark.timeout(150)
def test_a_slice_of_dask_tests_that_pass_under_dask_pass_on_kong_processes(
    tmp_path: Path,
) -> None:
    result = run_slice("processes", PROCESSES_SLICE, tmp_path)
    assert_kong_passes_what_dask_passes(result, at_least=8)


@pytest.mark.timeout(150)
def test_persisted_chunks_pass_dasks_chunk_check_on_kong_processes(tmp_path: Path) -> None:
    """dask's `assert_eq` persists the array and reads each chunk of the graph (`.result()`
    of what persist left there: kong's `StoredValue`s on a backend with a store)."""
    result = run_slice(
        "processes", ["array/tests/test_reductions.py::test_quantile[True-0.75-3]"], tmp_path
    )
    assert_kong_passes_what_dask_passes(result, at_least=1)
