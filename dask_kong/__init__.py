"""dask-kong: run Dask graphs on decentralized serverless workers, WUKONG-style.

    import dask
    from dask_kong import kong_get
    dask.compute(x, scheduler=kong_get)
    dask.compute(x, scheduler="kong")  # the same, by name, once dask_kong is imported

Start reading at `session.py` (the scheduler entry point), then `runtime/client.py` (what
the client does during a run), `handler.py` (where an invocation enters a worker) and
`runtime/worker.py` (what a worker does).

Importing the package is cheap: the session, planners and diagnostics load on first use
(PEP 562), so a worker process that imports `dask_kong.handler` loads none of them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

import dask.base as _dask_base

from . import config as _config  # noqa: F401  (registers kong.yaml defaults with dask)

if TYPE_CHECKING:
    from .diagnostics.report import performance_report
    from .futures import Client, Future, as_completed, wait
    from .metrics.records import RunSummary
    from .session import Kong, kong_get, last_run

#: Public name -> the module that defines it, loaded when first asked for.
_LAZY = {
    "Kong": "session",
    "kong_get": "session",
    "last_run": "session",
    "RunSummary": "metrics.records",
    "performance_report": "diagnostics.report",
    "Client": "futures",
    "Future": "futures",
    "as_completed": "futures",
    "wait": "futures",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _kong_get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
    """`kong_get`, loaded on the first computation."""
    from .session import kong_get

    return kong_get(dsk, keys, **kwargs)


# dask looks scheduler names up in this table: scheduler="kong" then means kong_get.
_dask_base.named_schedulers["kong"] = _kong_get

__all__ = [
    "Client",
    "Future",
    "Kong",
    "RunSummary",
    "as_completed",
    "kong_get",
    "last_run",
    "performance_report",
    "wait",
]
__version__ = "0.1.0"
