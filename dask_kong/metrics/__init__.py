"""Per-task measurements and run summaries."""

from .records import RunSummary, TaskMetrics

__all__ = ["RunSummary", "TaskMetrics"]
