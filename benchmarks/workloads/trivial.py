"""trivial: a pairwise tree of ~10,000 `dask.delayed` tasks that each add two integers,
so the makespan is the scheduler's per-task overhead."""

from __future__ import annotations

from typing import Any

import dask

from .base import Case, summed_tree_case

NAME = "trivial"
SIZES = {
    "quick": {"leaves": 500},
    "core": {"leaves": 5000},
    "full": {"leaves": 5000},
}


def inc(i: int) -> int:
    return i + 1


def add(a: int, b: int) -> int:
    return a + b


def build(params: dict[str, Any]) -> Case:
    leaves = params["leaves"]
    delayed_inc, delayed_add = dask.delayed(inc), dask.delayed(add)
    level = [delayed_inc(i, dask_key_name=f"inc-{i}") for i in range(leaves)]
    root = pairwise_tree(level, lambda a, b, key: delayed_add(a, b, dask_key_name=key), "add")
    expected = leaves * (leaves + 1) // 2

    return summed_tree_case(
        root,
        expected,
        (
            f"{leaves:,} delayed inc leaves summed pairwise ({2 * leaves - 1:,} tasks, "
            "each a Python integer add): per-task overhead; no numpy equivalent"
        ),
    )


def pairwise_tree(level: list[Any], combine: Any, prefix: str) -> Any:
    """Combine neighbours level by level until one node is left (an odd one out moves up).
    `combine(a, b, key)` makes the node; keys are `<prefix>-<height>-<position>`."""
    height = 0
    while len(level) > 1:
        height += 1
        pairs = zip(level[::2], level[1::2], strict=False)
        paired = [combine(a, b, f"{prefix}-{height}-{j}") for j, (a, b) in enumerate(pairs)]
        level = paired + level[len(paired) * 2 :]
    return level[0]
