"""Subtree batching: what the planners batch, and that batched runs stay correct."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import pytest

from dask_kong import Kong, last_run
from dask_kong.dag import DAG, to_dag
from dask_kong.planning import PlanningContext, get_planner
from dask_kong.planning.subtrees import exclusive_subtrees, subtree_max_tasks

from .kong_fixtures import on_a_cluster_too, session_of
from .test_fan_in_and_runtime import RANDOM_SEEDS, combine, kong_for, random_graph


def add(*values: int) -> int:
    return sum(values)


def pairwise_tree(leaves: int) -> tuple[dict[str, Any], str]:
    """leaf-i = i, summed pairwise up to one key: 2 * leaves - 1 tasks."""
    dsk: dict[str, Any] = {f"leaf-{i}": (add, i) for i in range(leaves)}
    level = [f"leaf-{i}" for i in range(leaves)]
    height = 0
    while len(level) > 1:
        height += 1
        pairs = list(zip(level[::2], level[1::2], strict=False))
        paired = []
        for j, (a, b) in enumerate(pairs):
            dsk[f"sum-{height}-{j}"] = (add, a, b)
            paired.append(f"sum-{height}-{j}")
        level = paired + level[len(pairs) * 2 :]
    return dsk, level[0]


def random_forest(seed: int) -> tuple[dict[str, Any], list[str]]:
    """A random DAG that is mostly trees: a task reads 1-3 outputs nobody read yet,
    sometimes one already read (a shared ancestor); a few outputs are requested."""
    rng = random.Random(seed)
    dsk: dict[str, Any] = {}
    unread: list[str] = []
    for i in range(rng.randint(2, 80)):
        key = f"t{i}"
        arity = min(len(unread), rng.randint(0 if i < 4 else 1, 3))
        parents = [unread.pop(rng.randrange(len(unread))) for _ in range(arity)]
        if dsk and rng.random() < 0.1:
            parents.append(rng.choice(sorted(dsk)))
        dsk[key] = (combine, i, *parents)
        unread.append(key)
    wanted = unread + rng.sample(sorted(dsk), min(2, len(dsk)))
    return dsk, sorted(set(wanted))


def assert_valid_subtrees(dag: DAG, subtrees: dict[int, tuple[int, ...]], max_tasks: int) -> None:
    """Disjoint, within the size, ancestor-closed, and nothing leaks out of a member."""
    seen: set[int] = set()
    for top, members in subtrees.items():
        inside = set(members) | {top}
        assert 1 < len(inside) <= max_tasks
        assert not inside & seen, "subtrees overlap"
        seen |= inside
        assert list(members) == sorted(members)
        for member in members:
            assert len(dag.children[member]) == 1 and dag.children[member][0] in inside
            assert member not in dag.output_tasks
        for task in inside:
            assert set(dag.parents[task]) <= inside, "a subtree reads from outside"


def test_a_pairwise_tree_is_cut_into_few_disjoint_subtrees() -> None:
    dsk, root = pairwise_tree(512)
    dag = to_dag(dsk, [root])
    subtrees = exclusive_subtrees(dag, 70)
    assert_valid_subtrees(dag, subtrees, 70)
    # 8 subtrees of 64 leaves (127 tasks) do not fit 70: 16 of 32 leaves (63 tasks) do
    assert len(subtrees) == 16
    assert sum(len(m) + 1 for m in subtrees.values()) == 16 * 63


def test_shared_and_requested_ancestors_are_never_members() -> None:
    dsk = {
        "a": (add, 1),
        "b": (add, 2),
        "shared": (add, 3),
        "x": (add, "a", "shared"),  # shared also feeds y
        "y": (add, "b", "shared"),
        "c": (add, 4),
        "d": (add, "c"),  # c is requested below
        "e": (add, "d"),
        "f": (add, 5),
        "g": (add, "f"),
    }
    dag = to_dag(dsk, ["x", "y", "e", "c", "g"])
    subtrees = exclusive_subtrees(dag, 100)
    assert_valid_subtrees(dag, subtrees, 100)
    members = {dag.keys[m] for ms in subtrees.values() for m in ms}
    assert "shared" not in members and "c" not in members
    # d's only ancestor c is requested, so neither d nor e has an exclusive subtree
    assert {dag.keys[t] for t in subtrees} == {"g"}
    assert [dag.keys[m] for m in subtrees[dag.index_of("g")]] == ["f"]


def test_only_bounded_backends_batch_and_naive_never_does() -> None:
    dsk, root = pairwise_tree(256)
    dag = to_dag(dsk, [root])
    assert subtree_max_tasks(dag, None) == 0  # AWS Lambda: a worker per root
    assert get_planner("wukong")(dag, PlanningContext(concurrency=None)).subtrees == {}
    bounded = PlanningContext(concurrency=2)
    assert get_planner("naive")(dag, bounded).subtrees == {}
    plan = get_planner("wukong")(dag, bounded)
    assert plan.subtrees and len(plan.start_tasks(dag.roots)) < len(dag.roots) // 8
    with dask.config.set({"kong.planning.subtree_units_per_slot": 0}):
        assert get_planner("wukong")(dag, bounded).subtrees == {}


@on_a_cluster_too("processes-cluster")
def test_a_5000_leaf_tree_runs_in_few_invocations_and_leaves_no_keys(kong: Kong) -> None:
    dsk, root = pairwise_tree(5000)
    assert kong.get(dsk, root) == sum(range(5000))
    summary = last_run()
    assert summary is not None and summary.tasks == 9999
    assert len(summary.task_metrics) == 9999  # every member reported done, with metrics
    assert summary.invocations < 100  # instead of 5,000 root invocations
    assert kong.store.run_keys(kong.last_run_id or "") == []


SUBTREES_EVERYWHERE = {"kong.planning.subtree_units_per_slot": 1}


@pytest.mark.parametrize("planner", ["wukong", "uniform"])
def test_random_dags_match_sync_with_large_subtrees(kong: Kong, planner: str) -> None:
    """One unit per slot: subtrees up to half the DAG, in every mode."""
    mode = next(m for m in RANDOM_SEEDS if kong is kong_for(kong, m))
    batched = 0
    with dask.config.set(SUBTREES_EVERYWHERE):
        for seed in range(RANDOM_SEEDS[mode] // 2):
            dsk, wanted = (random_forest if seed % 2 else random_graph)(seed)
            expected = dask.get(dsk, wanted)
            assert kong.get(dsk, wanted, planner=planner) == expected, f"seed {seed}"
            summary = last_run()
            assert summary is not None
            batched += bool(summary.plan.subtrees)
            assert kong.store.run_keys(kong.last_run_id or "") == [], f"keys left, seed {seed}"
    assert batched >= RANDOM_SEEDS[mode] // 8  # the forests did exercise batching


class LeafFailed(Exception):
    pass


def fail_at(value: int) -> int:
    if value == 3:
        raise LeafFailed("leaf 3 is bad")
    return value


@on_a_cluster_too("threads-cluster")
def test_a_failing_member_raises_its_own_error(kong: Kong) -> None:
    dsk, root = pairwise_tree(64)
    dsk["leaf-3"] = (fail_at, 3)
    with dask.config.set(SUBTREES_EVERYWHERE), pytest.raises(LeafFailed, match="leaf 3"):
        kong.get(dsk, root)
    assert kong.store.run_keys(kong.last_run_id or "") == []


def test_a_failing_member_stops_its_subtree() -> None:
    """Nothing after the failed member runs in its branch (the run is failing)."""
    ran: list[int] = []
    lock = threading.Lock()
    dsk: dict[str, Any] = {f"leaf-{i}": (add, i) for i in range(8)}
    dsk["top"] = (add, *[f"leaf-{i}" for i in range(8)])
    order = [k for k in to_dag(dsk, ["top"]).keys if k != "top"]
    bad = int(str(order[3]).split("-")[1])  # the fourth leaf the branch runs

    def record(value: int) -> int:
        with lock:
            ran.append(value)
        if value == bad:
            raise LeafFailed(f"leaf {value} is bad")
        return value

    dsk.update({f"leaf-{i}": (record, i) for i in range(8)})
    with (
        Kong(workers=1) as session,
        dask.config.set(SUBTREES_EVERYWHERE),
        pytest.raises(LeafFailed),
    ):
        session.get(dsk, "top")
    assert ran == [int(str(k).split("-")[1]) for k in order[:4]]


def block_matmul(
    blocks: int, root: Callable[..., int] | None = None, *extra: object, name: str = ""
) -> tuple[dict[str, Any], list[str]]:
    """C[i,j] = sum_k A[i,k] B[k,j] over `blocks` x `blocks` blocks of random draws: every
    draw feeds `blocks` products (GEMM's shape as dask.array builds it). The draws are
    `root(seed, *extra)` (default `draw`); `name` prefixes the draws' keys, so that the
    metrics history (keyed by key names) has never seen them."""
    draws = root or draw
    dsk: dict[str, Any] = {}
    for i in range(blocks):
        for k in range(blocks):
            dsk[f"{name}a-{i}-{k}"] = (draws, i * 100 + k, *extra)
            dsk[f"{name}b-{i}-{k}"] = (draws, 10_000 + i * 100 + k, *extra)
    outputs = []
    for i in range(blocks):
        for j in range(blocks):
            for k in range(blocks):
                dsk[f"p-{i}-{j}-{k}"] = (multiply, f"{name}a-{i}-{k}", f"{name}b-{k}-{j}")
            dsk[f"c-{i}-{j}"] = (add, *[f"p-{i}-{j}-{k}" for k in range(blocks)])
            outputs.append(f"c-{i}-{j}")
    return dsk, outputs


def draw(seed: int) -> int:
    return (seed * 2654435761) % 1_000_003


def multiply(a: int, b: int) -> int:
    return a * b % 1_000_003


def test_duplicable_roots_let_each_output_block_be_one_subtree() -> None:
    dsk, outputs = block_matmul(4)
    dag = to_dag(dsk, outputs)
    roots = frozenset(dag.roots)
    assert exclusive_subtrees(dag, 5) == {}  # without duplication every draw is shared
    subtrees = exclusive_subtrees(dag, 5, roots)
    assert len(subtrees) == 16 and {dag.keys[t] for t in subtrees} == set(outputs)
    for top, members in subtrees.items():
        own = [m for m in members if m not in roots]
        assert len(own) == 4 and len(members) == 12  # 4 products, 8 draws run again
        assert all(dag.children[m] == (top,) for m in own)


def test_a_duplicable_root_read_outside_every_subtree_is_not_duplicated() -> None:
    dsk, outputs = block_matmul(2)
    dsk["elsewhere"] = (add, "a-0-0", "a-0-1", "b-0-0")  # reads draws, is no block
    dag = to_dag(dsk, [*outputs, "elsewhere"])
    subtrees = exclusive_subtrees(dag, 5, frozenset(dag.roots))
    used = {dag.keys[m] for ms in subtrees.values() for m in ms}
    assert not used & {"a-0-0", "a-0-1", "b-0-0"}
    for top, members in subtrees.items():  # what is left still covers its roots
        for member in members:
            for child in dag.children[member]:
                assert child == top or child in members


def test_an_uncovered_duplicable_root_does_not_cost_the_subtrees_inside() -> None:
    """T's subtree would take in the root R, which "elsewhere" (outside every subtree)
    also reads: the cut is made again without R, and s2's own subtree still counts."""
    dsk = {
        "leaf": (add, 1),
        "s1": (add, "leaf"),
        "s2": (add, "s1"),
        "R": (add, 2),
        "c1": (add, "R"),
        "T": (add, "s2", "c1"),
        "elsewhere": (add, "R", 5),
    }
    dag = to_dag(dsk, ["T", "elsewhere"])
    subtrees = exclusive_subtrees(dag, 10, frozenset(dag.roots))
    named = {dag.keys[t]: {dag.keys[m] for m in ms} for t, ms in subtrees.items()}
    assert named == {"s2": {"leaf", "s1"}}


@pytest.mark.parametrize("mode", ["threads-redis", "processes", "processes-cluster"])
def test_roots_that_published_recipes_are_run_again_in_later_runs(
    mode: str, request: pytest.FixtureRequest
) -> None:
    """The first run learns that the draws publish recipes; the next one batches each
    output block with its draws and writes no product to the store."""
    session = session_of(request, mode)
    dsk, outputs = block_matmul(4)
    expected = dask.get(dsk, outputs)
    recipes_everywhere = {
        "kong.wukong.recompute_min_bytes": 0,
        "kong.wukong.recompute_bytes_per_s": 1e-9,
        "kong.wukong.recompute_input_fraction": 1e9,
        "kong.planning.subtree_units_per_slot": 2,
    }
    with dask.config.set(recipes_everywhere):
        for run in range(3):
            assert list(session.get(dsk, outputs)) == list(expected), f"run {run}"
            summary = last_run()
            assert summary is not None
            assert session.store.run_keys(session.last_run_id or "") == []
    assert summary is not None
    assert len(summary.plan.subtrees) == 16
    assert summary.invocations == 16
    assert not summary.plan.shared_roots  # the history knows the draws by now


def counted_draw(seed: int, path: str) -> int:
    """A draw that leaves one line in `path` each time it runs, in whatever process."""
    with open(path, "a") as f:
        f.write(f"{seed}\n")
    return (seed * 2654435761) % 1_000_003


RECIPES_EVERYWHERE = {
    "kong.wukong.recompute_min_bytes": 0,
    "kong.wukong.recompute_bytes_per_s": 1e-9,
    "kong.wukong.recompute_input_fraction": 1e9,
    "kong.planning.subtree_units_per_slot": 2,
}


@pytest.mark.parametrize("mode", ["threads-redis", "processes"])
def test_shared_roots_let_a_first_run_batch_each_output_block(
    mode: str, kong_sessions: Callable[[str], Kong]
) -> None:
    """No history yet: every draw is a shared root, each output block is still one
    invocation, and no block product crosses the store."""
    session = kong_sessions(mode)
    dsk, outputs = block_matmul(4, name=f"first-{mode}-")
    with dask.config.set(RECIPES_EVERYWHERE):
        assert list(session.get(dsk, outputs)) == list(dask.get(dsk, outputs))
    summary = last_run()
    assert summary is not None and summary.dag is not None
    dag = summary.dag
    assert summary.plan.shared_roots == frozenset(dag.roots)
    assert summary.invocations == 16
    products = [t for t, k in enumerate(dag.keys) if k.startswith("p-")]
    assert all(summary.task_metrics[t].written_bytes == 0 for t in products)
    assert session.store.run_keys(session.last_run_id or "") == []


def test_a_costly_shared_root_runs_once_and_a_cheap_one_again_where_needed(
    kong_sessions: Callable[[str], Kong], tmp_path: Path
) -> None:
    """Whoever claims a shared root runs it; the other subtrees read its value, or
    recompute it where it published a recipe."""
    session = kong_sessions("processes")
    costly = tmp_path / "costly.txt"
    dsk, outputs = block_matmul(3, counted_draw, str(costly), name="costly-")
    expected = dask.get(dsk, outputs)
    costly.unlink()
    no_recipes = {"kong.wukong.recompute_bytes_per_s": 0, "kong.planning.subtree_units_per_slot": 2}
    for run in ("first", "second"):  # the second knows the draws publish their values
        with dask.config.set(no_recipes):
            assert list(session.get(dsk, outputs)) == list(expected), run
        summary = last_run()
        assert summary is not None and len(summary.plan.shared_roots) == 18, run
        assert summary.invocations == 9, run
        # the draws the waiting subtrees read count (carried by their next task)
        assert sum(m.read_bytes for m in summary.task_metrics.values()) > 0, run
        runs = costly.read_text().split()
        assert sorted(runs) == sorted(set(runs)) and len(runs) == 18, run  # each draw once
        costly.unlink()

    cheap = tmp_path / "cheap.txt"
    dsk, outputs = block_matmul(3, counted_draw, str(cheap), name="cheap-")
    with dask.config.set(RECIPES_EVERYWHERE):
        assert list(session.get(dsk, outputs)) == list(expected)
    summary = last_run()
    assert summary is not None and summary.invocations == 9
    runs = cheap.read_text().split()
    assert len(set(runs)) == 18 and len(runs) > 18  # recipes: recomputed where needed
    assert session.store.run_keys(session.last_run_id or "") == []


def test_no_shared_roots_where_moving_outputs_is_free() -> None:
    """The memory store moves outputs for nothing: running a root twice cannot pay."""
    dsk, outputs = block_matmul(4, name="in-memory-")
    with Kong(workers=2) as session, dask.config.set(RECIPES_EVERYWHERE):
        session.get(dsk, outputs)
    summary = last_run()
    assert summary is not None and not summary.plan.shared_roots


def failing_draw(seed: int) -> int:
    if seed == 101:
        raise ValueError(f"no draw for seed {seed}")
    return draw(seed)


def test_a_failing_shared_root_fails_the_run_and_frees_every_slot(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """The subtrees waiting for a root whose claimant failed stop with the run, well
    before kong.wukong.shared_root_wait_s: they do not hold the gateway's slots."""
    session = kong_sessions("processes")
    gateway = session.backend.gateway  # type: ignore[attr-defined]
    dsk, outputs = block_matmul(3, failing_draw, name="failing-")
    with (
        dask.config.set({**RECIPES_EVERYWHERE, "kong.wukong.shared_root_wait_s": 60}),
        pytest.raises(ValueError, match="no draw for seed 101"),
    ):
        session.get(dsk, outputs)
    deadline = time.monotonic() + 10
    while gateway.stats().busy and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gateway.stats().busy == 0
    assert session.store.run_keys(session.last_run_id or "") == []
