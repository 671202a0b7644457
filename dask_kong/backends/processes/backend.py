"""Local serverless backend: every worker is an invocation served by a worker process of
the local Lambda-compatible gateway, with all data and coordination through Redis.

The client owns the gateway and invokes through its in-process fast path (no HTTP);
workers invoke each other through their pipe to the gateway. A worker process that dies
mid-invocation is reported by the gateway; this backend turns that into a WORKER_FAILED
event on the run's stream, with the lost invocation's payload, so the client invokes
the branch again at once (or fails naming the task after kong.run.max_attempts). An
interrupted run is taken back from the gateway (`cancel_run`): its queued invocations
are dropped and the worker processes running its branches are killed, so the next run
gets their slots at once.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from ... import security
from ...errors import KongError
from ...invocation.invoker import RemoteInvoker
from ...invocation.model import Invocation, InvokerSpec
from ...invocation.payload import payload_branch, payload_run_id
from ...invocation.transports import GatewayDirectTransport
from ...planning import ResourceSpec
from ...runtime.context import RunContext
from ...runtime.remote import prepare_remote_run
from ...store.base import Event, EventKind, Store
from .auth import AccessKey
from .gateway import Gateway
from .settings import GatewaySettings

logger = logging.getLogger("dask_kong.backends.processes")


HANDLER = "dask_kong.handler:lambda_handler"


def host_cpus() -> int:
    """The cpus this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class ProcessBackend:
    """Worker processes behind a private local gateway."""

    name = "processes"

    def __init__(
        self,
        store: Store,
        *,
        workers: int | None = None,
        function: str | None = None,
        **gateway_options: Any,
    ) -> None:
        url = getattr(store, "url", None)
        if store.in_process or not url:
            raise KongError("backend='processes' needs a Redis store (store='redis' or a URL)")
        self.store = store
        # kong invokes lost branches again itself (kong.run.max_attempts): the gateway's
        # own Lambda-like retries would count the same loss twice
        gateway_options.setdefault("async_retries", 0)
        settings = GatewaySettings.from_config(
            HANDLER,
            concurrency=workers,
            env={"DASK_KONG__STORE__URL": url, **security.worker_environment()},
            # its own key pair, not the user's AWS keys: only this session invokes it
            credentials=AccessKey.generate(),
            **gateway_options,
        )
        self.gateway = Gateway(settings, on_worker_lost=self._on_worker_lost).start()
        # Tasks name their resource config; the invoker maps it to <prefix>-<config>.
        prefix = self.gateway.settings.function_prefix
        self.spec = InvokerSpec(kind="gateway", function=function or prefix)
        self.invoker = RemoteInvoker(GatewayDirectTransport(self.gateway))

    def prepare_run(self, ctx: RunContext) -> None:
        ctx.shipment = prepare_remote_run(ctx, self.spec)

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.invoker.invoke(ctx, invocations)

    def resources(self) -> tuple[ResourceSpec, ...]:
        """The gateway's resource configs, its default first, each with the cpus a worker
        of it can count on when every concurrency slot is busy: this machine's cores
        shared by the slots. Two 2-cpu workers on 2 cores run no faster than two 1-cpu
        ones (their BLAS threads only contend), and planners must not predict otherwise."""
        settings = self.gateway.settings
        share = max(1, host_cpus() // max(1, self.concurrency() or 1))
        specs = [
            ResourceSpec(c.name, c.memory_mb, min(c.cpus, share)) for c in settings.resource_configs
        ]
        specs.sort(key=lambda r: r.name != settings.default_config)
        return tuple(specs)

    def concurrency(self) -> int | None:
        """The gateway's limit on workers running at once."""
        return int(self.gateway.settings.pool.concurrency)

    def prewarm(self, resource: str) -> None:
        self.invoker.prewarm(self.spec.function, resource)

    def cancel_run(self, ctx: RunContext) -> None:
        """Take the run's invocations back from the gateway: queued ones are dropped,
        the worker processes running its branches are killed (a handler cannot be
        interrupted mid-task) and their slots freed, so the next run starts at once; a
        new worker replaces each when next needed. Workers of the run between tasks stop
        at their next task boundary anyway (the run's cancel flag)."""
        run_id = ctx.run_id
        killed = self.gateway.cancel(lambda _function, payload: payload_run_id(payload) == run_id)
        if killed:
            logger.info("run %s cancelled: killed its worker processes %s", run_id, killed)

    def _on_worker_lost(
        self, function: str, payload: bytes, exitcode: int | None, request_id: str
    ) -> None:
        """Report a dead worker on its run's event stream (called on the gateway loop),
        naming the lost delivery by its request id (`Invocation.delivery`)."""
        branch = payload_branch(payload)
        if branch is None:
            return  # not a dask-kong invocation (e.g. a pre-warm): nothing to report
        run_id, task = branch
        reason = f"worker process of {function} exited with code {exitcode}"
        event = Event(
            EventKind.WORKER_FAILED, task, worker=request_id, message=reason, payload=payload
        )
        try:
            self.store.commit(run_id, {}, (), [event])
        except Exception as exc:  # the client's stall detector still catches the run
            logger.error("could not report lost worker of run %s: %s", run_id, exc)

    def close(self) -> None:
        self.gateway.stop()
