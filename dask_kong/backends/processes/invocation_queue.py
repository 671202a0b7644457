"""The queue of invocations waiting for one of the pool's concurrency slots.

The highest `priority` starts first, first come first served among equals; but one that
has waited longer than the priority window starts before any newer one, so no run
starves behind another's more urgent work. Lambda has no such queue (it starts every
Event invocation at once); a local gateway bounded by a machine's cores does, and FIFO
there made a small task that many fan-ins wait on sit behind work that could wait (see
`DAG.urgency`).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import deque

from .pending import PendingInvocation


class InvocationQueue:
    """Invocations in the order they should start: two views of one set, a heap by
    priority and a FIFO by arrival. An invocation taken out through one view (or
    removed) stays in the other until it reaches that view's front, where it is skipped:
    both takes stay O(log n) without searching."""

    def __init__(self, priority_window_s: float) -> None:
        #: beyond this wait (seconds) the oldest invocation goes first, whatever its rank
        self.priority_window_s = priority_window_s
        #: (-priority, arrival number, invocation): most urgent first, FIFO among equals;
        #: the arrival number also keeps invocations out of comparisons
        self._by_priority: list[tuple[int, int, PendingInvocation]] = []
        #: the same invocations, oldest first
        self._by_arrival: deque[PendingInvocation] = deque()
        #: what is queued now; an entry of either view not in here is stale
        self._queued: set[PendingInvocation] = set()
        #: numbers arrivals, for FIFO among equal priorities
        self._arrivals = itertools.count()

    def __len__(self) -> int:
        return len(self._queued)

    def push(self, invocation: PendingInvocation) -> None:
        """Queue `invocation` behind everything of its priority."""
        heapq.heappush(self._by_priority, (-invocation.priority, next(self._arrivals), invocation))
        self._by_arrival.append(invocation)
        self._queued.add(invocation)

    def pop(self) -> PendingInvocation:
        """Take out the invocation to start next: the oldest if it has waited past the
        priority window, else the most urgent. IndexError when the queue is empty."""
        if not self._queued:
            raise IndexError("pop from an empty invocation queue")
        while self._by_arrival[0] not in self._queued:
            self._by_arrival.popleft()
        if time.monotonic() - self._by_arrival[0].accepted_at > self.priority_window_s:
            invocation = self._by_arrival.popleft()
        else:
            invocation = heapq.heappop(self._by_priority)[2]
            while invocation not in self._queued:
                invocation = heapq.heappop(self._by_priority)[2]
        self._queued.discard(invocation)
        return invocation

    def remove(self, invocation: PendingInvocation) -> None:
        """Take `invocation` out wherever it is (cancelled); its entries go stale."""
        self._queued.discard(invocation)

    def oldest_first(self) -> list[PendingInvocation]:
        """What is queued, oldest first (a snapshot: safe to remove from while iterating)."""
        return [i for i in self._by_arrival if i in self._queued]
