"""The WUKONG coordination rules, checked directly and on random DAGs against sync."""

from __future__ import annotations

import collections
import pickle
import random
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dask
import pytest
from dask.utils_test import GetFunctionTestMixin

from dask_kong import Kong, kong_get, last_run
from dask_kong.store.base import FanIn
from dask_kong.store.memory import MemoryStore

if TYPE_CHECKING:
    from dask_kong.dag import DAG
    from dask_kong.planning.plan import Plan, PlanningContext


class TestKongGetContract(GetFunctionTestMixin):
    """dask's own contract for a `get` function."""

    get = staticmethod(kong_get)


def test_fan_in_is_ready_exactly_once_with_duplicate_reports() -> None:
    store = MemoryStore()
    store.open_run("r")
    marks = [FanIn(9, 1, 3), FanIn(9, 1, 3), FanIn(9, 2, 3), FanIn(9, 2, 3)]
    assert store.commit("r", {}, marks).ready == []  # 2 distinct parents of 3
    assert store.commit("r", {}, [FanIn(9, 3, 3)]).ready == [9]
    assert store.commit("r", {}, [FanIn(9, 3, 3), FanIn(9, 1, 3)]).ready == []


def test_fan_in_under_concurrent_duplicate_reports_readies_once() -> None:
    store = MemoryStore()
    store.open_run("r")
    ready: list[int] = []
    lock = threading.Lock()

    def report(parent: int) -> None:
        for _ in range(50):
            got = store.commit("r", {}, [FanIn(0, parent, 8)]).ready
            with lock:
                ready.extend(got)

    threads = [threading.Thread(target=report, args=(p % 8,)) for p in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ready == [0]


def test_output_is_written_before_fan_in_is_marked() -> None:
    store = MemoryStore()
    store.open_run("r")
    result = store.commit("r", {"out:1": "v"}, [FanIn(5, 1, 1)])
    assert result.ready == [5] and store.exists("r", "out:1")


def inc(v: int) -> int:
    return v + 1


def test_linear_chain_stays_in_one_worker_and_writes_only_the_output() -> None:
    dsk: dict[str, Any] = {f"x{i}": (inc, f"x{i - 1}") for i in range(1, 200)}
    dsk["x0"] = (inc, 0)
    with Kong() as session:
        assert session.get(dsk, "x199") == 200
    summary = last_run()
    assert summary is not None
    assert summary.workers == summary.branches == summary.invocations == 1
    # nothing came back from the store but the output, to the client
    assert summary.bytes_read == summary.client_bytes_read < 1000
    assert 0 < summary.bytes_written < 1000  # only the requested output


def test_naive_planner_invokes_every_dependent_and_writes_everything() -> None:
    dsk: dict[str, Any] = {f"x{i}": (inc, f"x{i - 1}") for i in range(1, 20)}
    dsk["x0"] = (inc, 0)
    with Kong(planner="naive") as session:
        assert session.get(dsk, "x19") == 20
    summary = last_run()
    assert summary is not None and summary.planner == "naive"
    assert summary.invocations == summary.branches == 20
    # a few pool threads, each warm, served the 20 invocations
    concurrency = session.backend.concurrency()
    assert concurrency is not None
    assert 1 <= summary.workers <= concurrency


def test_last_run_reports_the_fields_users_read(kong: Kong) -> None:
    dsk = {"a": (inc, 1), "b": (inc, 1), "c": (sum, ["a", "b"])}
    assert kong.get(dsk, "c") == 4
    summary = last_run()
    assert summary is not None
    fields = summary.as_dict()
    for name in (
        "run_id",
        "tasks",
        "workers",
        "invocations",
        "makespan_s",
        "bytes_written",
        "bytes_read",
        "planner",
    ):
        assert name in fields
    assert summary.tasks == 3 and summary.invocations == summary.branches == 2
    assert 1 <= summary.workers <= 2  # the second invocation may find the first warm
    assert summary.makespan_s > 0


def random_graph(seed: int) -> tuple[dict[str, Any], list[str]]:
    """A random DAG with random fan-ins and fan-outs, some data nodes and aliases."""
    rng = random.Random(seed)
    n = rng.randint(1, 60)
    dsk: dict[str, Any] = {}
    for i in range(n):
        kind = rng.random()
        earlier = [f"t{j}" for j in range(i)]
        if not earlier or kind < 0.1:
            dsk[f"t{i}"] = rng.randint(0, 9)  # data
        elif kind < 0.15:
            dsk[f"t{i}"] = rng.choice(earlier)  # alias
        else:
            parents = rng.sample(earlier, min(len(earlier), rng.randint(1, 4)))
            dsk[f"t{i}"] = (combine, i, *parents)
    wanted = rng.sample(sorted(dsk), rng.randint(1, min(4, n)))
    return dsk, wanted


def combine(i: int, *values: int) -> int:
    return (i + 7 * sum(values)) % 100_003


# Seeds per mode: every seed is a full run; worker processes make a run cost ~20 ms.
RANDOM_SEEDS = {"embedded": 300, "threads-redis": 100, "processes": 60}


@pytest.mark.parametrize("planner", ["wukong", "naive"])
def test_random_dags_match_sync(kong: Kong, planner: str) -> None:
    mode = next(m for m in RANDOM_SEEDS if kong is kong_for(kong, m))
    for seed in range(RANDOM_SEEDS[mode]):
        dsk, wanted = random_graph(seed)
        expected = dask.get(dsk, wanted)
        assert kong.get(dsk, wanted, planner=planner) == expected, f"seed {seed}"
        assert kong.store.run_keys(kong.last_run_id or "") == [], f"keys left, seed {seed}"


def kong_for(kong: Kong, mode: str) -> Kong | None:
    """`kong` when it is the session of `mode` (by its backend and store)."""
    backend = {"embedded": "threads", "threads-redis": "threads", "processes": "processes"}
    memory = kong.store_spec == "memory"
    if backend[mode] != kong.backend_name or (mode == "embedded") != memory:
        return None
    return kong


def test_kong_is_dask_scheduler_inside_its_context() -> None:
    x = dask.delayed(inc)(1)
    with Kong():
        assert x.compute() == 2
        assert last_run() is not None
    assert dask.config.get("scheduler", None) is None


def test_config_selects_the_planner_via_dask_config() -> None:
    with dask.config.set({"kong.planner": "naive", "scheduler": kong_get}):
        assert dask.delayed(inc)(1).compute() == 2
    summary = last_run()
    assert summary is not None and summary.planner == "naive"


def test_progress_bar_sees_every_task(capsys: pytest.CaptureFixture[str]) -> None:
    from dask.diagnostics import ProgressBar

    dsk: dict[str, Any] = {f"x{i}": (inc, i) for i in range(30)}
    dsk["total"] = (sum, [f"x{i}" for i in range(30)])
    with Kong() as session, ProgressBar(minimum=0, dt=0.01):
        assert session.get(dsk, "total") == sum(range(1, 31))
    assert "100%" in capsys.readouterr().out


# Recomputation off: it would publish these small outputs as recipes, and neither
# clustering nor delayed I/O applies to a recipe.
NO_RECOMPUTE = {"kong.wukong.recompute_bytes_per_s": 0}
WUKONG_EVERYWHERE = {
    "kong.wukong.cluster_bytes": 0,
    "kong.wukong.delay_io_bytes": 0,
    "kong.wukong.delay_io_wait_s": 0.02,
    **NO_RECOMPUTE,
}
# Every output with small inputs becomes a recipe: any time counts as cheaper than moving.
RECOMPUTE_EVERYWHERE = {
    "kong.wukong.recompute_min_bytes": 0,
    "kong.wukong.recompute_bytes_per_s": 1e-9,
    "kong.wukong.recompute_input_fraction": 1e9,
}


def test_random_dags_match_sync_with_clustering_and_delayed_io_everywhere(kong: Kong) -> None:
    """Thresholds at zero: every output is 'large', so every task clusters and delays."""
    mode = next(m for m in RANDOM_SEEDS if kong is kong_for(kong, m))
    with dask.config.set(WUKONG_EVERYWHERE):
        for seed in range(RANDOM_SEEDS[mode] // 2):
            dsk, wanted = random_graph(seed)
            assert kong.get(dsk, wanted) == dask.get(dsk, wanted), f"seed {seed}"
            assert kong.store.run_keys(kong.last_run_id or "") == []


def make_block(n: int) -> list[int]:
    return list(range(n))


def part(block: list[int], i: int) -> int:
    return sum(block[i::4])


def combine_parts(*parts: int) -> int:
    return sum(parts)


def test_clustering_keeps_dependents_of_a_large_output_in_its_worker(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("threads-redis")
    dsk: dict[str, Any] = {"block": (make_block, 50_000)}
    dsk.update({f"p{i}": (part, "block", i) for i in range(4)})
    dsk["total"] = (combine_parts, *(f"p{i}" for i in range(4)))
    expected = sum(range(50_000))
    with dask.config.set({"kong.wukong.cluster_bytes": 1024, **NO_RECOMPUTE}):
        assert session.get(dsk, "total") == expected
    clustered = last_run()
    with dask.config.set({"kong.wukong.cluster_bytes": 10**12, **NO_RECOMPUTE}):
        assert session.get(dsk, "total") == expected
    spread = last_run()
    assert clustered is not None and spread is not None
    assert clustered.invocations == clustered.branches == clustered.workers == 1
    assert spread.invocations == 4  # the block travelled to three more workers
    assert clustered.bytes_read < spread.bytes_read


def test_random_dags_match_sync_with_recompute_everywhere(kong: Kong) -> None:
    """Every output published as a recipe where it can be: readers rerun the task."""
    mode = next(m for m in RANDOM_SEEDS if kong is kong_for(kong, m))
    with dask.config.set(RECOMPUTE_EVERYWHERE):
        for seed in range(RANDOM_SEEDS[mode] // 2):
            dsk, wanted = random_graph(seed)
            assert kong.get(dsk, wanted) == dask.get(dsk, wanted), f"seed {seed}"
            assert kong.store.run_keys(kong.last_run_id or "") == []


BLOCK_CALLS: collections.Counter[str] = collections.Counter()


def counted_block(n: int, tag: str) -> list[int]:
    BLOCK_CALLS[tag] += 1  # a module global: worker threads share it, pickles do not copy it
    return list(range(n))


def test_recompute_publishes_a_cheap_large_output_as_a_recipe(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """A block that is quick to draw and large to move is published as its inputs: the
    fan-in reader reruns it, and far fewer bytes go through the store."""
    session = kong_sessions("threads-redis")

    def graph(tag: str) -> dict[str, Any]:
        dsk: dict[str, Any] = {"block": (counted_block, 200_000, tag)}
        dsk.update({f"p{i}": (part, "block", i) for i in range(4)})
        dsk["total"] = (combine_parts, *(f"p{i}" for i in range(4)))
        return dsk

    expected = sum(range(200_000))
    cheap = {"kong.wukong.recompute_bytes_per_s": 1e-9, "kong.wukong.cluster_bytes": 10**12}
    with dask.config.set(cheap):
        assert session.get(graph("recomputed"), "total") == expected
    recomputed = last_run()
    with dask.config.set({**NO_RECOMPUTE, "kong.wukong.cluster_bytes": 10**12}):
        assert session.get(graph("moved"), "total") == expected
    moved = last_run()
    assert recomputed is not None and moved is not None
    # once, then once in each of the three workers invoked for p1..p3
    assert BLOCK_CALLS["moved"] == 1 and BLOCK_CALLS["recomputed"] == 4
    assert recomputed.bytes_read + recomputed.bytes_written < 100_000
    assert moved.bytes_read > 2_000_000  # its ~870 KB pickle travelled to three workers
    rebuilt = [m.recompute_s for m in recomputed.task_metrics.values() if m.recompute_s > 0]
    assert len(rebuilt) == 3


def doubled(block: list[int]) -> list[int]:
    return [2 * v for v in block]


def test_a_recipe_built_from_a_recomputed_input_carries_that_input_as_a_recipe(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """`doubled` reads a block the worker got cheaply: its recipe holds the block's
    recipe, not the block's ~870 KB, and each of the three invoked readers reruns both."""
    session = kong_sessions("threads-redis")
    dsk: dict[str, Any] = {
        "block": (counted_block, 200_000, "nested"),
        "doubled": (doubled, "block"),
    }
    dsk.update({f"p{i}": (part, "doubled", i) for i in range(4)})
    dsk["total"] = (combine_parts, *(f"p{i}" for i in range(4)))
    cheap = {"kong.wukong.recompute_bytes_per_s": 1e-9, "kong.wukong.cluster_bytes": 10**12}
    with dask.config.set(cheap):
        assert session.get(dsk, "total") == 2 * sum(range(200_000))
    summary = last_run()
    assert summary is not None and summary.invocations == 4
    assert BLOCK_CALLS["nested"] == 4  # once, then once in each invoked reader
    assert summary.bytes_read + summary.bytes_written < 100_000


def test_recompute_is_off_for_slow_tasks_and_in_process(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """The default rate: a block that took 0.3 s to make moves rather than reruns; and
    the embedded store never recomputes (a write there is free)."""
    dsk: dict[str, Any] = {"block": (slow_block, 200_000, 0.3)}
    dsk.update({f"p{i}": (part, "block", i) for i in range(4)})
    dsk["total"] = (combine_parts, *(f"p{i}" for i in range(4)))
    for mode in ("threads-redis", "embedded"):
        session = kong_sessions(mode)
        with dask.config.set({"kong.wukong.cluster_bytes": 10**12}):
            assert session.get(dsk, "total") == sum(range(200_000))
        summary = last_run()
        assert summary is not None
        assert all(m.recompute_s == 0 for m in summary.task_metrics.values()), mode


def slow_block(n: int, delay: float) -> list[int]:
    import time as _time

    _time.sleep(delay)
    return list(range(n))


def joined_blocks(first: tuple[int, float], second: tuple[int, float]) -> dict[str, Any]:
    """Two blocks of (length, seconds to make) and a join of their lengths."""
    return {
        "first": (slow_block, *first),
        "second": (slow_block, *second),
        "join": (lambda a, b: len(a) + len(b), "first", "second"),
    }


def delayed_io_over_100_kb(wait_s: float) -> dict[str, Any]:
    """Delayed I/O for outputs over 100 KB, waiting `wait_s`; no recomputation."""
    return {
        "kong.wukong.delay_io_bytes": 100_000,
        "kong.wukong.delay_io_wait_s": wait_s,
        **NO_RECOMPUTE,
    }


def test_delayed_io_completes_a_fan_in_without_writing_the_large_output(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("threads-redis")
    # The big "first" finishes first and waits; "second" finishes later and marks;
    # "first" completes the fan-in and runs "join": its 400 KB never go to the store.
    dsk = joined_blocks((50_000, 0.0), (10, 0.2))
    with dask.config.set(delayed_io_over_100_kb(2.0)):
        assert session.get(dsk, "join") == 50_010
    delayed = last_run()
    with dask.config.set({"kong.wukong.delay_io_bytes": 10**12, **NO_RECOMPUTE}):
        assert session.get(dsk, "join") == 50_010
    eager = last_run()
    assert delayed is not None and eager is not None
    assert delayed.bytes_written < 10_000 < eager.bytes_written


def test_last_parent_of_a_fan_in_completes_it_without_writing(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """Two large parents: the first claims delayed I/O, gives up waiting, writes and
    marks; the second finds itself the last one missing, marks without writing and
    runs the join: one block goes through the store, not two."""
    session = kong_sessions("threads-redis")
    dsk = joined_blocks((50_000, 0.0), (50_000, 0.3))
    with dask.config.set(delayed_io_over_100_kb(0.01)):
        assert session.get(dsk, "join") == 100_000
    summary = last_run()
    assert summary is not None
    block = len(pickle.dumps(list(range(50_000))))  # what the store holds of one block
    assert 0.9 * block < summary.bytes_written < 1.5 * block


def plan_every_optimization(dag: DAG, context: PlanningContext) -> Plan:
    """wukong plus pre-load and task-dup on every task: the runtime must stay correct."""
    from dataclasses import replace

    from dask_kong.planning import Optimization
    from dask_kong.planning.planners import plan_wukong

    plan = plan_wukong(dag, context)
    if not plan.tasks:
        return plan
    extra = {Optimization.PRELOAD, Optimization.TASK_DUP}
    task = replace(plan.tasks[0], optimizations=plan.tasks[0].optimizations | extra)
    return replace(plan, planner="everything", tasks=(task,) * len(dag))


def test_random_dags_match_sync_with_preload_and_task_dup_everywhere(
    kong: Kong, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dask_kong.planning import PLANNERS

    monkeypatch.setitem(PLANNERS, "everything", plan_every_optimization)
    mode = next(m for m in RANDOM_SEEDS if kong is kong_for(kong, m))
    with dask.config.set(WUKONG_EVERYWHERE):
        for seed in range(RANDOM_SEEDS[mode] // 2):
            dsk, wanted = random_graph(seed)
            got = kong.get(dsk, wanted, planner="everything")
            assert got == dask.get(dsk, wanted), f"seed {seed}"
            assert kong.store.run_keys(kong.last_run_id or "") == []


def test_task_dup_recomputes_a_slow_parent_while_waiting(
    kong_sessions: Callable[[str], Kong], monkeypatch: pytest.MonkeyPatch
) -> None:
    from dask_kong.planning import PLANNERS

    monkeypatch.setitem(PLANNERS, "everything", plan_every_optimization)
    session = kong_sessions("threads-redis")
    calls: list[str] = []

    def slow_then_fast(name: str, delay: float) -> str:
        calls.append(name)
        if calls.count(name) == 1:  # the first (original) run is slow, a duplicate is not
            time.sleep(delay)
        return name

    # "big" waits on the fan-in of "join" (delayed I/O); "late" would take 1.5 s: the
    # waiting worker recomputes it instead, so "join" finishes long before "late" does.
    joined_at: list[float] = []

    def join(a: list[int], b: str) -> tuple[int, str]:
        joined_at.append(time.monotonic())
        return len(a), b

    # "big" takes 0.2 s, so the original "late" has surely started (and made the first,
    # slow call) before "big" waits at the join and duplicates it.
    dsk = {
        "big": (slow_block, 50_000, 0.2),
        "late": (slow_then_fast, "slow-one", 1.5),
        "join": (join, "big", "late"),
    }
    settings = {
        "kong.wukong.delay_io_bytes": 1000,
        "kong.wukong.delay_io_wait_s": 3.0,
        **NO_RECOMPUTE,
    }
    started = time.monotonic()
    with dask.config.set(settings):
        assert session.get(dsk, "join", planner="everything") == (50_000, "slow-one")
    assert calls.count("slow-one") == 2  # the original and the duplicate
    assert joined_at[0] - started < 1.0  # did not wait for the original's 1.5 s


def test_environment_variables_configure_kong() -> None:
    import os
    import subprocess
    import sys

    code = (
        "import dask, dask_kong\n"
        "print(dask.config.get('kong.planner'), dask.config.get('kong.store.url'))\n"
        "print(dask.config.get('kong.run.stall_timeout_s'))"
    )
    env = dict(
        os.environ,
        DASK_KONG__PLANNER="naive",
        DASK_KONG__STORE__URL="redis://example.invalid:6379/0",
        DASK_KONG__RUN__STALL_TIMEOUT_S="7",
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["naive", "redis://example.invalid:6379/0", "7"]


def test_events_that_ride_in_a_commit_still_report_written_bytes(kong: Kong) -> None:
    # Every leaf writes its output for the fan-in and ends its branch: its completion
    # event travels in that same commit, with the written size stamped by the store.
    dsk: dict[str, Any] = {f"leaf{i}": (inc, i) for i in range(8)}
    dsk.update({f"pair{i}": (sum, [f"leaf{2 * i}", f"leaf{2 * i + 1}"]) for i in range(4)})
    dsk["total"] = (sum, [f"pair{i}" for i in range(4)])
    assert kong.get(dsk, "total") == sum(range(1, 9))
    summary = last_run()
    assert summary is not None and len(summary.task_metrics) == 13
    leaves = [t for t, key in enumerate(summary.dag.keys) if str(key).startswith("leaf")]
    assert all(summary.task_metrics[t].written_bytes > 0 for t in leaves)
    assert summary.bytes_written >= sum(summary.task_metrics[t].written_bytes for t in leaves)


def test_embedded_store_releases_outputs_once_their_readers_are_done() -> None:
    # A ladder: step i has two tasks, each reading both tasks of step i-1 (fan-ins, so
    # every output is written). With release, the store holds a few steps, not all 40.
    counted: list[int] = []

    def step(*_: int) -> int:
        time.sleep(0.05)  # leave the client time to read progress events
        return 1

    with Kong(workers=2) as session:

        def count_stored(*_: int) -> int:
            counted.append(len(session.store._runs[session.last_run_id].values))  # type: ignore[attr-defined]
            return 0

        dsk: dict[str, Any] = {"a0": (step,), "b0": (step,)}
        for i in range(1, 20):
            dsk[f"a{i}"] = (step, f"a{i - 1}", f"b{i - 1}")
            dsk[f"b{i}"] = (step, f"a{i - 1}", f"b{i - 1}")
        dsk["end"] = (count_stored, "a19", "b19")
        assert session.get(dsk, "end") == 0
    # Release lags the run by the event batching (a few steps); without it: all 40.
    assert counted and counted[0] <= 16, counted


RAN: list[str] = []


def noted(name: str, *values: int) -> int:
    RAN.append(name)
    return sum(values)


def test_the_thread_pool_starts_the_most_urgent_queued_invocation_first() -> None:
    """One worker thread, two roots queued at once: the one ten tasks wait on starts
    before the one heading a longer chain, which the client invoked first."""
    dsk: dict[str, Any] = {"chain-0": (noted, "ran chain-0")}
    for i in range(1, 6):
        dsk[f"chain-{i}"] = (noted, f"ran chain-{i}", f"chain-{i - 1}")
    dsk["gate"] = (noted, "ran gate")
    for i in range(10):
        dsk[f"leaf-{i}"] = (noted, f"ran leaf-{i}", "gate")
    keys = ["chain-5", *(f"leaf-{i}" for i in range(10))]
    RAN.clear()
    unbatched = {"kong.planning.subtree_units_per_slot": 0}
    with dask.config.set(unbatched), Kong(workers=1) as session:
        session.get(dsk, keys)
    assert RAN[0] == "ran gate"
    assert RAN.index("ran chain-0") > RAN.index("ran gate")
