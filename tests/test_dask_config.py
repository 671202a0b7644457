"""The caller's dask config reaches tasks in worker processes, as in the caller's own.

dask's schedulers run tasks in the process (threads) that holds the caller's
`dask.config.set`; a task that reads the config (partd's compression in a disk shuffle,
a user function) must read the same values on kong's worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask
import dask.config
import pytest

from dask_kong import Kong, last_run


def read_setting(_: Any) -> Any:
    return dask.config.get("kong-test.setting", None)


@pytest.mark.parametrize("mode", ["embedded", "processes"])
def test_a_task_reads_the_callers_dask_config_and_only_during_its_run(
    mode: str, kong_sessions: Callable[[str], Kong]
) -> None:
    session = kong_sessions(mode)
    values = [dask.delayed(read_setting)(i) for i in range(4)]
    with dask.config.set({"kong-test.setting": "from the caller"}):
        inside = dask.compute(*values, scheduler=session.get)
    after = dask.compute(*values, scheduler=session.get)
    assert inside == ("from the caller",) * 4
    assert after == (None,) * 4


def test_a_stored_run_spec_carries_the_callers_dask_config(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """A spec too large to travel inline is stored, signed once as the run's `dag`
    value, and still unpickled under the caller's config in the worker."""
    session = kong_sessions("processes")
    values = [dask.delayed(read_setting)(i) for i in range(4)]
    settings = {"kong-test.setting": "stored", "kong.payload.inline_dag_bytes": 0}
    with dask.config.set(settings):
        assert dask.compute(*values, scheduler=session.get) == ("stored",) * 4
    summary = last_run()
    assert summary is not None and summary.client_bytes_uploaded > 0


def test_a_config_error_in_a_worker_names_the_callers_setting(
    kong_sessions: Callable[[str], Kong],
) -> None:
    """dask's own check: an unknown partd compression set in the caller fails the disk
    shuffle in the worker with dask's error, as under dask's threaded scheduler."""
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    session = kong_sessions("processes")
    frame = dd.from_pandas(pd.DataFrame({"a": range(20), "b": range(20)}), npartitions=4)
    with (
        dask.config.set({"dataframe.shuffle.compression": "NO_SUCH_ALGORITHM"}),
        pytest.raises(ImportError, match="NO_SUCH_ALGORITHM"),
    ):
        frame.shuffle("b", shuffle_method="disk").compute(scheduler=session.get)
