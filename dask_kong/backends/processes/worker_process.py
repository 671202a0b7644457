"""One worker process of the local gateway: how it is started, its states, and the
gateway's ends of its pipes.

A worker is a fresh interpreter running `worker_main` (see `_WORKER_BOOTSTRAP`): it
imports its handler, sends READY, then runs one invocation at a time, each sent as an
INVOKE frame on its request pipe and answered with a RESULT frame on its frame pipe
(`dask_kong.invocation.pipe`). EOF on the request pipe tells it to exit. Its stdout and
stderr are log lines, forwarded to the gateway's logger.

`WorkerProcess` does the I/O; what a worker's state means and when it changes is the
pool's business (`pool.py`, whose `_transition` is the one place that sets `state`).
Everything here runs on the gateway's event loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Protocol

from ...invocation import pipe
from ...invocation.pipe import Frame, FrameDecoder, FrameKind
from ...waits import poll_until_async
from . import worker_main
from .pending import PendingInvocation
from .resources import ResourceConfig, function_arn
from .settings import PoolSettings

logger = logging.getLogger("dask_kong.gateway")

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


class WorkerState(enum.StrEnum):
    """Where a worker is in its life. Changes only through the pool's `_transition`:
    STARTING -> BUSY or IDLE, IDLE <-> BUSY, and any -> STOPPING, which is final."""

    STARTING = "starting"  # spawned, handler not imported yet
    IDLE = "idle"  # warm, waiting in its config's pool
    BUSY = "busy"  # running one invocation
    STOPPING = "stopping"  # retired, killed or dead: never given work again


class WorkerEvents(Protocol):
    """What a worker's pipes report to (the pool), on the event loop thread."""

    def on_frame(self, worker: WorkerProcess, frame: Frame) -> None:
        """The worker sent `frame`."""

    def on_corrupt_stream(self, worker: WorkerProcess) -> None:
        """The worker's frame pipe carried something that is not a frame."""

    def on_worker_gone(self, worker: WorkerProcess) -> None:
        """The worker's frame pipe closed: it exited or is exiting."""


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


def max_frame_bytes(settings: PoolSettings) -> int:
    """The largest frame a worker may send: the largest allowed payload plus room for
    the prefix and header. Anything larger is a corrupt stream."""
    largest = max(settings.max_sync_payload_bytes, settings.max_async_payload_bytes)
    return largest + _FRAME_HEADER_ALLOWANCE


def worker_command(
    config: ResourceConfig, settings: PoolSettings, requests_fd: int, frames_fd: int
) -> list[str]:
    """The command line of a worker of `config` reading requests from `requests_fd` and
    writing frames to `frames_fd` (its ends of the two pipes)."""
    return [
        sys.executable,
        "-c",
        _WORKER_BOOTSTRAP,
        pipe.__file__,
        worker_main.__file__,
        f"--handler={settings.handler}",
        f"--memory-mb={config.memory_mb}",
        f"--in-fd={requests_fd}",
        f"--out-fd={frames_fd}",
        f"--max-response-bytes={settings.max_sync_payload_bytes}",
        f"--max-async-bytes={settings.max_async_payload_bytes}",
    ]


class _FrameProtocol(asyncio.Protocol):
    """Reads a worker's frames; the pipe closing means the worker ended."""

    def __init__(self, events: WorkerEvents, worker: WorkerProcess, limit: int) -> None:
        self._events = events
        self._worker = worker
        self._decoder = FrameDecoder(limit)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ValueError:
            logger.exception("corrupt frame stream from worker %s: killing it", self._worker)
            self._events.on_corrupt_stream(self._worker)
            return
        for frame in frames:
            self._events.on_frame(self._worker, frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._events.on_worker_gone(self._worker)


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
        #: the resource config it runs (memory limit, threads)
        self.config = config
        #: the process; its stdout (stderr joined) carries log lines
        self.popen = popen
        #: its PID, the pool's key for it, kept after the process is reaped
        self.pid = popen.pid
        #: see `WorkerState`; set by the pool's `_transition` only
        self.state = WorkerState.STARTING
        #: monotonic time it was spawned, for the cold start's duration
        self.spawned_at = time.monotonic()
        #: resolves when the worker is READY (None) or failed to start (a Lambda error body)
        self.ready: asyncio.Future[bytes | None] = loop.create_future()
        #: what it runs, or is starting for (a cold start); None when idle or a spare
        self.invocation: PendingInvocation | None = None
        #: monotonic time it last became idle (the longest idle is evicted first)
        self.idle_since = 0.0
        #: ends its keep-warm window, while idle
        self.idle_timer: asyncio.TimerHandle | None = None
        #: fails its invocation at the timeout, while busy
        self.deadline_timer: asyncio.TimerHandle | None = None
        #: the task collecting its exit code once its frame pipe closed
        self.reaper: asyncio.Task[None] | None = None
        #: the gateway's raw pipe ends until `connect` attaches them to the loop
        self._requests_fd: int | None = requests_fd
        self._frames_fd: int | None = frames_fd
        #: the request pipe, once attached
        self._requests: asyncio.WriteTransport | None = None
        #: every attached pipe: frames, requests, log output
        self._transports: list[asyncio.BaseTransport] = []
        #: its pipes were released; a `connect` still under way releases what it attaches
        self._closed = False

    def __repr__(self) -> str:
        return f"<worker {self.config.name} pid={self.pid} {self.state.value}>"

    @classmethod
    def spawn(
        cls, config: ResourceConfig, settings: PoolSettings, env: Mapping[str, str]
    ) -> WorkerProcess:
        """Start a worker process for `config` (OSError when the OS refuses)."""
        requests_r, requests_w = os.pipe()
        frames_r, frames_w = os.pipe()
        try:
            popen = subprocess.Popen(
                worker_command(config, settings, requests_r, frames_w),
                pass_fds=(requests_r, frames_w),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=dict(env),
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
        return cls(config, popen, requests_w, frames_r)

    async def connect(self, events: WorkerEvents, frame_limit: int) -> None:
        """Attach the pipes to the event loop: frames in, requests out, log lines in."""
        loop = asyncio.get_running_loop()
        frames_fd, requests_fd = self._frames_fd, self._requests_fd
        assert frames_fd is not None and requests_fd is not None and self.popen.stdout
        self._frames_fd = self._requests_fd = None
        frames, _ = await loop.connect_read_pipe(
            lambda: _FrameProtocol(events, self, frame_limit), os.fdopen(frames_fd, "rb", 0)
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
        """Disarm the keep-warm and timeout timers (whichever is armed)."""
        for timer in (self.idle_timer, self.deadline_timer):
            if timer is not None:
                timer.cancel()
        self.idle_timer = self.deadline_timer = None

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` unless the process was already reaped (its PID may be reused)."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

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
