"""Planners decide where each task runs and which optimizations apply."""

from .plan import Optimization, Plan, PlanningContext, ResourceSpec, TaskPlan
from .planners import PLANNERS, get_planner

__all__ = [
    "PLANNERS",
    "Optimization",
    "Plan",
    "PlanningContext",
    "ResourceSpec",
    "TaskPlan",
    "get_planner",
]
