"""One config loader: the documented defaults in kong.yaml, merged into dask.config.

Everything reads settings through `get`, so user overrides via dask.config.set, YAML files
or DASK_KONG__... environment variables apply everywhere, including in worker processes
(which inherit the environment and receive the client's resolved config in their payload).
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import dask.config
import yaml

_DEFAULTS_PATH = os.path.join(os.path.dirname(__file__), "kong.yaml")


def _load_defaults() -> dict[str, Any]:
    with open(_DEFAULTS_PATH) as f:
        defaults: dict[str, Any] = yaml.safe_load(f)
    return defaults


DEFAULTS = _load_defaults()
dask.config.update_defaults(DEFAULTS)
# Environment variables seen at import must win over defaults that were just registered.
dask.config.refresh()


def get(name: str, override: Any = None) -> Any:
    """The value of `kong.<name>`, or `override` when it is not None."""
    if override is not None:
        return override
    return dask.config.get(f"kong.{name}")


def section(name: str) -> Mapping[str, Any]:
    """The `kong.<name>` section as dask.config holds it now (a `dask.config.set` of one
    of its keys is seen at once), read without `dask.config.get`'s key parsing: for the
    hot path (`security` reads its section for every pickle written and read)."""
    try:
        found: Mapping[str, Any] = dask.config.config["kong"][name]
    except KeyError:
        found = dask.config.get(f"kong.{name}")
    return found


def snapshot() -> dict[str, Any]:
    """The resolved `kong` section, to ship to workers in other processes."""
    return dict(dask.config.get("kong"))


class ConfigError(ValueError):
    """A `kong.*` setting has a value dask-kong cannot use; the message names the key."""


#: Settings that must be above zero (a zero would mean no workers, no retries, a busy
#: loop or an immediate expiry); every other number must be at least zero.
_POSITIVE = frozenset(
    {
        "workers",
        "client.concurrent_runs",
        "client.batch_max_wait_s",
        "client.calls_per_task",
        "client.tasks_per_worker",
        "heartbeat.interval_s",
        "heartbeat.ttl_s",
        "run.stall_timeout_s",
        "run.deadline_s",
        "run.max_attempts",
        "store.key_ttl_s",
        "store.max_value_bytes",
        "lambda.max_attempts",
        "lambda.max_connections",
        "lambda.concurrency",
        "gateway.concurrency",
        "planning.min_samples",
        "planning.history_samples",
        "values.inspect_items",
    }
)

#: Sections whose keys are names the user chooses (resource configs), not settings.
_FREE_FORM = frozenset({"gateway.resource_configs", "lambda.resources"})


def validate(overrides: Mapping[str, Any] | None = None) -> None:
    """Check the resolved `kong` section, with `overrides` (name -> value, e.g. a
    session's `workers=`) in place of their settings. An unknown key warns naming it and
    the nearest known one (a typo must not pass silently, but a newer version's key in a
    shared file must not break this one); a value of the wrong type or sign raises
    `ConfigError` naming the key."""
    current = dict(dask.config.get("kong"))
    for name, value in (overrides or {}).items():
        if value is not None:
            _set_path(current, name, value)
    known = dict(_flatten(DEFAULTS["kong"]))
    for name, value in _flatten(current):
        if name not in known and not _is_free_form(name):
            _warn_unknown(name, known)
        elif name in known:
            _check_value(name, value, known[name])


def _flatten(section: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every setting below `section`; free-form maps whole."""
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and name not in _FREE_FORM:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _set_path(section: dict[str, Any], name: str, value: Any) -> None:
    *parents, leaf = name.split(".")
    for part in parents:
        section = section.setdefault(part, {})
    section[leaf] = value


def _is_free_form(name: str) -> bool:
    return any(name.startswith(f"{free}.") for free in _FREE_FORM)


def _warn_unknown(name: str, known: Mapping[str, Any]) -> None:
    nearest = difflib.get_close_matches(name, list(known), n=1)
    hint = f"; did you mean kong.{nearest[0]}?" if nearest else ""
    warnings.warn(f"unknown setting kong.{name} is ignored{hint}", UserWarning, stacklevel=4)


def _check_value(name: str, value: Any, default: Any) -> None:
    """Raise `ConfigError` when `value` does not fit the setting whose default is
    `default` (a null default: any number, or null)."""
    if value is None:
        if name in _POSITIVE or default is None:
            return  # null means "no limit" or "decide for me" for these settings
        raise ConfigError(f"kong.{name} must not be null (default: {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"kong.{name} must be true or false, not {value!r}")
        return
    if isinstance(default, (int, float)) or (default is None and _is_number(value)):
        _check_number(name, value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"kong.{name} must be a string, not {value!r}")


def _check_number(name: str, value: Any) -> None:
    if not _is_number(value):
        raise ConfigError(f"kong.{name} must be a number, not {value!r}")
    if name in _POSITIVE and value <= 0:
        raise ConfigError(f"kong.{name} must be greater than 0, not {value!r}")
    if value < 0:
        raise ConfigError(f"kong.{name} must not be negative, not {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
