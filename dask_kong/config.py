"""One config loader: the documented defaults in kong.yaml, merged into dask.config.

Everything reads settings through `get`, so user overrides via dask.config.set, YAML files
or DASK_KONG__... environment variables apply everywhere, including in worker processes
(which inherit the environment and receive the client's resolved config in their payload).
"""

from __future__ import annotations

import os
from typing import Any

import dask.config
import yaml

_DEFAULTS_PATH = os.path.join(os.path.dirname(__file__), "kong.yaml")


def _load_defaults() -> dict[str, Any]:
    with open(_DEFAULTS_PATH) as f:
        return yaml.safe_load(f)


DEFAULTS = _load_defaults()
dask.config.update_defaults(DEFAULTS)
# Environment variables seen at import must win over defaults that were just registered.
dask.config.refresh()


def get(name: str, override: Any = None) -> Any:
    """The value of `kong.<name>`, or `override` when it is not None."""
    if override is not None:
        return override
    return dask.config.get(f"kong.{name}")


def snapshot() -> dict[str, Any]:
    """The resolved `kong` section, to ship to workers in other processes."""
    return dict(dask.config.get("kong"))
