"""distributed's futures API on dask-kong: `Client`, `Future`, `wait`, `as_completed`.

`client.py` holds the client (batches of calls run as one graph each), `future.py` the
Future and the waits over many, `batch.py` how calls become a graph; options kong cannot honour
warn through `dask_kong.options`.
"""

from __future__ import annotations

from .client import Client
from .future import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    Future,
    FutureCancelledError,
    as_completed,
    wait,
)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "Client",
    "Future",
    "FutureCancelledError",
    "as_completed",
    "wait",
]
