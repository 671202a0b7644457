"""Worker processes behind the local gateway: warm pools, cold starts, keep-warm, limits.

The policy is AWS Lambda's, on one machine:

- One warm pool per resource config. An invocation takes an idle worker of its config
  (a warm start; most recently used first, so surplus workers age out) or starts a new
  process (a cold start: interpreter start plus handler import, timed until READY).
- At most `concurrency` invocations hold a slot (running or cold-starting); the others
  wait in one queue and are never dropped. The queue starts the highest `priority`
  first, first come first served among equals; but one that has waited longer than
  `priority_window_s` starts before any newer one, so no run starves behind another's
  more urgent work. Lambda has no such queue (it starts
  every Event invocation at once); a local gateway bounded by a machine's cores does,
  and FIFO there made a small task that many fan-ins wait on sit behind work that
  could wait (see `DAG.successors`). Live workers are capped at
  `concurrency` too: a cold start first ends the longest-idle worker when at the cap.
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

Everything here runs on the gateway's event loop thread and is not thread-safe; the
gateway hops onto that thread for every call from outside.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ...invocation import pipe
from ...invocation.pipe import Frame, FrameDecoder, FrameKind
from ...waits import poll_until_async
from . import worker_main
from .resources import FunctionTable, ResourceConfig, function_arn
from .settings import PoolSettings
from .worker_main import lambda_error

logger = logging.getLogger("dask_kong.gateway")

OutcomeCallback = Callable[["InvocationOutcome"], None]
# (function name, event payload) -> whether `cancel` takes this invocation back
InvocationMatcher = Callable[[str, bytes], bool]
# (function name, event payload, exit code: negative for a signal, like Popen.returncode)
WorkerLostCallback = Callable[[str, bytes, int], None]

# Environment variables that size the thread pools of BLAS and OpenMP libraries. They are
# read once, when those libraries load, so they go into the worker's environment.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)

# A worker is started with `python -c`: this loads the pipe protocol and worker_main from
# their files under their real module names, so the worker does not import the dask_kong
# package (and dask) just to start; a handler that needs them pays for them in its own
# import.
_WORKER_BOOTSTRAP = (
    "import importlib.util as u, sys\n"
    "def load(name, path):\n"
    "    s = u.spec_from_file_location(name, path)\n"
    "    m = sys.modules[name] = u.module_from_spec(s)\n"
    "    s.loader.exec_module(m)\n"
    "    return m\n"
    "load('dask_kong.invocation.pipe', sys.argv[1])\n"
    "m = load('dask_kong.backends.processes.worker_main', sys.argv[2])\n"
    "sys.exit(m.main(sys.argv[3:]))\n"
)

# Room for a frame's prefix and JSON header on top of the largest allowed payload.
_FRAME_HEADER_ALLOWANCE = 64 * 1024


def new_request_id() -> str:
    """A Lambda-style request id (a UUID)."""
    return str(uuid.uuid4())


@dataclass(frozen=True)
class InvocationOutcome:
    """How one invocation ended: the handler's JSON result, or a Lambda error body.

    `cold_start` is None when no worker ran it (lost while starting, gateway stopped).
    """

    request_id: str
    payload: bytes
    function_error: bool
    cold_start: bool | None


@dataclass(eq=False)
class PendingInvocation:
    """An invocation from the moment it is accepted until its outcome is delivered.

    `on_complete` is None for Event invocations: nobody waits for their outcome.
    """

    request_id: str
    function: str
    config: ResourceConfig
    payload: bytes
    on_complete: OutcomeCallback | None
    # higher starts first when invocations wait for a slot (kong: DAG.successors)
    priority: int = 0
    cold_start: bool | None = None
    holds_slot: bool = False
    done: bool = False
    # monotonic: accepted by the gateway, and given a slot (the wait is reported to the
    # handler as `context.queued_s`, so start-up samples leave queueing out)
    accepted_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0

    @property
    def sync(self) -> bool:
        return self.on_complete is not None


class WorkerState(enum.StrEnum):
    STARTING = "starting"  # spawned, handler not imported yet
    IDLE = "idle"  # warm, waiting in its config's pool
    BUSY = "busy"  # running one invocation
    STOPPING = "stopping"  # retired, killed or dead: never given work again


@dataclass(frozen=True)
class GatewayStats:
    """A snapshot of what the gateway did since it started, and what it holds now."""

    invocations: int  # accepted: sync + async
    sync_invocations: int
    async_invocations: int  # includes pipe_invocations
    pipe_invocations: int  # started by handlers through invoke_via_gateway
    completed: int  # delivered an outcome, success or error
    function_errors: int  # outcomes that are Lambda errors (raised, lost, timed out)
    cold_starts: int
    warm_starts: int
    workers_lost: int  # died mid-invocation (not counting timeouts)
    timeouts: int
    expired_workers: int  # exited after keep_warm_s idle
    evicted_workers: int  # ended early to make room for a cold start of another config
    dropped_at_stop: int  # Event invocations still queued when the gateway stopped
    stopped_at_stop: int  # invocations still running after the drain at stop
    cancelled: int  # taken back by cancel(): dropped from the queue or their worker killed
    live_workers: int
    busy: int  # invocations running or cold-starting now
    max_busy: int
    queued: int
    max_queued: int
    cold_start_mean_s: float  # spawn to handler imported, over all cold starts
    cold_start_max_s: float
    live_by_config: dict[str, int]


@dataclass
class _Counters:
    """The monotonically growing part of GatewayStats."""

    invocations: int = 0
    sync_invocations: int = 0
    async_invocations: int = 0
    pipe_invocations: int = 0
    completed: int = 0
    function_errors: int = 0
    cold_starts: int = 0
    warm_starts: int = 0
    workers_lost: int = 0
    timeouts: int = 0
    expired_workers: int = 0
    evicted_workers: int = 0
    dropped_at_stop: int = 0
    stopped_at_stop: int = 0
    cancelled: int = 0
    max_busy: int = 0
    max_queued: int = 0
    cold_start_total_s: float = 0.0
    cold_start_max_s: float = 0.0


def describe_exit(code: int) -> str:
    """Lambda's wording for how a runtime process ended."""
    if code < 0:
        try:
            return f"signal: {signal.Signals(-code).name}"
        except ValueError:
            return f"signal: {-code}"
    return f"exit status {code}"


def python_path() -> str:
    """This process's import path, so a worker imports the handler this process would."""
    entries = [os.path.abspath(p or os.getcwd()) for p in sys.path if isinstance(p, str)]
    return os.pathsep.join(dict.fromkeys(entries))


def worker_environment(
    config: ResourceConfig, gateway_url: str, extra: Mapping[str, str]
) -> dict[str, str]:
    """The environment of a worker of `config`; `extra` (the caller's) wins."""
    env = dict(os.environ)
    env.update({name: str(config.cpus) for name in THREAD_VARIABLES})
    env.update(
        {
            "PYTHONPATH": python_path(),
            # Log lines reach the gateway as they are printed, not when a buffer fills.
            "PYTHONUNBUFFERED": "1",
            worker_main.ENV_GATEWAY_URL: gateway_url,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(config.memory_mb),
        }
    )
    env.update(extra)
    return env


class _FrameProtocol(asyncio.Protocol):
    """Reads a worker's frames; the pipe closing means the worker ended."""

    def __init__(self, pool: WorkerPool, worker: WorkerProcess, max_frame_bytes: int) -> None:
        self._pool = pool
        self._worker = worker
        self._decoder = FrameDecoder(max_frame_bytes)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ValueError:
            logger.exception("corrupt frame stream from worker %s: killing it", self._worker)
            self._worker.kill()
            return
        for frame in frames:
            self._pool.on_frame(self._worker, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.on_worker_gone(self._worker)


class _OutputProtocol(asyncio.Protocol):
    """Forwards a worker's stdout and stderr, line by line, to the gateway's logger."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._log(line)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._log(self._partial)

    def _log(self, line: bytes) -> None:
        logger.info("[%s] %s", self._label, line.decode(errors="replace").rstrip())


class WorkerProcess:
    """One worker process and the gateway's ends of its pipes."""

    def __init__(
        self,
        config: ResourceConfig,
        popen: subprocess.Popen[bytes],
        requests_fd: int,
        frames_fd: int,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.config = config
        self.popen = popen
        self.pid = popen.pid
        self.state = WorkerState.STARTING
        self.spawned_at = time.monotonic()
        # Resolves when the worker is READY (None) or failed to start (a Lambda error body).
        self.ready: asyncio.Future[bytes | None] = loop.create_future()
        self.invocation: PendingInvocation | None = None
        self.idle_since = 0.0
        self.idle_timer: asyncio.TimerHandle | None = None
        self.deadline_timer: asyncio.TimerHandle | None = None
        self.reaper: asyncio.Task[None] | None = None
        self._requests_fd: int | None = requests_fd
        self._frames_fd: int | None = frames_fd
        self._requests: asyncio.WriteTransport | None = None
        self._transports: list[asyncio.BaseTransport] = []
        self._closed = False

    def __repr__(self) -> str:
        return f"<worker {self.config.name} pid={self.pid} {self.state.value}>"

    async def connect(self, pool: WorkerPool, max_frame_bytes: int) -> None:
        """Attach the pipes to the event loop: frames in, requests out, log lines in."""
        loop = asyncio.get_running_loop()
        frames_fd, requests_fd = self._frames_fd, self._requests_fd
        assert frames_fd is not None and requests_fd is not None and self.popen.stdout
        self._frames_fd = self._requests_fd = None
        frames, _ = await loop.connect_read_pipe(
            lambda: _FrameProtocol(pool, self, max_frame_bytes), os.fdopen(frames_fd, "rb", 0)
        )
        requests, _ = await loop.connect_write_pipe(
            asyncio.BaseProtocol, os.fdopen(requests_fd, "wb", 0)
        )
        label = f"{self.config.name} pid {self.pid}"
        output, _ = await loop.connect_read_pipe(lambda: _OutputProtocol(label), self.popen.stdout)
        self._requests = requests
        self._transports = [frames, requests, output]
        if self._closed:  # removed while the pipes were being attached
            self.close_transports()

    def send_invocation(self, invocation: PendingInvocation, timeout_s: float) -> None:
        """Hand the invocation to the (idle) worker."""
        assert self._requests is not None
        header = pipe.encode_header(
            {
                "id": invocation.request_id,
                "fn": invocation.function,
                "arn": function_arn(invocation.function),
                "timeout_ms": int(timeout_s * 1000),
                "queued_s": max(0.0, invocation.started_at - invocation.accepted_at),
            }
        )
        prefix = pipe.encode_prefix(FrameKind.INVOKE, header, len(invocation.payload))
        self._requests.writelines([prefix, invocation.payload])

    def close_requests(self) -> None:
        """EOF on the request pipe: the worker exits once it has no invocation left."""
        if self._requests is not None:
            self._requests.close()
        for fd in (self._requests_fd, self._frames_fd):
            if fd is not None:
                os.close(fd)
        self._requests_fd = self._frames_fd = None

    def cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.deadline_timer = None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` unless the process was already reaped (its PID may be reused)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def kill(self) -> None:
        self.state = WorkerState.STOPPING
        self.signal(signal.SIGKILL)

    def close_transports(self) -> None:
        """Release every pipe of an ended worker (again after a late `connect`)."""
        self._closed = True
        self.close_requests()
        for transport in self._transports:
            transport.close()
        if self.popen.stdout is not None and not self._transports:
            self.popen.stdout.close()


async def wait_for_exit(popen: subprocess.Popen[bytes], timeout_s: float) -> int | None:
    """The exit code once the process ended, or None after `timeout_s` (polls, backoff)."""
    await poll_until_async(lambda: popen.poll() is not None, timeout_s)
    return popen.poll()


class WorkerPool:
    """Runs invocations on worker processes; see the module docstring for the policy."""

    def __init__(
        self,
        settings: PoolSettings,
        functions: FunctionTable,
        gateway_url: str,
        on_worker_lost: WorkerLostCallback | None = None,
    ) -> None:
        self.settings = settings
        self.functions = functions
        self.on_worker_lost = on_worker_lost
        self._loop = asyncio.get_running_loop()
        self._envs = {
            name: worker_environment(c, gateway_url, settings.env)
            for name, c in functions.configs.items()
        }
        self._max_frame_bytes = (
            max(settings.max_sync_payload_bytes, settings.max_async_payload_bytes)
            + _FRAME_HEADER_ALLOWANCE
        )
        # (-priority, arrival number, invocation): a heap, highest priority first, FIFO
        # among equals (the arrival number also keeps invocations out of comparisons).
        # `_arrival_order` holds the same invocations oldest first, for the priority
        # window. An invocation started from one is left in the other, skipped later.
        self._queue: list[tuple[int, int, PendingInvocation]] = []
        self._arrival_order: deque[PendingInvocation] = deque()
        self._waiting = 0
        self._arrivals = itertools.count()
        self._busy = 0
        self._idle: dict[str, list[WorkerProcess]] = {name: [] for name in functions.configs}
        self._workers: dict[int, WorkerProcess] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = _Counters()
        self._dispatching = False
        self._closing = False

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
        heapq.heappush(self._queue, (-invocation.priority, next(self._arrivals), invocation))
        self._arrival_order.append(invocation)
        self._waiting += 1
        counters.max_queued = max(counters.max_queued, self._waiting)
        self._dispatch()

    def _dispatch(self) -> None:
        """Start queued invocations while slots are free. Re-entrant calls are no-ops:
        the outer loop sees every slot they would have freed."""
        if self._dispatching:
            return
        self._dispatching = True
        try:
            while self._waiting and self._busy < self.settings.concurrency:
                self._start(self._next_queued())
        finally:
            self._dispatching = False

    def _next_queued(self) -> PendingInvocation:
        """The queued invocation to start next: the oldest if it has waited past the
        priority window, else the most urgent (there is one: `_waiting` > 0)."""
        while self._arrival_order[0].holds_slot or self._arrival_order[0].done:
            self._arrival_order.popleft()
        oldest = self._arrival_order[0]
        if time.monotonic() - oldest.accepted_at > self.settings.priority_window_s:
            invocation = self._arrival_order.popleft()
        else:
            while True:
                invocation = heapq.heappop(self._queue)[2]
                if not (invocation.holds_slot or invocation.done):
                    break
        self._waiting -= 1
        return invocation

    def _start(self, invocation: PendingInvocation) -> None:
        """Give the invocation a slot and a worker: warm if one is idle, else a new one."""
        invocation.holds_slot = True
        invocation.started_at = time.monotonic()
        self._busy += 1
        self._counters.max_busy = max(self._counters.max_busy, self._busy)
        worker = self._take_idle(invocation.config)
        if worker is not None:
            self._counters.warm_starts += 1
            self._run(worker, invocation, cold_start=False)
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
        self._counters.cold_starts += 1
        worker.invocation = invocation
        self._spawn_task(self._cold_start(worker))

    def _take_idle(self, config: ResourceConfig) -> WorkerProcess | None:
        """The most recently used idle worker of `config`, out of the idle pool."""
        pool = self._idle[config.name]
        while pool:
            worker = pool.pop()
            if worker.state is WorkerState.IDLE:
                worker.cancel_timers()
                return worker
        return None

    def _make_room(self) -> None:
        """Before a cold start at the live-worker cap, end the longest-idle worker."""
        live = sum(w.state is not WorkerState.STOPPING for w in self._workers.values())
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
            for invocation in self._queued():
                if matches(invocation.function, invocation.payload):
                    self._waiting -= 1
                    self._take_back(invocation)
            killed = [w for w in list(self._workers.values()) if self._cancel_running(w, matches)]
            for config in {w.config.name: w.config for w in killed}.values():
                self._replace(config)
        finally:
            self._dispatching = False
        self._dispatch()
        return [worker.pid for worker in killed]

    def _queued(self) -> list[PendingInvocation]:
        """The invocations waiting for a slot, oldest first (a snapshot)."""
        return [i for i in self._arrival_order if not (i.holds_slot or i.done)]

    def _cancel_running(self, worker: WorkerProcess, matches: InvocationMatcher) -> bool:
        """Kill `worker` when the invocation it runs (or starts for) matches: a handler
        cannot be interrupted mid-call. Its reaper removes it quietly (it is STOPPING)."""
        invocation = worker.invocation
        if invocation is None or invocation.done:
            return False
        if not matches(invocation.function, invocation.payload):
            return False
        worker.invocation = None
        worker.cancel_timers()
        worker.kill()
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
        self._counters.cold_starts += 1
        self._spawn_task(self._cold_start(worker))

    def _take_spare(self, config: ResourceConfig) -> WorkerProcess | None:
        """A spare worker of `config` still starting that no invocation claimed yet."""
        for worker in self._workers.values():
            starting = worker.state is WorkerState.STARTING and worker.invocation is None
            if starting and worker.config.name == config.name:
                return worker
        return None

    def _take_back(self, invocation: PendingInvocation) -> None:
        """Complete a cancelled invocation: a sync caller gets `Gateway.Cancelled`."""
        self._counters.cancelled += 1
        self._complete(invocation, self._cancelled_outcome(invocation), expected=True)

    # -- worker lifecycle -----------------------------------------------------------

    def _spawn(self, config: ResourceConfig) -> WorkerProcess:
        """Start a worker process for `config` (OSError when the OS refuses)."""
        requests_r, requests_w = os.pipe()
        frames_r, frames_w = os.pipe()
        command = [
            sys.executable,
            "-c",
            _WORKER_BOOTSTRAP,
            pipe.__file__,
            worker_main.__file__,
            f"--handler={self.settings.handler}",
            f"--memory-mb={config.memory_mb}",
            f"--in-fd={requests_r}",
            f"--out-fd={frames_w}",
            f"--max-response-bytes={self.settings.max_sync_payload_bytes}",
            f"--max-async-bytes={self.settings.max_async_payload_bytes}",
        ]
        try:
            popen = subprocess.Popen(
                command,
                pass_fds=(requests_r, frames_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=self._envs[config.name],
                # Its own session: a Ctrl-C in the gateway's terminal must not reach the
                # workers mid-invocation; the gateway ends them itself.
                start_new_session=True,
            )
        except OSError:
            os.close(requests_w)
            os.close(frames_r)
            raise
        finally:
            os.close(requests_r)
            os.close(frames_w)
        worker = WorkerProcess(config, popen, requests_w, frames_r)
        self._workers[worker.pid] = worker
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
        if worker.state is WorkerState.STOPPING:  # stopped before it was even connected
            return
        try:
            await worker.connect(self, self._max_frame_bytes)
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
        if worker.state is WorkerState.STOPPING:  # killed by cancel() as it got ready
            return
        if self._closing or invocation is None or invocation.done:
            self._make_idle(worker)  # retires it when closing
            return
        self._run(worker, invocation, cold_start=True)

    def _fail_start(self, worker: WorkerProcess, error_type: str, message: str) -> None:
        """Kill a worker that could not start; the invocation it holds is lost with it
        (a sync caller gets `error_type`, an Event one goes to `on_worker_lost`)."""
        invocation, worker.invocation = worker.invocation, None
        worker.kill()
        if invocation is not None:
            text = f"RequestId: {invocation.request_id} Error: {message}"
            self._lose(invocation, lambda_error(error_type, text), -signal.SIGKILL)

    def _record_cold_start(self, worker: WorkerProcess) -> None:
        elapsed = time.monotonic() - worker.spawned_at
        self._counters.cold_start_total_s += elapsed
        self._counters.cold_start_max_s = max(self._counters.cold_start_max_s, elapsed)
        logger.debug("cold start of %s took %.3fs", worker, elapsed)

    def _run(self, worker: WorkerProcess, invocation: PendingInvocation, cold_start: bool) -> None:
        """Send the invocation to its worker and arm its timeout."""
        worker.state = WorkerState.BUSY
        worker.invocation = invocation
        invocation.cold_start = cold_start
        timeout = invocation.config.timeout_s or self.settings.invocation_timeout_s
        worker.send_invocation(invocation, timeout)
        worker.deadline_timer = self._loop.call_later(
            timeout, self._on_timeout, worker, invocation, timeout
        )

    def _make_idle(self, worker: WorkerProcess) -> None:
        """Back into the warm pool, with its keep-warm timer armed."""
        if self._closing:
            self._retire(worker)
            return
        worker.state = WorkerState.IDLE
        worker.idle_since = time.monotonic()
        self._idle[worker.config.name].append(worker)
        worker.idle_timer = self._loop.call_later(self.settings.keep_warm_s, self._expire, worker)

    def _expire(self, worker: WorkerProcess) -> None:
        """Keep-warm window over: the worker leaves, like an idle Lambda container."""
        if worker.state is WorkerState.IDLE:
            self._counters.expired_workers += 1
            logger.debug("worker %s idle for %ss: retiring it", worker, self.settings.keep_warm_s)
            self._retire(worker)

    def _retire(self, worker: WorkerProcess) -> None:
        """Stop giving `worker` work and let it exit on EOF; its reaper removes it."""
        self._forget_idle(worker)
        worker.cancel_timers()
        worker.state = WorkerState.STOPPING
        worker.close_requests()

    def _forget_idle(self, worker: WorkerProcess) -> None:
        pool = self._idle[worker.config.name]
        if worker in pool:
            pool.remove(worker)

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

    def _on_result(self, worker: WorkerProcess, frame: Frame) -> None:
        invocation = worker.invocation
        if invocation is None or frame.header.get("id") != invocation.request_id:
            logger.debug("late result from %s ignored", worker)
            return
        worker.cancel_timers()
        worker.invocation = None
        self._make_idle(worker)
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
        if worker.state is WorkerState.STOPPING:
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
        self._forget_idle(worker)
        worker.cancel_timers()
        worker.kill()
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
        self._forget_idle(worker)
        worker.cancel_timers()
        worker.close_transports()
        if worker.state is not WorkerState.STOPPING:
            logger.warning("worker %s ended unexpectedly (%s)", worker, describe_exit(code))
        worker.state = WorkerState.STOPPING
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
        self._dispatch()

    def _lose(self, invocation: PendingInvocation, body: bytes, code: int) -> None:
        """Fail an invocation whose worker ended; Event ones go to on_worker_lost."""
        if invocation.done:
            return
        if not invocation.sync and self.on_worker_lost is not None:
            try:
                self.on_worker_lost(invocation.function, invocation.payload, code)
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
            if not invocation.sync and not expected:
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
            queued=self._waiting,
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
        while self._waiting:
            invocation = self._next_queued()
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
        was_idle = worker.state is WorkerState.IDLE
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
