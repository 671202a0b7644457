"""The worker entry point for serverless platforms: `lambda_handler(event, context)`.

The same handler runs in the local gateway's worker processes and on AWS Lambda. A warm
container serves many invocations, so what is expensive to build (the Redis connection
pool, the heartbeat thread, the run specs fetched from the store, the Lambda client) is
kept in one `WorkerProcess` per process and reused: that reuse is what makes a warm
invocation cost milliseconds.

Events: a dask-kong invocation (`dask_kong.invocation.payload`), or `{"kong-warm": true}`, an
empty invocation that only warms the container (pre-warm).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import traceback
from typing import Any

import dask.config

from . import config, security, serialize
from .constants import DAG_KEY, PROBE_KEY, request_claim
from .invocation.invoker import RemoteInvoker
from .invocation.model import InvokerSpec, Transport
from .invocation.payload import (
    PAYLOAD_VERSION,
    DecodedInvocation,
    RunSpec,
    Shipment,
    decode_invocation,
    loads_spec,
    spec_from_parts,
)
from .invocation.transports import GatewayPipeTransport, LambdaTransport
from .runtime.context import CancelProbe, RunContext
from .runtime.heartbeat import Heartbeater
from .runtime.worker import new_worker_id, run_branch

# Imported at init, not by the first invocation: every invocation opens the Redis store,
# and an init phase (a pre-warm, or a spare started after a cancelled run's worker was
# killed) is spent before the invocation waits on it. AWS advises the same.
from .store import redis as _redis_store  # noqa: F401
from .store.base import Event, EventKind, MissingKeyError, Store

logger = logging.getLogger("dask_kong.handler")

# Run specs cached per process; a container rarely serves more than a few runs at once.
_SPEC_CACHE_SIZE = 8


class WorkerProcess:
    """State one container keeps across the invocations it serves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store: Store | None = None
        self._heartbeater: Heartbeater | None = None
        self._specs: collections.OrderedDict[str, RunSpec] = collections.OrderedDict()
        self._probes: dict[str, CancelProbe] = {}
        # Per run, the handles to state this process's tasks made (RunContext.handles).
        self._handles: dict[str, dict[int, Any]] = {}
        self._invokers: dict[InvokerSpec, RemoteInvoker] = {}
        self.invocations = 0

    def store(self) -> Store:
        with self._lock:
            if self._store is None:
                from .store.redis import open_store

                url = config.get("store.url")
                if not url:
                    raise RuntimeError("worker has no store: set DASK_KONG__STORE__URL")
                self._store = open_store(url)
                self._heartbeater = Heartbeater(self._store)
            return self._store

    def heartbeater(self) -> Heartbeater:
        self.store()
        assert self._heartbeater is not None
        return self._heartbeater

    def run_spec(self, run_id: str, decoded: DecodedInvocation) -> RunSpec:
        """The run's spec: from the process cache, the payload, or the store (once)."""
        cached = self._specs.get(run_id)
        if cached is not None:
            self._specs.move_to_end(run_id)
            return cached
        blob = decoded.spec_inline
        if blob is not None:
            spec = loads_spec(blob, run_id, what=f"the spec of run {run_id}")
        else:  # the store checked the signature of the run's `dag` value
            (parts,), _ = self.store().get_many(run_id, [DAG_KEY])
            spec = spec_from_parts(parts)
        self._specs[run_id] = spec
        while len(self._specs) > _SPEC_CACHE_SIZE:
            old_run, _ = self._specs.popitem(last=False)
            self._probes.pop(old_run, None)
            self._handles.pop(old_run, None)
        return spec

    def cancel_probe(self, run_id: str, interval_s: float) -> CancelProbe:
        """The run's cancellation probe, shared by this process's invocations."""
        probe = self._probes.get(run_id)
        if probe is None:
            probe = self._probes[run_id] = CancelProbe(self.store(), run_id, interval_s)
        return probe

    def handles(self, run_id: str) -> dict[int, Any]:
        """The run's handles to state made in this process, shared by its invocations."""
        return self._handles.setdefault(run_id, {})

    def release_ended_runs(self, current: str) -> None:
        """Drop the handles of runs that have ended (their finalisers run now: partd
        removes its directory), as dask releases a result once its readers are done.
        Asks the store only about runs that hold handles, which few do."""
        for run_id in [r for r in self._handles if r != current]:
            if not self._handles[run_id] or self.store().is_cancelled(run_id):
                del self._handles[run_id]

    def invoker(self, spec: InvokerSpec) -> RemoteInvoker:
        with self._lock:
            invoker = self._invokers.get(spec)
            if invoker is None:
                transport: Transport
                if spec.kind == "gateway":
                    transport = GatewayPipeTransport()
                else:
                    transport = LambdaTransport(spec.endpoint_url, spec.region)
                invoker = self._invokers[spec] = RemoteInvoker(transport)
            return invoker


_process = WorkerProcess()


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run one branch of a run, starting at the invocation's task."""
    started = time.perf_counter()
    cold = _process.invocations == 0  # a pre-warm counts: it is what makes the next warm
    _process.invocations += 1
    if event.get("kong-warm"):
        return {"warm": True, "pid": os.getpid()}
    if "kong-probe" in event:
        return answer_probe(event)
    try:
        decoded = decode_invocation(event)
        _process.release_ended_runs(decoded.invocation.run_id)
        ctx = build_context(decoded)
    except Exception as exc:
        report_refused(event, exc)
        raise
    worker_id = new_worker_id(ctx.run_id)
    # the local gateway says how long the invocation queued for a slot; AWS does not
    queued_s = float(getattr(context, "queued_s", 0.0))
    invocation = dataclasses.replace(decoded.invocation, queued_s=queued_s, cold=cold)
    if redelivered(ctx, decoded, context):  # the platform's retry: the next attempt
        invocation = dataclasses.replace(invocation, resumed=True, attempt=invocation.attempt + 1)
    # this delivery's name: the local gateway's request id, or Lambda's (with the attempt
    # above, two deliveries of one request differ too)
    invocation = invocation.with_delivery(getattr(context, "aws_request_id", None))
    # the caller's dask config, as its own process would give it to the tasks
    with dask.config.set(_process.run_spec(ctx.run_id, decoded).dask_config):
        run_branch(ctx, invocation, worker_id)
    return {
        "worker": worker_id,
        "pid": os.getpid(),
        "cold": cold,
        "seconds": time.perf_counter() - started,
    }


def report_refused(event: dict[str, Any], exc: Exception) -> None:
    """Tell the client that this invocation could not start (a payload or run spec
    refused by its signature, a spec missing from the store), as a failure of its first
    task: otherwise an Event invocation fails unseen and the run only stalls."""
    run_id, start = event.get("run"), event.get("start")
    if not isinstance(run_id, str) or not isinstance(start, int):
        return  # not a dask-kong invocation: the platform logs the error
    try:
        error = serialize.dumps(exc, where=security.place("error", start), what="exception")
        failure = Event(
            EventKind.TASK_FAILED,
            start,
            worker=f"pid {os.getpid()}",
            error=error,
            message=f"{type(exc).__name__}: {exc}",
            traceback="".join(traceback.format_exception(exc)),
        )
        _process.store().commit(run_id, {}, (), [failure])
    except Exception as report_exc:  # no key, no store: only the logs and the stall check
        logger.error("could not report the refused invocation of run %s: %s", run_id, report_exc)


def answer_probe(event: dict[str, Any]) -> dict[str, Any]:
    """The start-up probe's answer (`backends.aws_lambda.probe`): this worker's
    dask-kong and payload versions, and what it reads under the marker key the client
    wrote to its store (None: this worker's store does not hold it: another store), or
    why it could not read it."""
    from . import __version__

    answer: dict[str, Any] = {"kong": __version__, "payload": PAYLOAD_VERSION}
    try:
        (marker,), _ = _process.store().get_many(str(event["run"]), [PROBE_KEY])
        answer["marker"] = marker
    except MissingKeyError:
        answer["marker"] = None
    except Exception as exc:  # no store, unreachable, refused: the client names it
        answer["store_error"] = f"{type(exc).__name__}: {exc}"
    return answer


def redelivered(ctx: RunContext, decoded: DecodedInvocation, context: Any) -> bool:
    """Whether Lambda delivers this request again (its asynchronous retry after the
    first delivery failed: the same aws_request_id). Asked of the store on Lambda only:
    the local gateway of the processes backend never retries (kong re-invokes there)."""
    request_id = getattr(context, "aws_request_id", None)
    if decoded.invoker.kind != "lambda" or not request_id:
        return False
    return not ctx.store.claim(ctx.run_id, [request_claim(request_id)])[0]


def build_context(decoded: DecodedInvocation) -> RunContext:
    """A RunContext for this process from the payload and the process's caches."""
    run_id = decoded.invocation.run_id
    spec = _process.run_spec(run_id, decoded)
    return RunContext(
        run_id=run_id,
        dag=spec.dag,
        plan=spec.plan,
        store=_process.store(),
        invoker=_process.invoker(decoded.invoker),
        heartbeater=_process.heartbeater(),
        settings=spec.settings,
        output_tasks=spec.output_tasks,
        data_refs=spec.data_refs,
        shipment=Shipment(spec_inline=decoded.spec_b64, invoker=decoded.invoker),
        cancel_probe=_process.cancel_probe(run_id, spec.settings.cancel_check_s),
        handles=_process.handles(run_id),
        captures_warnings=True,
        fault_injection=True,
    )
