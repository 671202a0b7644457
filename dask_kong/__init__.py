"""dask-kong: run Dask graphs on decentralized serverless workers, WUKONG-style.

    import dask
    from dask_kong import kong_get
    dask.compute(x, scheduler=kong_get)
    dask.compute(x, scheduler="kong")  # the same, by name, once dask_kong is imported

Start reading at `session.py` (the scheduler entry point), then `runtime/client.py` (what
the client does during a run) and `runtime/worker.py` (what a worker does).
"""

import dask.base as _dask_base

from . import config as _config  # noqa: F401  (registers kong.yaml defaults with dask)
from .metrics.records import RunSummary
from .session import Kong, kong_get, last_run

# dask looks scheduler names up in this table: scheduler="kong" then means kong_get.
_dask_base.named_schedulers["kong"] = kong_get

__all__ = ["Kong", "RunSummary", "kong_get", "last_run"]
__version__ = "0.1.0"
