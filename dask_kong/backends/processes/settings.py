"""The local gateway's settings, resolved in one place: `GatewaySettings.from_config`.

Each setting is `kong.gateway.<name>` unless the caller overrides it by that name (None
means "not overridden"), so a session's `Kong(backend="processes", keep_warm_s=5)`, the
CLI's flags and the tests all go through the same resolution, and a setting added to
kong.yaml is added here once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict, Unpack

from ... import config
from .auth import AccessKey
from .resources import ResourceConfig, default_resource_configs


class GatewayOverrides(TypedDict, total=False):
    """What a caller may set instead of `kong.gateway.*`, by the setting's name; None
    (or left out) keeps the configured value."""

    host: str | None
    port: int | None
    function_prefix: str | None
    #: kong.gateway.default_resource_config
    default_config: str | None
    #: kong.gateway.resource_configs, as `ResourceConfig`s
    resource_configs: Iterable[ResourceConfig] | None
    keep_warm_s: float | None
    concurrency: int | None
    priority_window_s: float | None
    cold_start_timeout_s: float | None
    invocation_timeout_s: float | None
    stop_timeout_s: float | None
    close_drain_s: float | None
    async_retries: int | None
    async_retry_delay_s: float | None
    max_sync_payload_bytes: int | None
    max_async_payload_bytes: int | None
    #: not a setting: extra environment variables of every worker (they win)
    env: Mapping[str, str] | None
    #: kong.gateway.access_key_id/secret_access_key as one pair
    credentials: AccessKey | None
    signature_max_age_s: float | None


#: Overrides whose config key is not their own name.
_CONFIG_KEYS = {"default_config": "default_resource_config"}


@dataclass(frozen=True)
class PoolSettings:
    """Everything the worker pool needs to know (see `pool.py` for what each governs)."""

    #: "module:function" every worker runs
    handler: str
    #: an idle worker exits this long after its last invocation
    keep_warm_s: float
    #: invocations running or cold-starting at once; also the cap on live workers
    concurrency: int
    #: a worker not READY after this long is killed, its invocation failed
    cold_start_timeout_s: float
    #: default invocation timeout (a resource config's `timeout_s` overrides it)
    invocation_timeout_s: float
    #: grace per step when ending a worker (EOF, SIGTERM, SIGKILL); bounds loop waits
    stop_timeout_s: float
    #: Lambda's payload quotas, synchronous and Event
    max_sync_payload_bytes: int
    max_async_payload_bytes: int
    #: priorities reorder the queue only among invocations younger than this
    priority_window_s: float
    #: how long running invocations get to finish at close
    close_drain_s: float
    #: an Event invocation that fails is delivered again this many times (Lambda: 2),
    #: the first after async_retry_delay_s, each next one after twice the last pause
    async_retries: int = 0
    async_retry_delay_s: float = 1.0
    #: extra environment of every worker, over this process's (it may hold the signing
    #: key and the gateway's secret access key, hence no repr)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway's resolved configuration: overrides over `kong.gateway.*`."""

    #: "module:function" every worker runs
    handler: str
    #: interface and port the HTTP server binds (port 0: a free one)
    host: str
    port: int
    #: functions are `<prefix>-<config>`, and `<prefix>` alone for the default config
    function_prefix: str
    #: name of the resource config behind `<prefix>` alone
    default_config: str
    #: every resource config served
    resource_configs: tuple[ResourceConfig, ...]
    #: what the worker pool needs
    pool: PoolSettings
    #: the key pair Invoke requests must be signed with (`auth.py`); None: configure
    #: none, the gateway then generates one (loopback only)
    credentials: AccessKey | None = None
    #: how far a request's X-Amz-Date may be from now
    signature_max_age_s: float = 900.0

    @classmethod
    def from_config(cls, handler: str, **overrides: Unpack[GatewayOverrides]) -> GatewaySettings:
        """`kong.gateway.*`, each setting replaced by the override of its name when that
        is not None. An unknown name raises TypeError, as a misspelt keyword would."""
        unknown = set(overrides) - set(GatewayOverrides.__annotations__)
        if unknown:
            raise TypeError(f"unknown gateway settings: {', '.join(sorted(unknown))}")
        check_handler(handler)
        configs, default = _resource_configs(overrides)
        return cls(
            handler=handler,
            host=str(_setting("host", overrides)),
            port=int(_setting("port", overrides)),
            function_prefix=str(_setting("function_prefix", overrides)),
            default_config=default,
            resource_configs=configs,
            pool=_pool_settings(handler, overrides),
            credentials=overrides.get("credentials") or AccessKey.from_config(),
            signature_max_age_s=float(_setting("signature_max_age_s", overrides)),
        )


def check_handler(handler: str) -> None:
    """Fail early on a handler that is not "module:function" (workers would fail later,
    each on its own)."""
    module, sep, function = handler.partition(":")
    if not (module and sep and function):
        raise ValueError(f"handler {handler!r} is not of the form 'module:function'")


def _setting(name: str, overrides: Mapping[str, object]) -> Any:
    """The override named `name` when given, else its `kong.gateway` setting."""
    given = overrides.get(name)
    return config.get(f"gateway.{_CONFIG_KEYS.get(name, name)}", given)


def _resource_configs(overrides: GatewayOverrides) -> tuple[tuple[ResourceConfig, ...], str]:
    """The configs served and the default one's name. Configs given without a default
    that is among them default to the first (the configured default belongs to the
    configured configs)."""
    given = overrides.get("resource_configs")
    default = str(_setting("default_config", overrides))
    if given is None:
        return tuple(default_resource_configs()), default
    configs = tuple(given)
    if overrides.get("default_config") is None and default not in {c.name for c in configs}:
        default = configs[0].name
    return configs, default


def _pool_settings(handler: str, overrides: GatewayOverrides) -> PoolSettings:
    concurrency = int(_setting("concurrency", overrides) or os.cpu_count() or 1)
    if concurrency < 1:
        raise ValueError("gateway concurrency must be >= 1")
    return PoolSettings(
        handler=handler,
        keep_warm_s=float(_setting("keep_warm_s", overrides)),
        concurrency=concurrency,
        cold_start_timeout_s=float(_setting("cold_start_timeout_s", overrides)),
        invocation_timeout_s=float(_setting("invocation_timeout_s", overrides)),
        stop_timeout_s=float(_setting("stop_timeout_s", overrides)),
        max_sync_payload_bytes=int(_setting("max_sync_payload_bytes", overrides)),
        max_async_payload_bytes=int(_setting("max_async_payload_bytes", overrides)),
        priority_window_s=float(_setting("priority_window_s", overrides)),
        close_drain_s=float(_setting("close_drain_s", overrides)),
        async_retries=int(_setting("async_retries", overrides)),
        async_retry_delay_s=float(_setting("async_retry_delay_s", overrides)),
        env=dict(overrides.get("env") or {}),
    )
