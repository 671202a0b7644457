"""The small surface every backend implements (Lithops-style: one folder per backend).

It lives with its user, the client (`runtime/client.py`); backends implement it, so the
runtime never imports a backend.

A backend starts workers (`invoke`), prepares a run for workers that live elsewhere
(`prepare_run`: e.g. store the DAG once), stops an interrupted run's workers
(`cancel_run`) and frees what it holds (`close`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..invocation.model import Invocation
from ..planning.plan import ResourceSpec
from .context import RunContext


class Backend(Protocol):
    """Where workers run."""

    name: str

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        """Start one worker per invocation; never waits for them to finish."""
        ...

    def prepare_run(self, ctx: RunContext) -> None:
        """Make the run reachable by workers before the first invocation."""
        ...

    def resources(self) -> tuple[ResourceSpec, ...]:
        """The worker sizes this backend offers, default first (for planners)."""
        ...

    def concurrency(self) -> int | None:
        """How many workers run at once (None: unbounded), for planners' timelines."""
        ...

    def prewarm(self, resource: str) -> None:
        """Start (warm) a worker of `resource` ahead of need; no-op where meaningless."""
        ...

    def cancel_run(self, ctx: RunContext) -> None:
        """The run was interrupted (its cancel flag is set): stop its workers as far as
        the platform allows and free the capacity they hold, so the next run starts at
        once. Never waits for a task to finish."""
        ...

    def close(self) -> None:
        """Stop every worker and helper this backend started."""
        ...
