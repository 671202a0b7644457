"""The pool of worker processes behind the local gateway: warm pools, cold starts,
keep-warm, limits.

The policy is AWS Lambda's, on one machine:

- One warm pool per resource config. An invocation takes an idle worker of its config
  (a warm start; most recently used first, so surplus workers age out) or starts a new
  process (a cold start: interpreter start plus handler import, timed until READY).
- At most `concurrency` invocations hold a slot (running or cold-starting); the others
  wait in one queue and are never dropped, highest priority first within a window
  (`invocation_queue.py`). Live workers are capped at `concurrency` too: a cold start
  first ends the longest-idle worker when at the cap.
- An idle worker exits `keep_warm_s` after its last invocation: its request pipe is
  closed and it leaves its loop on EOF.
- `cancel(matches)` takes back what a caller no longer wants (dask-kong: the branches of
  an interrupted run): matching queued invocations are dropped, and the workers running
  (or cold-starting) matching ones are killed by PID, their slots freed at once. A
  handler cannot be interrupted mid-call, and a slot held until a cancelled 20 s task
  ends would stall the next run. One spare worker per config killed starts at once in
  their place, for the next invocation to claim. What a killed worker still sends
  (invocations of its own) is dropped too.
- At `close`, invocations still running get `close_drain_s` to finish (a straggler of a
  finished run is milliseconds from its result); the rest are stopped. Both are expected
  ends, logged at INFO and counted, not reported as failures.
- A worker that dies mid-invocation (os._exit, killed for memory) is removed. A
  synchronous caller gets a Lambda error `Runtime.ExitError`; an Event invocation is
  logged and handed to `on_worker_lost`. An invocation past its timeout has its worker
  killed and fails with `Sandbox.Timedout`. The next invocation starts a new worker.

A worker's state (`WorkerState`) changes in one place, `WorkerPool._transition`, which
runs the `_transition_<from>_<to>` method its table names (distributed's scheduler does
the same): the bookkeeping of each change (the idle pools, the timers, the request
pipe) sits in that method and nowhere else. A worker process itself (spawning, pipes)
is `worker_process.py`; what the pool counts is `stats.py`.

Everything here runs on the gateway's event loop thread and is not thread-safe; the
gateway hops onto that thread for every call from outside.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from typing import Any

from ...invocation.pipe import Frame, FrameKind
from ...waits import nth_pause, poll_until_async
from .invocation_queue import InvocationQueue
from .pending import InvocationOutcome, PendingInvocation, new_request_id
from .resources import FunctionTable, ResourceConfig
from .settings import PoolSettings
from .stats import GatewayStats, PoolCounters
from .worker_main import lambda_error
from .worker_process import (
    WorkerProcess,
    WorkerState,
    describe_exit,
    max_frame_bytes,
    wait_for_exit,
    worker_environment,
)

logger = logging.getLogger("dask_kong.gateway")

#: (function name, event payload) -> whether `cancel` takes this invocation back
InvocationMatcher = Callable[[str, bytes], bool]
#: (function name, event payload, exit code: negative for a signal, like Popen.returncode,
#: the request id of the delivery lost: two deliveries of one payload differ in it)
WorkerLostCallback = Callable[[str, bytes, int, str], None]
#: One state change of a worker: the pool's `_transition_<from>_<to>` method.
_Transition = Callable[[WorkerProcess], None]

STARTING, IDLE, BUSY, STOPPING = (
    WorkerState.STARTING,
    WorkerState.IDLE,
    WorkerState.BUSY,
    WorkerState.STOPPING,
)


class WorkerPool:
    """Runs invocations on worker processes; see the module docstring for the policy."""

    def __init__(
        self,
        settings: PoolSettings,
        functions: FunctionTable,
        gateway_url: str,
        on_worker_lost: WorkerLostCallback | None = None,
    ) -> None:
        #: resolved `kong.gateway` settings (`settings.py`)
        self.settings = settings
        #: the functions served, and their resource configs
        self.functions = functions
        #: told of every Event invocation lost with its worker (see `Gateway`)
        self.on_worker_lost = on_worker_lost
        #: the gateway's event loop, which everything here runs on
        self._loop = asyncio.get_running_loop()
        #: the environment of a new worker, per resource config name
        self._envs = {
            name: worker_environment(c, gateway_url, settings.env)
            for name, c in functions.configs.items()
        }
        #: the largest frame a worker may send
        self._frame_limit = max_frame_bytes(settings)
        #: invocations waiting for a slot
        self._queue = InvocationQueue(settings.priority_window_s)
        #: invocations holding a slot: running or cold-starting
        self._busy = 0
        #: idle workers per resource config name, most recently used last
        self._idle: dict[str, list[WorkerProcess]] = {name: [] for name in functions.configs}
        #: every worker not yet reaped, by PID
        self._workers: dict[int, WorkerProcess] = {}
        #: background tasks (cold starts, reapers), kept so they are neither lost nor leaked
        self._tasks: set[asyncio.Task[None]] = set()
        #: what `stats` reports, growing only
        self._counters = PoolCounters()
        #: `_dispatch` is running (or held off by `cancel`): nested calls are no-ops
        self._dispatching = False
        #: `close` began: nothing new starts, a worker done with its work retires
        self._closing = False
        #: (from, to) -> the method that makes that change; a pair not in here is a bug
        self._transitions: dict[tuple[WorkerState, WorkerState], _Transition] = {
            (STARTING, BUSY): self._transition_starting_busy,
            (STARTING, IDLE): self._transition_starting_idle,
            (STARTING, STOPPING): self._transition_starting_stopping,
            (IDLE, BUSY): self._transition_idle_busy,
            (IDLE, STOPPING): self._transition_idle_stopping,
            (BUSY, IDLE): self._transition_busy_idle,
            (BUSY, STOPPING): self._transition_busy_stopping,
        }

    # -- accepting work -------------------------------------------------------------

    def submit(self, invocation: PendingInvocation) -> None:
        """Queue an invocation; it runs when a concurrency slot is free and nothing of
        higher priority (or of equal priority and older) waits."""
        counters = self._counters
        counters.invocations += 1
        if invocation.sync:
            counters.sync_invocations += 1
        else:
            counters.async_invocations += 1
        if self._closing:  # the caller is stopping the gateway: what comes now is dropped
            counters.dropped_at_stop += 1
            self._complete(invocation, self._stopped_outcome(invocation), expected=True)
            return
        self._queue.push(invocation)
        counters.max_queued = max(counters.max_queued, len(self._queue))
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued invocations while slots are free. Re-entrant calls are no-ops:
        the outer loop sees every slot they would have freed."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._queue and self._busy < self.settings.concurrency:
                self._start(self._queue.pop())
        finally:
            self._dispatching = False

    def _start(self, invocation: PendingInvocation) -> None:
        """Give the invocation a slot and a worker: warm if one is idle, else a new one."""
        invocation.holds_slot = True
        invocation.started_at = time.monotonic()
        self._busy += 1
        self._counters.max_busy = max(self._counters.max_busy, self._busy)
        worker = self._take_idle(invocation.config)
        if worker is not None:
            self._counters.warm_starts += 1
            self._run(worker, invocation)
            return
        spare = self._take_spare(invocation.config)
        if spare is not None:  # it runs the invocation once started (a cold start)
            spare.invocation = invocation
            return
        self._make_room()
        try:
            worker = self._spawn(invocation.config)
        except OSError as exc:
            logger.error("cannot start a worker for %s: %s", invocation.function, exc)
            body = lambda_error("Runtime.StartError", f"cannot start a worker process: {exc}")
            self._complete(invocation, self._error_outcome(invocation, body))
            return
        worker.invocation = invocation
        self._spawn_task(self._cold_start(worker))

    def _take_idle(self, config: ResourceConfig) -> WorkerProcess | None:
        """The most recently used idle worker of `config`, out of the idle pool."""
        pool = self._idle[config.name]
        while pool:
            worker = pool.pop()
            if worker.state is IDLE:
                return worker
        return None

    def _make_room(self) -> None:
        """Before a cold start at the live-worker cap, end the longest-idle worker."""
        live = sum(w.state is not STOPPING for w in self._workers.values())
        if live < self.settings.concurrency:
            return
        idle = [w for pool in self._idle.values() for w in pool]
        if idle:
            self._counters.evicted_workers += 1
            self._retire(min(idle, key=lambda w: w.idle_since))

    # -- taking work back -----------------------------------------------------------

    def cancel(self, matches: InvocationMatcher) -> list[int]:
        """Take back every invocation `matches(function, payload)` selects: queued ones
        are dropped; running or cold-starting ones lose their worker (SIGKILL by PID: our
        own child) and free their slot at once. Returns the PIDs killed."""
        self._dispatching = True  # nothing starts before every match is taken back
        try:
            for invocation in self._queue.oldest_first():
                if matches(invocation.function, invocation.payload):
                    self._queue.remove(invocation)
                    self._take_back(invocation)
            killed = [w for w in list(self._workers.values()) if self._cancel_running(w, matches)]
            for config in {w.config.name: w.config for w in killed}.values():
                self._replace(config)
        finally:
            self._dispatching = False
        self._dispatch()
        return [worker.pid for worker in killed]

    def _cancel_running(self, worker: WorkerProcess, matches: InvocationMatcher) -> bool:
        """Kill `worker` when the invocation it runs (or starts for) matches: a handler
        cannot be interrupted mid-call. Its reaper removes it quietly (it is STOPPING)."""
        invocation = worker.invocation
        if invocation is None or invocation.done:
            return False
        if not matches(invocation.function, invocation.payload):
            return False
        worker.invocation = None
        self._kill(worker)
        self._take_back(invocation)
        return True

    def _replace(self, config: ResourceConfig) -> None:
        """Start a spare worker of `config` in place of those `cancel` killed, so the next
        invocation finds a warm worker (or one well into its start) rather than paying a
        whole cold start after it arrives: Ctrl-C, then the next computation. One per
        config: what a next computation needs first; the others start when needed, so
        that parallel cold starts do not compete for the cores with that computation.
        The first invocation of `config` that finds no idle worker claims it; unclaimed,
        it joins the warm pool and expires like any idle worker."""
        if self._closing:
            return
        try:
            worker = self._spawn(config)
        except OSError as exc:  # the next invocation's own cold start tries again
            logger.warning("cannot start a replacement %s worker: %s", config.name, exc)
            return
        self._spawn_task(self._cold_start(worker))

    def _take_spare(self, config: ResourceConfig) -> WorkerProcess | None:
        """A spare worker of `config` still starting that no invocation claimed yet."""
        for worker in self._workers.values():
            starting = worker.state is STARTING and worker.invocation is None
            if starting and worker.config.name == config.name:
                return worker
        return None

    def _take_back(self, invocation: PendingInvocation) -> None:
        """Complete a cancelled invocation: a sync caller gets `Gateway.Cancelled`."""
        self._counters.cancelled += 1
        self._complete(invocation, self._cancelled_outcome(invocation), expected=True)

    # -- worker states: every change goes through `_transition` -----------------------

    def _transition(self, worker: WorkerProcess, finish: WorkerState) -> None:
        """Move `worker` to `finish` through the method the table names for the change.
        STOPPING is final: stopping a stopped worker again is a no-op."""
        start = worker.state
        if start is STOPPING and finish is STOPPING:
            return
        transition = self._transitions.get((start, finish))
        if transition is None:
            raise RuntimeError(f"no transition of {worker} from {start} to {finish}")
        transition(worker)
        worker.state = finish

    def _transition_starting_busy(self, worker: WorkerProcess) -> None:
        """Its handler is imported: it runs the invocation it was started for (cold)."""
        self._send(worker, cold_start=True)

    def _transition_idle_busy(self, worker: WorkerProcess) -> None:
        """A warm start: taken out of its idle pool (`_take_idle`), keep-warm disarmed."""
        worker.cancel_timers()
        self._send(worker, cold_start=False)

    def _transition_starting_idle(self, worker: WorkerProcess) -> None:
        """Started with no invocation left to run (a spare, or its caller gave up)."""
        self._enter_idle_pool(worker)

    def _transition_busy_idle(self, worker: WorkerProcess) -> None:
        """Its result came back: timeout disarmed, back into the warm pool."""
        worker.cancel_timers()
        self._enter_idle_pool(worker)

    def _transition_starting_stopping(self, worker: WorkerProcess) -> None:
        """EOF on its request pipe (or its unattached ends closed): no work will come."""
        worker.close_requests()

    def _transition_idle_stopping(self, worker: WorkerProcess) -> None:
        """Out of the warm pool, keep-warm disarmed, EOF: it exits at once."""
        self._forget_idle(worker)
        worker.cancel_timers()
        worker.close_requests()

    def _transition_busy_stopping(self, worker: WorkerProcess) -> None:
        """Timeout disarmed, EOF: it exits when its handler returns, or at once when
        signalled. Whoever stops it took its invocation off it first (or is closing)."""
        worker.cancel_timers()
        worker.close_requests()

    def _send(self, worker: WorkerProcess, cold_start: bool) -> None:
        """Send the worker its invocation and arm the invocation's timeout."""
        invocation = worker.invocation
        assert invocation is not None, f"{worker} has no invocation to run"
        invocation.cold_start = cold_start
        timeout = invocation.config.timeout_s or self.settings.invocation_timeout_s
        worker.send_invocation(invocation, timeout)
        worker.deadline_timer = self._loop.call_later(
            timeout, self._on_timeout, worker, invocation, timeout
        )

    def _enter_idle_pool(self, worker: WorkerProcess) -> None:
        """Last in its config's idle pool (taken first), keep-warm timer armed."""
        worker.idle_since = time.monotonic()
        self._idle[worker.config.name].append(worker)
        worker.idle_timer = self._loop.call_later(self.settings.keep_warm_s, self._expire, worker)

    def _forget_idle(self, worker: WorkerProcess) -> None:
        pool = self._idle[worker.config.name]
        if worker in pool:
            pool.remove(worker)

    # -- worker lifecycle -----------------------------------------------------------

    def _spawn(self, config: ResourceConfig) -> WorkerProcess:
        """Start a worker process for `config` (OSError when the OS refuses); a cold start."""
        worker = WorkerProcess.spawn(config, self.settings, self._envs[config.name])
        self._workers[worker.pid] = worker
        self._counters.cold_starts += 1
        return worker

    async def _cold_start(self, worker: WorkerProcess) -> None:
        """Wait (bounded) for a new worker to import its handler, then run the invocation
        it holds; a spare (see `_replace`) that no invocation claimed meanwhile goes
        into the warm pool instead.

        The worker holds its invocation while it starts, so that `close`, `cancel` and
        the reaper (the process died during init) can fail it; whoever fails it first
        wins, and takes it off the worker.
        """
        timeout = self.settings.cold_start_timeout_s
        if worker.state is STOPPING:  # stopped before it was even connected
            return
        try:
            await worker.connect(self, self._frame_limit)
            failure = await asyncio.wait_for(asyncio.shield(worker.ready), timeout)
        except TimeoutError:
            logger.error("worker %s did not start within %ss: killing it", worker, timeout)
            message = f"the runtime did not start within {timeout:.2f} seconds"
            self._fail_start(worker, "Sandbox.Timedout", message)
            return
        except Exception as exc:  # e.g. the pipes could not be attached to the loop
            logger.exception("worker %s could not be connected: killing it", worker)
            self._fail_start(worker, "Runtime.StartError", f"cannot connect to the worker: {exc}")
            return
        invocation, worker.invocation = worker.invocation, None
        if failure is not None:
            if invocation is not None:  # the handler failed to load (INIT_ERROR)
                # worker_main exits with status 1 right after reporting INIT_ERROR.
                self._lose(invocation, failure, 1)
            return
        self._record_cold_start(worker)
        if worker.state is STOPPING:  # killed by cancel() as it got ready
            return
        if self._closing or invocation is None or invocation.done:
            self._release(worker)
            return
        self._run(worker, invocation)

    def _fail_start(self, worker: WorkerProcess, error_type: str, message: str) -> None:
        """Kill a worker that could not start; the invocation it holds is lost with it
        (a sync caller gets `error_type`, an Event one goes to `on_worker_lost`)."""
        invocation, worker.invocation = worker.invocation, None
        self._kill(worker)
        if invocation is not None:
            text = f"RequestId: {invocation.request_id} Error: {message}"
            self._lose(invocation, lambda_error(error_type, text), -signal.SIGKILL)

    def _record_cold_start(self, worker: WorkerProcess) -> None:
        elapsed = time.monotonic() - worker.spawned_at
        self._counters.record_cold_start(elapsed)
        logger.debug("cold start of %s took %.3fs", worker, elapsed)

    def _run(self, worker: WorkerProcess, invocation: PendingInvocation) -> None:
        """Give `invocation` to `worker`, idle (a warm start) or just started (cold)."""
        worker.invocation = invocation
        self._transition(worker, BUSY)

    def _release(self, worker: WorkerProcess) -> None:
        """A worker with nothing to run: back into the warm pool, or out when closing. One
        killed while its result was on the way (a corrupt frame stream) stays stopped."""
        stopping = self._closing or worker.state is STOPPING
        self._transition(worker, STOPPING if stopping else IDLE)

    def _expire(self, worker: WorkerProcess) -> None:
        """Keep-warm window over: the worker leaves, like an idle Lambda container."""
        if worker.state is IDLE:
            self._counters.expired_workers += 1
            logger.debug("worker %s idle for %ss: retiring it", worker, self.settings.keep_warm_s)
            self._retire(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        """Stop giving `worker` work and let it exit on EOF; its reaper removes it."""
        self._transition(worker, STOPPING)

    def _kill(self, worker: WorkerProcess) -> None:
        """Stop giving `worker` work and end it now (SIGKILL; its reaper removes it)."""
        self._transition(worker, STOPPING)
        worker.signal(signal.SIGKILL)

    # -- events from workers --------------------------------------------------------

    def on_frame(self, worker: WorkerProcess, frame: Frame) -> None:
        """Route one frame a worker sent."""
        if frame.kind is FrameKind.RESULT:
            self._on_result(worker, frame)
        elif frame.kind is FrameKind.CALL:
            self._on_call(worker, frame)
        elif frame.kind is FrameKind.READY and not worker.ready.done():
            worker.ready.set_result(None)
        elif frame.kind is FrameKind.INIT_ERROR and not worker.ready.done():
            logger.error("worker %s failed to load its handler: %s", worker, frame.payload[:2000])
            worker.ready.set_result(frame.payload)
        else:
            logger.warning("unexpected frame %s from worker %s", frame.kind.name, worker)

    def on_corrupt_stream(self, worker: WorkerProcess) -> None:
        """Its frames cannot be trusted any more: kill it (its invocation is lost)."""
        self._kill(worker)

    def _on_result(self, worker: WorkerProcess, frame: Frame) -> None:
        invocation = worker.invocation
        if invocation is None or frame.header.get("id") != invocation.request_id:
            logger.debug("late result from %s ignored", worker)
            return
        worker.invocation = None
        self._release(worker)
        outcome = InvocationOutcome(
            request_id=invocation.request_id,
            payload=frame.payload,
            function_error=bool(frame.header.get("error")),
            cold_start=invocation.cold_start,
        )
        self._complete(invocation, outcome)

    def _on_call(self, worker: WorkerProcess, frame: Frame) -> None:
        """A handler called invoke_via_gateway: an Event invocation of another function.
        Not from a worker being stopped (killed by `cancel`, ended at close): its
        invocation was taken back, so is the work it would start."""
        if worker.state is STOPPING:
            logger.debug("invocation from stopped worker %s dropped", worker)
            return
        requested = str(frame.header.get("fn"))
        resolved = self.functions.resolve(requested)
        if resolved is None:
            logger.error("invoke_via_gateway: no function named %r; invocation dropped", requested)
            return
        name, config = resolved
        self._counters.pipe_invocations += 1
        priority = int(frame.header.get("priority") or 0)
        self.submit(
            PendingInvocation(new_request_id(), name, config, frame.payload, None, priority)
        )

    def _on_timeout(
        self, worker: WorkerProcess, invocation: PendingInvocation, timeout: float
    ) -> None:
        """The invocation ran past its timeout: kill its worker, fail the invocation."""
        if worker.invocation is not invocation:
            return
        worker.invocation = None
        self._counters.timeouts += 1
        self._kill(worker)
        message = (
            f"RequestId: {invocation.request_id} Error: Task timed out after {timeout:.2f} seconds"
        )
        self._lose(invocation, lambda_error("Sandbox.Timedout", message), -signal.SIGKILL)

    def on_worker_gone(self, worker: WorkerProcess) -> None:
        """The worker's frame pipe closed: it exited or is exiting. Reap it."""
        if worker.reaper is None:
            worker.reaper = self._spawn_task(self._reap(worker))

    async def _reap(self, worker: WorkerProcess) -> None:
        """Collect the exit code (EOF given: exit, else SIGTERM, else SIGKILL), then remove."""
        grace = self.settings.stop_timeout_s
        code = await wait_for_exit(worker.popen, grace)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if code is not None:
                break
            logger.warning(
                "worker %s still running %ss after EOF: sending %s", worker, grace, sig.name
            )
            worker.signal(sig)
            code = await wait_for_exit(worker.popen, grace)
        if code is None:
            logger.error("worker %s survived SIGKILL for %ss; abandoning it", worker, grace)
            code = -signal.SIGKILL
        self._remove(worker, code)

    def _remove(self, worker: WorkerProcess, code: int) -> None:
        """Drop an ended worker; whatever it was doing is lost."""
        self._workers.pop(worker.pid, None)
        if worker.state is not STOPPING:
            logger.warning("worker %s ended unexpectedly (%s)", worker, describe_exit(code))
            self._transition(worker, STOPPING)
        worker.close_transports()
        if not worker.ready.done():
            message = f"Runtime exited during init: {describe_exit(code)}"
            worker.ready.set_result(lambda_error("Runtime.ExitError", message))
        invocation, worker.invocation = worker.invocation, None
        if invocation is not None and not invocation.done:
            self._counters.workers_lost += 1
            message = (
                f"RequestId: {invocation.request_id} Error: Runtime exited with error: "
                f"{describe_exit(code)}"
            )
            self._lose(invocation, lambda_error("Runtime.ExitError", message), code)
            # its branch is about to be invoked again (kong's recovery, or a retry):
            # a replacement starting now is well into its cold start by then
            self._replace(worker.config)
        self._dispatch()

    def _lose(self, invocation: PendingInvocation, body: bytes, code: int) -> None:
        """Fail an invocation whose worker ended; Event ones go to on_worker_lost."""
        if invocation.done:
            return
        if not invocation.sync and self.on_worker_lost is not None:
            try:
                self.on_worker_lost(
                    invocation.function, invocation.payload, code, invocation.request_id
                )
            except Exception:
                logger.exception("on_worker_lost callback failed")
        self._complete(invocation, self._error_outcome(invocation, body))

    # -- outcomes -------------------------------------------------------------------

    def _complete(
        self, invocation: PendingInvocation, outcome: InvocationOutcome, expected: bool = False
    ) -> None:
        """Deliver the outcome once, free the slot, start what waits for it. An Event
        invocation's failure is logged at ERROR (nobody else hears of it) unless it was
        `expected`: taken back by `cancel` or stopped at close, as its caller asked."""
        if invocation.done:
            return
        invocation.done = True
        self._counters.completed += 1
        if invocation.holds_slot:
            self._busy -= 1
        if outcome.function_error:
            self._counters.function_errors += 1
            if not invocation.sync and not expected and not self._retry_later(invocation):
                logger.error(
                    "Event invocation %s of %s failed: %s",
                    invocation.request_id,
                    invocation.function,
                    outcome.payload[:2000].decode(errors="replace"),
                )
        if invocation.on_complete is not None:
            try:
                invocation.on_complete(outcome)
            except Exception:
                logger.exception("delivering the outcome of %s failed", invocation.request_id)
        self._dispatch()

    def _retry_later(self, invocation: PendingInvocation) -> bool:
        """Lambda's retry policy for a failed Event invocation (its handler raised, its
        worker died or timed out): deliver it again, with the same request id and
        payload, after async_retry_delay_s, then twice that, up to async_retries times.
        Whether a retry was scheduled."""
        settings = self.settings
        if invocation.retried >= settings.async_retries or self._closing:
            return False
        delay = nth_pause(invocation.retried, settings.async_retry_delay_s)
        logger.warning(
            "Event invocation %s of %s failed: delivering it again in %.1f s (retry %d of %d)",
            invocation.request_id,
            invocation.function,
            delay,
            invocation.retried + 1,
            settings.async_retries,
        )
        again = PendingInvocation(
            invocation.request_id,
            invocation.function,
            invocation.config,
            invocation.payload,
            None,
            invocation.priority,
            retried=invocation.retried + 1,
        )
        self._spawn_task(self._submit_after(again, delay))
        return True

    async def _submit_after(self, invocation: PendingInvocation, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if not self._closing:
            self.submit(invocation)

    @staticmethod
    def _error_outcome(invocation: PendingInvocation, body: bytes) -> InvocationOutcome:
        return InvocationOutcome(invocation.request_id, body, True, invocation.cold_start)

    def _stopped_outcome(self, invocation: PendingInvocation) -> InvocationOutcome:
        body = lambda_error("Gateway.Stopped", "the gateway stopped before this invocation ended")
        return self._error_outcome(invocation, body)

    def _cancelled_outcome(self, invocation: PendingInvocation) -> InvocationOutcome:
        body = lambda_error("Gateway.Cancelled", "the invocation was cancelled by its caller")
        return self._error_outcome(invocation, body)

    # -- helpers, stats, shutdown ---------------------------------------------------

    def _spawn_task(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a background coroutine; keep a reference so it is neither lost nor leaked."""
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("gateway background task failed", exc_info=task.exception())

    def retire_idle(self) -> int:
        """End every idle worker now (benchmarks use it to force cold starts)."""
        idle = [w for pool in self._idle.values() for w in pool]
        for worker in idle:
            self._retire(worker)
        return len(idle)

    def worker_pids(self) -> list[int]:
        """PIDs of every worker process not yet reaped."""
        return sorted(self._workers)

    def stats(self) -> GatewayStats:
        counters = asdict(self._counters)
        total = counters.pop("cold_start_total_s")
        cold_starts = self._counters.cold_starts
        live_by_config = {name: 0 for name in self.functions.configs}
        for worker in self._workers.values():
            live_by_config[worker.config.name] += 1
        return GatewayStats(
            **counters,
            live_workers=len(self._workers),
            busy=self._busy,
            queued=len(self._queue),
            cold_start_mean_s=total / cold_starts if cold_starts else 0.0,
            live_by_config=live_by_config,
        )

    async def close(self) -> None:
        """Fail what waits; give what runs `close_drain_s` to finish; end every worker
        (EOF, then SIGTERM, then SIGKILL); reap all."""
        self._closing = True
        self._drop_queued()
        await poll_until_async(lambda: self._busy == 0, self.settings.close_drain_s)
        stopped = sum(self._stop_worker(w) for w in list(self._workers.values()))
        if stopped:
            self._counters.stopped_at_stop += stopped
            logger.info("%d invocations still running at stop were stopped", stopped)
        for worker in list(self._workers.values()):
            self.on_worker_gone(worker)
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def _drop_queued(self) -> None:
        """At stop: fail every queued invocation. Event ones are lost work nobody else
        hears of, hence the warning (a dask-kong session has none at close: a finished
        run leaves nothing queued, and an interrupted one was taken back by `cancel`)."""
        dropped = 0
        while self._queue:
            invocation = self._queue.pop()
            dropped += not invocation.sync
            self._complete(invocation, self._stopped_outcome(invocation), expected=True)
        self._counters.dropped_at_stop += dropped
        if dropped:
            logger.warning("%d queued Event invocations dropped at stop", dropped)

    def _stop_worker(self, worker: WorkerProcess) -> bool:
        """Idle workers leave on EOF; busy or starting ones are terminated at once.
        Whether it stopped an invocation (which fails with `Gateway.Stopped`)."""
        invocation, worker.invocation = worker.invocation, None
        pending = invocation is not None and not invocation.done
        if invocation is not None:
            self._complete(invocation, self._stopped_outcome(invocation), expected=True)
        was_idle = worker.state is IDLE
        self._retire(worker)
        if not was_idle:
            worker.signal(signal.SIGTERM)
        return pending

    def kill_all_now(self, timeout_s: float) -> None:
        """Last resort from another thread when the event loop is stuck: SIGKILL by PID."""
        for worker in list(self._workers.values()):
            worker.signal(signal.SIGKILL)
            try:
                worker.popen.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("worker %s did not die after SIGKILL", worker)
