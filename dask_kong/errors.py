"""Errors dask-kong raises, each naming what went wrong."""

from __future__ import annotations


class KongError(RuntimeError):
    """Base class of dask-kong's own errors."""


class StuckRunError(KongError):
    """A run made no progress (no finished task, no live worker) within its stall timeout,
    or passed its deadline. The message names the tasks that never finished."""


class RunCancelledError(KongError):
    """The run's caller stopped it (`Client.close(timeout=)` ran out): its workers were
    stopped and its keys deleted, as after an interrupt."""


class WorkerLostError(KongError):
    """A worker died while running a task (process killed, out of memory)."""


class StoreUnavailableError(KongError):
    """The store (Redis) could not be reached after the configured retries."""


class SerializationError(KongError):
    """A task, its input or its output could not be pickled to leave this process."""


class MissingOutputError(KongError):
    """A task's input was not in the worker, the payload nor the store."""


class RemoteTaskError(KongError):
    """Stands in for a task's exception when the exception itself could not be pickled."""


class StateLostError(KongError):
    """A worker that held a stateful task's handle (`dask_kong.values`) was lost: the
    state lived in that process, and a stateful task never runs twice."""


class MisconfiguredError(KongError):
    """A start-up check failed: the Lambda function is missing, runs another dask-kong,
    cannot start an invocation, or reaches another store than the client."""
