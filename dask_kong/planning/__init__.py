"""Planners decide where each task runs and which optimizations apply.

The plan's own types (`plan.py`) load with the package: workers read plans. Planners,
the history, predictions and reports load on first use (PEP 562), so a worker's cold
start does not import them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .plan import Optimization, Plan, PlanningContext, ResourceSpec, TaskPlan

if TYPE_CHECKING:
    from .dot import plan_to_dot, write_plan_png
    from .history import History, MemoryHistory, RedisHistory, record_run
    from .planners import PLANNERS, get_planner
    from .predict import Predictor
    from .report import PlanReport, compare_plan, render_report

#: Public name -> the submodule that defines it, loaded when first asked for.
_LAZY = {
    "plan_to_dot": "dot",
    "write_plan_png": "dot",
    "History": "history",
    "MemoryHistory": "history",
    "RedisHistory": "history",
    "record_run": "history",
    "PLANNERS": "planners",
    "get_planner": "planners",
    "Predictor": "predict",
    "PlanReport": "report",
    "compare_plan": "report",
    "render_report": "report",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "PLANNERS",
    "History",
    "MemoryHistory",
    "Optimization",
    "Plan",
    "PlanReport",
    "PlanningContext",
    "Predictor",
    "RedisHistory",
    "ResourceSpec",
    "TaskPlan",
    "compare_plan",
    "get_planner",
    "plan_to_dot",
    "record_run",
    "render_report",
    "write_plan_png",
]
