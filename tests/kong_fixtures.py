"""Fixtures that run the correctness suite over every mode.

`kong` yields an open `Kong` session for each mode in MODES; a test that takes it runs
once per mode. Modes that need Redis or worker processes are added here as they land.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from dask_kong import Kong

MODES = {
    "embedded": {"backend": "threads", "store": "memory"},
}


@pytest.fixture(params=sorted(MODES))
def kong(request: pytest.FixtureRequest) -> Iterator[Kong]:
    """An open session per mode; closing it must leave no worker thread behind."""
    before = set(threading.enumerate())
    session = Kong(**MODES[request.param])
    try:
        yield session
    finally:
        session.close()
    leaked = [t for t in threading.enumerate() if t not in before and t.name.startswith("kong")]
    assert not leaked, f"threads left after close: {leaked}"
