"""Planners decide where each task runs and which optimizations apply."""

from .dot import plan_to_dot, write_plan_png
from .history import History, MemoryHistory, RedisHistory, record_run
from .plan import Optimization, Plan, PlanningContext, ResourceSpec, TaskPlan
from .planners import PLANNERS, get_planner
from .predict import Predictor
from .report import PlanReport, compare_plan, render_report

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
