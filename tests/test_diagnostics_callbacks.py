"""dask's own diagnostics on kong: Profiler, CacheProfiler, ResourceProfiler and
ProgressBar on every kind of collection, fed from the workers' start and finish events,
so a Profiler measures how long each task really ran."""

from __future__ import annotations

import time
from collections.abc import Callable

import dask
import dask.array as da
import dask.bag as db
import dask.dataframe as dd
import pandas as pd
import pytest
from dask.diagnostics import CacheProfiler, Profiler, ProgressBar, ResourceProfiler

from dask_kong import Kong

NAP_S = 0.3


def nap(x: int) -> int:
    time.sleep(NAP_S)
    return x


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
        with prof, cache, res, ProgressBar():
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
