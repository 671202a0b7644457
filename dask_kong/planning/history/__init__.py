"""Metrics history: bounded summaries of earlier runs, which predictions are made from.

Nothing here grows with the number of runs. Observations are grouped, and each group
keeps, per metric, a count and a sum (for means) and a window of the latest
`kong.planning.history_samples` samples (for percentiles):

* ``fn/<resource>/<function>``, per task function (``key_split`` of its key) and resource
  config: execution seconds per task and per input byte, output bytes, output/input ratio;
* ``res/<resource>``, per resource config: read and write throughput (bytes/s), seconds
  per read and per write (when sizes are unknown), invocation latency, cold and warm
  worker start-up;
* ``shape/<shape hash>``, per DAG shape: observed and predicted makespans, and the
  relative error of the prediction; ``shape/<shape hash>/<planner>`` the same per
  planner, so that the dashboard can show how planners compared on a shape.

So the stored size is bounded by (functions x configs + configs + shapes) x metrics x
window, however many runs are recorded.

One job per module:

* `taxonomy`: the metrics (`Metric`) and the groups they are recorded under;
* `observe`: what one finished run tells the history (`observe_run`), no I/O;
* `base`: the `History` protocol, its `Stats`, what every store shares, `record_run`;
* `memory`: `MemoryHistory`, in this process (LRU-bounded);
* `redis`: `RedisHistory`, in Redis, outliving runs.

This package's namespace is the API the rest of dask-kong imports.
"""

from .base import History, Stats, percentile, record_run
from .memory import MemoryHistory
from .redis import DEFAULT_PREFIX, RedisHistory
from .taxonomy import Metric, function_group, resource_group, task_profile_name

__all__ = [
    "DEFAULT_PREFIX",
    "History",
    "MemoryHistory",
    "Metric",
    "RedisHistory",
    "Stats",
    "function_group",
    "percentile",
    "record_run",
    "resource_group",
    "task_profile_name",
]
