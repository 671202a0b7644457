"""dask's own diagnostics on kong: Profiler, CacheProfiler, ResourceProfiler and
ProgressBar on every kind of collection, fed from the workers' start and finish events,
so a Profiler measures how long each task really ran."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest
from dask.callbacks import Callback
from dask.diagnostics import CacheProfiler, Profiler, ProgressBar, ResourceProfiler
from dask.sizeof import sizeof

from dask_kong import Kong
from dask_kong.options import UnsupportedOptionWarning, forget_warnings

NAP_S = 0.3


def nap(x: int) -> int:
    time.sleep(NAP_S)
    return x


@contextlib.contextmanager
def posttask_warning_if(expected: bool) -> Iterator[None]:
    """Expect the one warning that posttask results are not available (processes)."""
    forget_warnings()
    if not expected:
        yield
        return
    with pytest.warns(UnsupportedOptionWarning, match="posttask callbacks get None"):
        yield


def collections() -> dict[str, object]:
    frame = dd.from_pandas(pd.DataFrame({"a": range(8), "b": range(8)}), npartitions=2)
    return {
        "array": da.ones((40, 40), chunks=20).sum(),
        "bag": db.from_sequence(range(8), npartitions=2).map(lambda v: v + 1).sum(),
        "dataframe": frame.groupby("a").b.sum(),
        "delayed": dask.delayed(sum)([dask.delayed(nap)(1), 2]),
    }


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_dask_diagnostics_work_on_every_collection(
    kong_sessions: Callable[[str], Kong], mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = kong_sessions(mode)
    for name, collection in collections().items():
        prof, cache, res = Profiler(), CacheProfiler(), ResourceProfiler(dt=0.05)
        with prof, cache, res, ProgressBar(), posttask_warning_if(mode == "processes"):
            dask.compute(collection, scheduler=session.get)
        assert prof.results, name
        assert cache.results, name
        assert res.results, name
        assert "100% Completed" in capsys.readouterr().out, name


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_profiler_measures_a_task_from_its_real_start(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    """pretask fires when the worker starts the task, not when the client learns it
    finished: the profiled duration of a 0.3 s task is about 0.3 s, not about 0."""
    session = kong_sessions(mode)
    task = dask.delayed(nap, pure=False)(1)
    with Profiler() as prof:
        dask.compute(dask.delayed(sum)([task, 1]), scheduler=session.get)
    durations = {r.key: r.end_time - r.start_time for r in prof.results}
    assert NAP_S * 0.8 <= durations[task.key] <= NAP_S + 2.0


class Results(Callback):
    """Records what `posttask` is given, by key."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.results: dict[Any, Any] = {}

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
        self.results[key] = result


def double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("mode", ["embedded", "threads-redis"])
def test_posttask_gets_each_result_on_the_threads_backend(
    kong_sessions: Callable[[str], Kong], mode: str
) -> None:
    """As under dask's local schedulers, posttask gets the task's value, intermediate
    ones too (they never left the worker thread): a CacheProfiler sized by nbytes
    measures each array chunk, and nothing warns."""
    session = kong_sessions(mode)
    first = dask.delayed(double, pure=False)(3)
    second = dask.delayed(double, pure=False)(first)
    array = da.ones((40, 40), chunks=20) + 1
    forget_warnings()
    with Results() as seen, CacheProfiler(metric=sizeof) as cache:
        assert dask.compute(second, array, scheduler=session.get)[0] == 12
    assert seen.results[first.key] == 6 and seen.results[second.key] == 12
    chunk_sizes = {r.metric for r in cache.results if r.key[0] == array.name}
    assert chunk_sizes == {sizeof(np.ones((20, 20)))}


def test_posttask_result_missing_in_worker_processes_warns_once(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """A worker process keeps its values: posttask gets None, with one warning naming
    it; the Profiler, which never reads the result, is not warned about."""
    session = kong_sessions("processes")
    task = dask.delayed(double, pure=False)(3)
    forget_warnings()
    with Profiler() as prof:  # no warning: Profiler ignores the result
        assert dask.compute(task, scheduler=session.get)[0] == 6
    assert prof.results
    with (
        pytest.warns(UnsupportedOptionWarning, match="posttask callbacks get None") as caught,
        Results() as seen,
    ):
        dask.compute([task, dask.delayed(double)(task)], scheduler=session.get)
    assert seen.results[task.key] is None
    assert len([w for w in caught if "posttask" in str(w.message)]) == 1
