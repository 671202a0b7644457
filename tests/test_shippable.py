"""`da.store` where workers run in other processes: never a silent wrong result.

A NumPy array of the caller's process cannot be written by a worker process (it writes
into its copy; dask's multiprocessing scheduler returns with the target untouched), so
kong refuses such a graph by name; a target every worker reaches (here: a file written
through `np.memmap` opened by path in each worker) works on every backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest

from dask_kong import Kong
from dask_kong.errors import KongError


class FileTarget:
    """A `da.store` target that every worker on the machine reaches: each write opens the
    file by path (what pickles is the path, not the bytes)."""

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: Any) -> None:
        self.path, self.shape, self.dtype = str(path), shape, np.dtype(dtype)
        np.memmap(self.path, dtype=self.dtype, mode="w+", shape=shape).flush()

    def __setitem__(self, index: Any, value: Any) -> None:
        view = np.memmap(self.path, dtype=self.dtype, mode="r+", shape=self.shape)
        view[index] = value
        view.flush()

    def read(self) -> Any:
        return np.array(np.memmap(self.path, dtype=self.dtype, mode="r", shape=self.shape))


@pytest.mark.parametrize("mode", ["processes"])
def test_storing_into_an_array_of_the_caller_is_refused_naming_the_task(
    mode: str, kong_sessions: Callable[[str], Kong]
) -> None:
    session = kong_sessions(mode)
    x = da.arange(100, chunks=25) * 2
    target = np.zeros(100, dtype=x.dtype)
    with pytest.raises(KongError, match=r"store-map.*stores into a ndarray of the calling"):
        da.store(x, target, scheduler=session.get)
    assert not target.any()  # nothing half-written either


def test_storing_into_a_memmap_is_refused_too(
    kong_sessions: Callable[[str], Kong], tmp_path: Path
) -> None:
    session = kong_sessions("processes")
    x = da.arange(100, chunks=25)
    target = np.memmap(tmp_path / "t.bin", shape=(100,), mode="w+", dtype=x.dtype)
    with pytest.raises(KongError, match=r"memmap of the calling process"):
        x.store(target, scheduler=session.get)


def test_return_stored_is_refused_as_well(kong_sessions: Callable[[str], Kong]) -> None:
    session = kong_sessions("processes")
    x = da.ones((8, 8), chunks=4)
    target = np.zeros((8, 8))
    stored = da.store(x, target, compute=False, return_stored=True)
    with pytest.raises(KongError, match=r"\(da\.store\)"):
        dask.compute(stored, scheduler=session.get)


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_a_target_every_worker_reaches_is_written_on_every_backend(
    mode: str, kong_sessions: Callable[[str], Kong], tmp_path: Path
) -> None:
    session = kong_sessions(mode)
    x = da.arange(64, chunks=16).reshape(8, 8) + 1
    target = FileTarget(tmp_path / "out.bin", (8, 8), x.dtype)
    da.store(x, target, lock=False, scheduler=session.get)  # type: ignore[arg-type]
    np.testing.assert_array_equal(target.read(), np.arange(64).reshape(8, 8) + 1)


def test_threads_backend_stores_into_the_callers_array(
    kong_sessions: Callable[[str], Kong],
) -> None:
    session = kong_sessions("embedded")
    x = da.arange(100, chunks=25) * 2
    target = np.zeros(100, dtype=x.dtype)
    da.store(x, target, scheduler=session.get)
    np.testing.assert_array_equal(target, np.arange(100) * 2)
