"""tree-sleep-<ms>: WUKONG's PDSW 2019 experiment: a pairwise tree reduction over 1024
leaves where every task sleeps a fixed time, so the makespan shows how many tasks run at
once. With unlimited workers it is depth x delay (11 levels for 1024 leaves)."""

from __future__ import annotations

import time
from typing import Any

import dask

from .base import Case, summed_tree_case
from .trivial import pairwise_tree

NAME = "tree-sleep"
SIZES = {
    "quick": {"leaves": 64, "delays_ms": (0, 10)},
    "full": {"leaves": 1024, "delays_ms": (0, 100, 250)},
}


def sleep_leaf(i: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return i


def sleep_add(a: int, b: int, delay_s: float) -> int:
    time.sleep(delay_s)
    return a + b


def variants(params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One workload per delay: tree-sleep-0, tree-sleep-100, ..."""
    return {
        f"{NAME}-{ms}": {"leaves": params["leaves"], "delay_ms": ms} for ms in params["delays_ms"]
    }


def variant(name: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """Parameters for `tree-sleep-<ms>` with any delay at this size's leaf count."""
    prefix = f"{NAME}-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return {"leaves": params["leaves"], "delay_ms": int(name[len(prefix) :])}
    return None


def build(params: dict[str, Any]) -> Case:
    leaves, delay_ms = params["leaves"], params["delay_ms"]
    delay_s = delay_ms / 1000
    delayed_leaf, delayed_add = dask.delayed(sleep_leaf), dask.delayed(sleep_add)
    level = [delayed_leaf(i, delay_s, dask_key_name=f"sleep-leaf-{i}") for i in range(leaves)]
    root = pairwise_tree(
        level, lambda a, b, key: delayed_add(a, b, delay_s, dask_key_name=key), "sleep-add"
    )
    depth = (leaves - 1).bit_length() + 1
    expected = leaves * (leaves - 1) // 2

    return summed_tree_case(
        root,
        expected,
        (
            f"pairwise tree over {leaves:,} leaves ({2 * leaves - 1:,} tasks), every task "
            f"sleeps {delay_ms} ms; ideal with unlimited workers {depth} x {delay_ms} ms "
            f"= {depth * delay_s:.2f} s; no numpy equivalent"
        ),
    )
