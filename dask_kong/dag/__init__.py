"""Translation of Dask graphs into immutable Kong DAGs."""

from .model import DAG, Key, Output, TaskInput
from .translate import to_dag

__all__ = ["DAG", "Key", "Output", "TaskInput", "to_dag"]
