"""Translation: aliases cost nothing, data stays data, bad graphs fail before running."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
from dask._task_spec import Alias, DataNode, Task, TaskRef

from dask_kong.dag import to_dag
from dask_kong.dag.translate import translate
from dask_kong.gc_pause import paused_gc


def inc(v: int) -> int:
    return v + 1


def add(a: int, b: int) -> int:
    return a + b


def test_aliases_collapse_into_key_aliases() -> None:
    dsk = {
        "x": DataNode("x", 1),
        "y": Task("y", inc, TaskRef("x")),
        "a1": Alias("a1", "y"),
        "a2": Alias("a2", "a1"),
        "z": Task("z", add, TaskRef("a2"), TaskRef("y")),
    }
    dag = to_dag(dsk, ["z", "a2"])
    assert dag.keys == ("y", "z")  # aliases are not tasks
    z = dag.keys.index("z")
    assert dag.parents[z] == (dag.keys.index("y"),)  # a2 and y are one parent
    assert {o.key: o.task for o in dag.outputs} == {"z": z, "a2": dag.keys.index("y")}


def test_sum_split_every_2_aliases_cost_no_tasks() -> None:
    x = da.ones(1024, chunks=1).sum(split_every=2)
    (graph,) = [dict(x.__dask_graph__())]
    dag = to_dag(graph, x.__dask_keys__())
    non_alias = [k for k, v in graph.items() if not isinstance(v, (Alias, DataNode))]
    assert len(dag) <= len(non_alias)


def test_data_nodes_are_data_not_tasks() -> None:
    dsk = {"x": DataNode("x", 41), "y": Task("y", inc, TaskRef("x"))}
    dag = to_dag(dsk, "y")
    assert dag.keys == ("y",)
    assert list(dag.data.values()) == [41]
    assert dag.roots == (0,)


def test_large_constants_are_lifted_out_of_tasks() -> None:
    big = np.ones(100_000)
    dsk = {"y": Task("y", np.sum, big)}
    dag = to_dag(dsk, "y", constant_bytes=1024)
    assert any(v is big for v in dag.data.values())
    assert dag.nodes[0].dependencies  # the task now reads the constant by reference
    assert dsk["y"].args[0] is big  # the caller's task is untouched


def test_cycle_raises_naming_a_key_on_it() -> None:
    dsk = {"a": (inc, "c"), "b": (inc, "a"), "c": (inc, "b"), "d": (inc, "c")}
    with pytest.raises(ValueError, match=r"cycle.*'[abc]'"):
        to_dag(dsk, "d")


def test_missing_dependency_raises_naming_it() -> None:
    dsk = {"y": Task("y", inc, TaskRef("nope"))}
    with pytest.raises(ValueError, match="missing dependency 'nope' of task 'y'"):
        to_dag(dsk, "y")


def test_missing_requested_key_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="absent"):
        to_dag({"x": (inc, 1)}, "absent")


def test_translation_is_repeatable_and_does_not_mutate_the_graph() -> None:
    x = da.random.default_rng(0).random((40, 40), chunks=10)
    y = (x @ x.T).sum(split_every=2)
    graph = dict(y.__dask_graph__())
    snapshot = copy.copy(graph)
    first = to_dag(graph, y.__dask_keys__())
    second = to_dag(graph, y.__dask_keys__())
    assert graph == snapshot and all(graph[k] is snapshot[k] for k in graph)
    assert first.keys == second.keys and first.parents == second.parents
    assert first.shape_hash == second.shape_hash


def test_shape_hash_ignores_data_but_not_structure() -> None:
    def build(seed: int, n: int) -> str:
        x = da.random.default_rng(seed).random(n * 10, chunks=10).sum(split_every=2)
        return to_dag(x.__dask_graph__(), x.__dask_keys__()).shape_hash

    assert build(1, 16) == build(2, 16)
    assert build(1, 16) != build(1, 32)


def test_visualize_style_access_before_compute_changes_nothing() -> None:
    # The predecessor broke when the graph was walked twice (visualize, then compute).
    x = da.ones((20, 20), chunks=5).sum()
    graph = x.__dask_graph__()
    to_dag(graph, x.__dask_keys__())
    assert x.compute(scheduler="sync") == dask.compute(x, scheduler="sync")[0] == 400


# Two paths from "a" to "end": one of three tasks, one of two.
LONG_AND_SHORT = {
    "a": (inc, 1),
    "long-1": (inc, "a"),
    "long-2": (inc, "long-1"),
    "short": (inc, "a"),
    "end": (add, "long-2", "short"),
}


def test_heights_count_the_longest_chain_to_a_sink() -> None:
    dag = to_dag(LONG_AND_SHORT, "end")
    heights = {dag.keys[t]: h for t, h in enumerate(dag.heights)}
    assert heights == {"a": 4, "long-1": 3, "long-2": 2, "short": 2, "end": 1}


def test_successors_count_what_waits_on_a_task_along_every_path() -> None:
    dsk = {
        **LONG_AND_SHORT,
        "gate": (inc, 2),
        **{f"wait-{i}": (add, "gate", i) for i in range(5)},
    }
    dag = to_dag(dsk, ["end", *(f"wait-{i}" for i in range(5))])
    successors = {dag.keys[t]: n for t, n in enumerate(dag.successors)}
    # "end" is reached from "a" along two paths and counted twice
    assert successors == {
        "a": 5,
        "long-1": 2,
        "long-2": 1,
        "short": 1,
        "end": 0,
        "gate": 5,
        **{f"wait-{i}": 0 for i in range(5)},
    }


def test_successor_counts_are_capped_at_the_number_of_tasks() -> None:
    """A ladder of diamonds doubles the paths at every rung: the count stops at len(dag)."""
    dsk: dict[str, object] = {"r0": (inc, 1)}
    for i in range(1, 30):
        dsk[f"x{i}"] = (inc, f"r{i - 1}")
        dsk[f"y{i}"] = (inc, f"r{i - 1}")
        dsk[f"r{i}"] = (add, f"x{i}", f"y{i}")
    dag = to_dag(dsk, "r29")
    assert dag.successors[dag.index_of("r0")] == len(dag)
    assert dag.successors[dag.index_of("r28")] == 4  # r29 along both x29 and y29


TRANSLATE_KEYS = """
import dask, dask.array as da
from dask_kong import Kong, last_run
x = da.random.default_rng(7).random((400, 10), chunks=(50, 10))
with Kong() as session:
    dask.compute(*da.linalg.svd(x), scheduler=session.get)
dag = last_run().dag
# names without their tokens: dask names the finalize tasks of a compute at random
names = [(k[0].split("-")[0], *k[1:]) if isinstance(k, tuple) else k.split("-")[0]
         for k in dag.keys]
print(repr([names, dag.parents]))
"""


def test_task_numbers_do_not_depend_on_the_hash_seed() -> None:
    """Planners break ties by task number: the numbering must be the same in every
    interpreter, whatever order its hash seed gives sets of keys."""
    outputs = {
        subprocess.run(
            [sys.executable, "-c", TRANSLATE_KEYS],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert len(outputs) == 1 and "getitem" in outputs.pop()


def test_translation_pauses_the_collector_and_gives_it_back() -> None:
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), paused_gc():
        assert not gc.isenabled()
        1 / 0  # noqa: B018
    assert gc.isenabled()  # restored despite the error
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()
    dsk = {"a": (inc, 1), "b": (inc, "a")}
    translate(dsk, ["b"])
    assert gc.isenabled()
