"""dask.annotate and dask.compute keywords: priority orders a bounded backend's queue,
resources pick a resource config, everything else warns once by name."""

from __future__ import annotations

import threading
from collections.abc import Callable

import dask
import dask.array as da
import pytest

from dask_kong import Kong, last_run
from dask_kong.options import UnsupportedOptionWarning, forget_warnings

_order: list[int] = []
_order_lock = threading.Lock()


def record(i: int) -> int:
    with _order_lock:
        _order.append(i)
    return i


def test_priority_orders_the_queue_of_a_bounded_backend() -> None:
    """One worker thread, eight independent tasks: the four annotated priority=10 run
    before the four others, whatever their order in the graph."""
    _order.clear()
    tasks = []
    for i in range(8):
        with dask.annotate(priority=10 if i % 2 else 0):
            tasks.append(dask.delayed(record, pure=False)(i))
    with Kong(backend="threads", store="memory", workers=1, planner="naive") as kong:
        dask.compute(*tasks, scheduler=kong.get, optimize_graph=False)
    assert sorted(_order[:4]) == [1, 3, 5, 7] and sorted(_order[4:]) == [0, 2, 4, 6]


def test_resources_pick_the_smallest_config_that_fits(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("processes")  # configs small (2048 MB, 1 cpu), large (4096, 2)
    with dask.annotate(resources={"memory": 3 * 2**30}):
        big = da.ones(10, chunks=5) + 1
    small = da.ones(10, chunks=5) * 3
    total = (big.sum() + small.sum()).compute(scheduler=session.get, optimize_graph=False)
    assert total == 20 + 30
    summary = last_run()
    assert summary is not None and summary.plan is not None and summary.dag is not None
    by_key = {k: summary.plan.tasks[i].resource for i, k in enumerate(summary.dag.keys)}
    assert {by_key[k] for k in big.__dask_keys__()} == {"large"}
    assert {by_key[k] for k in small.__dask_keys__()} == {"small"}
    with dask.annotate(resources={"cpus": 64}):
        too_big = da.ones(4, chunks=2) + 1
    with pytest.raises(ValueError, match="no resource config offers"):
        too_big.compute(scheduler=session.get, optimize_graph=False)


def test_unhonoured_annotations_and_keywords_warn_once_by_name() -> None:
    forget_warnings()
    with dask.annotate(workers=["w1"]):
        x = da.ones(4, chunks=2) + 1
    with Kong(backend="threads", store="memory", workers=1) as kong:
        with pytest.warns(UnsupportedOptionWarning, match="'workers'"):
            x.sum().compute(scheduler=kong.get, optimize_graph=False)
        with pytest.warns(UnsupportedOptionWarning, match="'fifo_timeout'"):
            dask.compute(x, scheduler=kong.get, fifo_timeout="1s")
        gpu = pytest.warns(UnsupportedOptionWarning, match=r"resources\['GPU'\]")
        with gpu, dask.annotate(resources={"GPU": 1}):
            dask.compute(dask.delayed(record)(1), scheduler=kong.get)
        # once each: the same names again are quiet (warnings are errors in this suite)
        dask.compute(x, scheduler=kong.get, fifo_timeout="1s", optimize_graph=False)
