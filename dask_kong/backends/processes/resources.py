"""Resource configs and the function names the local gateway exposes for them.

A resource config is what AWS Lambda calls a function's memory size (and the vCPUs that
come with it). Like one Lambda function per memory size, the gateway exposes one function
per config, named `<prefix>-<config>`, plus `<prefix>` alone for the default config; all
of them run the same handler. `FunctionTable` resolves the names a caller may send (plain
name, `name:qualifier`, full or partial ARN) to a config.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ... import config

# Placeholder region and account of the ARNs the local gateway reports: it is no AWS
# region, and no account exists behind it.
LOCAL_ARN_PREFIX = "arn:aws:lambda:local:000000000000:function:"


@dataclass(frozen=True)
class ResourceConfig:
    """Memory and CPUs of one kind of worker, like a Lambda function's memory size.

    `timeout_s` overrides `kong.gateway.invocation_timeout_s` for this config (None: use it).
    """

    name: str
    memory_mb: int
    cpus: int
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name or ":" in self.name or "/" in self.name:
            raise ValueError(f"resource config name {self.name!r}: non-empty, without : or /")
        if self.memory_mb < 64:
            raise ValueError(f"resource config {self.name!r}: memory_mb must be >= 64")
        if self.cpus < 1:
            raise ValueError(f"resource config {self.name!r}: cpus must be >= 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"resource config {self.name!r}: timeout_s must be > 0")


def resource_configs_from_mapping(mapping: Mapping[str, Mapping[str, Any]]) -> list[ResourceConfig]:
    """Configs from the `name -> {memory_mb, cpus[, timeout_s]}` form used in kong.yaml."""
    configs = []
    for name, spec in mapping.items():
        unknown = set(spec) - {"memory_mb", "cpus", "timeout_s"}
        if unknown:
            raise ValueError(f"resource config {name!r}: unknown keys {sorted(unknown)}")
        timeout = spec.get("timeout_s")
        configs.append(
            ResourceConfig(
                name=str(name),
                memory_mb=int(spec["memory_mb"]),
                cpus=int(spec["cpus"]),
                timeout_s=None if timeout is None else float(timeout),
            )
        )
    return configs


def default_resource_configs() -> list[ResourceConfig]:
    """The configs of `kong.gateway.resource_configs`."""
    return resource_configs_from_mapping(config.get("gateway.resource_configs"))


class FunctionTable:
    """Maps the function names of a gateway to their resource configs."""

    def __init__(self, prefix: str, configs: Iterable[ResourceConfig], default: str) -> None:
        self.prefix = prefix
        self.configs = {c.name: c for c in configs}
        if not self.configs:
            raise ValueError("a gateway needs at least one resource config")
        if default not in self.configs:
            raise ValueError(f"default resource config {default!r} is not one of {self.configs}")
        self.default = self.configs[default]
        self.functions = {f"{prefix}-{name}": c for name, c in self.configs.items()}
        self.functions[prefix] = self.default

    def resolve(self, name: str) -> tuple[str, ResourceConfig] | None:
        """(canonical function name, config) for a requested name; None when unknown.

        Accepts what Lambda accepts: `name`, `name:qualifier`, `arn:...:function:name[:q]`
        and `account:function:name[:q]`. Qualifiers are ignored: every function has only
        `$LATEST`.
        """
        if ":function:" in name:
            name = name.split(":function:", 1)[1]
        name = name.split(":", 1)[0]
        found = self.functions.get(name)
        return None if found is None else (name, found)

    def names(self) -> list[str]:
        """Every function name, the default one first."""
        return sorted(self.functions, key=lambda n: (n != self.prefix, n))


def function_arn(function: str) -> str:
    """The ARN the local gateway reports for one of its functions."""
    return LOCAL_ARN_PREFIX + function
