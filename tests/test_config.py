"""Settings are checked: a typo in a `kong.*` key warns naming it, a value dask-kong
cannot use raises naming it, before anything runs."""

from __future__ import annotations

import dask
import pytest

from dask_kong import Kong, last_run
from dask_kong.config import ConfigError, validate


def test_the_shipped_defaults_are_valid() -> None:
    validate()


def test_a_typo_in_a_key_warns_with_the_nearest_known_key() -> None:
    with (
        dask.config.set({"kong.run.stal_timeout_s": 3}),
        pytest.warns(UserWarning, match=r"kong\.run\.stal_timeout_s .*kong\.run\.stall_timeout_s"),
    ):
        validate()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("kong.workers", 0, "kong.workers must be greater than 0"),
        ("kong.run.stall_timeout_s", -1.0, "kong.run.stall_timeout_s must be greater than 0"),
        ("kong.run.drain_timeout_s", -0.5, "kong.run.drain_timeout_s must not be negative"),
        ("kong.run.finalize_in_client", "yes", "must be true or false"),
        ("kong.heartbeat.interval_s", "fast", "must be a number"),
        ("kong.store.kind", 3, "must be a string"),
    ],
)
def test_an_unusable_value_raises_naming_its_key(setting: str, value: object, message: str) -> None:
    with dask.config.set({setting: value}), pytest.raises(ConfigError, match=message):
        validate()


def test_a_session_refuses_zero_workers() -> None:
    with pytest.raises(ConfigError, match=r"kong\.workers"):
        Kong(workers=0)


def test_a_run_checks_settings_changed_after_the_session_opened() -> None:
    with Kong() as kong:
        with dask.config.set({"kong.run.cancel_check_s": -1}), pytest.raises(ConfigError):
            kong.get({"a": 1}, "a")
        assert kong.get({"a": 1}, "a") == 1


def test_resource_config_names_are_the_users_to_choose() -> None:
    configs = {"tiny": {"memory_mb": 512, "cpus": 1}}
    with dask.config.set({"kong.gateway.resource_configs": configs}):
        validate()


def fail(value: int) -> int:
    raise ZeroDivisionError("boom")


def test_last_run_describes_a_failed_run() -> None:
    with Kong() as kong:
        assert kong.get({"a": 1, "b": (lambda v: v + 1, "a")}, "b") == 2
        with pytest.raises(ZeroDivisionError):
            kong.get({"a": 1, "b": (fail, "a")}, "b")
    summary = last_run()
    assert summary is not None
    assert not summary.succeeded and summary.tasks == 1  # "a" is data, not a task
    assert summary.run_id == kong.last_run_id
    assert summary.error == "ZeroDivisionError: boom"
