"""Subtree batching: what the planners batch, and that batched runs stay correct."""

from __future__ import annotations

import random
import threading

import dask
import pytest

from dask_kong import Kong, last_run
from dask_kong.dag import DAG, to_dag
from dask_kong.planning import PlanningContext, get_planner
from dask_kong.planning.subtrees import exclusive_subtrees, subtree_max_tasks

from .test_fan_in_and_runtime import RANDOM_SEEDS, combine, kong_for, random_graph


def add(*values: int) -> int:
    return sum(values)


def pairwise_tree(leaves: int) -> tuple[dict, str]:
    """leaf-i = i, summed pairwise up to one key: 2 * leaves - 1 tasks."""
    dsk: dict = {f"leaf-{i}": (add, i) for i in range(leaves)}
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


def random_forest(seed: int) -> tuple[dict, list]:
    """A random DAG that is mostly trees: a task reads 1-3 outputs nobody read yet,
    sometimes one already read (a shared ancestor); a few outputs are requested."""
    rng = random.Random(seed)
    dsk: dict = {}
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
    dsk: dict = {f"leaf-{i}": (add, i) for i in range(8)}
    dsk["top"] = (add, *[f"leaf-{i}" for i in range(8)])
    order = [k for k in to_dag(dsk, ["top"]).keys if k != "top"]
    bad = int(order[3].split("-")[1])  # the fourth leaf the branch runs

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
    assert ran == [int(k.split("-")[1]) for k in order[:4]]
