"""A warning a task raises reaches the caller, as under dask's local schedulers, on every
mode: in a worker process it is recorded and raised again in the client."""

from __future__ import annotations

import warnings

import pytest

from dask_kong import Kong


class KongTestWarning(UserWarning):
    pass


def warn_twice(v: int) -> int:
    for _ in range(2):
        warnings.warn(f"careful with {v}", KongTestWarning, stacklevel=1)
    return v + 1


def test_a_task_warning_is_raised_in_the_caller(kong: Kong) -> None:
    dsk = {"a": (warn_twice, 1), "b": (warn_twice, "a")}
    with pytest.warns(KongTestWarning, match="careful with") as caught:
        assert kong.get(dsk, "b") == 3
    messages = {str(w.message) for w in caught if w.category is KongTestWarning}
    assert messages == {"careful with 1", "careful with 2"}


def test_the_callers_filters_decide_what_shows(kong: Kong) -> None:
    dsk = {"a": (warn_twice, 1)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("ignore", KongTestWarning)
        assert kong.get(dsk, "a") == 2
    assert not [w for w in caught if w.category is KongTestWarning]
