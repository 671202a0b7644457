"""One poll-with-backoff for the bounded waits of dask-kong.

A wait asks its condition, then pauses, each pause twice the last from `first_s` up to
`max_s`, until the condition holds or `timeout_s` has passed. Short first pauses catch
what is about to happen (a worker finishing its last commit); the cap keeps a long wait
cheap for whatever it asks (a store round-trip, the process table). huey's
`BaseStorage.wait_result` is the model: one helper, every wait, never an unbounded loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterator

# The first pause: about what a local store round-trip or a process exit takes.
FIRST_PAUSE_S = 0.001
# The longest pause: a condition that just came true is seen within this long.
MAX_PAUSE_S = 0.05


def pauses(first_s: float = FIRST_PAUSE_S, max_s: float = MAX_PAUSE_S) -> Iterator[float]:
    """The pauses between checks: `first_s`, doubling, capped at `max_s` (endless)."""
    tries = 0
    while True:
        yield nth_pause(tries, first_s, max_s)
        tries += 1


def nth_pause(tries: int, first_s: float, max_s: float = math.inf) -> float:
    """The pause after `tries` earlier ones, for a caller that keeps the count itself
    (a retried invocation carries it): `first_s` doubled `tries` times, capped."""
    return min(first_s * 2.0**tries, max_s)


def poll_until(
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    first_s: float = FIRST_PAUSE_S,
    max_s: float = MAX_PAUSE_S,
) -> bool:
    """Whether `condition()` held within `timeout_s` (asked at once, then after each
    pause; the last pause is cut short at the deadline)."""
    deadline = time.monotonic() + timeout_s
    for pause in pauses(first_s, max_s):
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
    raise AssertionError("unreachable: pauses() never ends")


async def poll_until_async(
    condition: Callable[[], bool],
    timeout_s: float,
    *,
    first_s: float = FIRST_PAUSE_S,
    max_s: float = MAX_PAUSE_S,
) -> bool:
    """`poll_until` for an event loop: the pauses yield to the loop instead of blocking
    it, so what the condition waits for (a pipe closing, a result frame) can happen."""
    deadline = time.monotonic() + timeout_s
    for pause in pauses(first_s, max_s):
        if condition():
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(pause, remaining))
    raise AssertionError("unreachable: pauses() never ends")
