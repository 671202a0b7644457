"""`MemoryStore`: the embedded store. Values stay Python objects; nothing is serialized.

One lock guards all runs; every operation holds it only for dictionary updates, so
contention stays small next to task execution. Sizes are estimated with `dask.sizeof`,
the same estimate dask's own schedulers use, so bytes_written/bytes_read are comparable
across modes without paying for serialization.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask.sizeof import sizeof

from .base import ENDED, CommitResult, Event, FanIn, MissingKeyError, stamp_written_bytes


@dataclass
class _RunState:
    values: dict[str, Any] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    fan_ins: dict[int, set[int]] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    heartbeats: dict[str, tuple[float, int]] = field(default_factory=dict)
    claims: dict[str, str] = field(default_factory=dict)  # name -> holder
    # fan-in child -> the parent whose mark completed it (FanIn.retake)
    completed_by: dict[int, int] = field(default_factory=dict)
    cancelled: bool = False

    def write_new(self, writes: Mapping[str, Any], sized: Mapping[str, int]) -> int:
        """Keep the values of keys not written yet (a retried write keeps the first
        value); the bytes kept."""
        written = 0
        for key, value in writes.items():
            if key not in self.values:
                self.values[key] = value
                self.sizes[key] = sized[key]
                written += sized[key]
        return written

    def mark_parents_done(self, fan_ins: Sequence[FanIn]) -> list[int]:
        """Record each parent once per child; the children whose last parent this was."""
        ready = []
        for mark in fan_ins:
            parents = self.fan_ins.setdefault(mark.child, set())
            if mark.parent in parents:
                if mark.retake and self.completed_by.get(mark.child) == mark.parent:
                    ready.append(mark.child)
                continue
            parents.add(mark.parent)
            if len(parents) == mark.in_degree:
                self.completed_by[mark.child] = mark.parent
                ready.append(mark.child)
        return ready


class MemoryStore:
    """In-process `Store` for the embedded (threads) mode."""

    in_process = True

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._new_event = threading.Condition(self._lock)
        self._runs: dict[str, _RunState] = {}

    def _run(self, run_id: str) -> _RunState:
        state = self._runs.get(run_id)
        if state is None:
            state = self._runs[run_id] = _RunState()
        return state

    def commit(
        self,
        run_id: str,
        writes: Mapping[str, Any],
        fan_ins: Sequence[FanIn] = (),
        events: Sequence[Event] = (),
    ) -> CommitResult:
        result = CommitResult()
        sized = {key: sizeof(value) for key, value in writes.items()}
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:  # not opened, or deleted already: a straggler's late commit
                return result
            result.bytes_written += run.write_new(writes, sized)
            result.ready.extend(run.mark_parents_done(fan_ins))
            if events:
                stamp_written_bytes(events, sized)
                run.events.extend(events)
                if any(e.wake for e in events):
                    self._new_event.notify_all()
        return result

    def get_many(self, run_id: str, keys: Sequence[str]) -> tuple[list[Any], int]:
        with self._lock:
            run = self._runs.get(run_id)
            values = run.values if run is not None else {}
            out = []
            nbytes = 0
            for key in keys:
                if key not in values:
                    raise MissingKeyError(f"{key!r} of run {run_id} is not in the store")
                out.append(values[key])
                nbytes += run.sizes[key] if run is not None else 0
        return out, nbytes

    def forget(self, run_id: str, keys: Sequence[str]) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                for key in keys:
                    run.values.pop(key, None)

    def drop(self, run_id: str, keys: Sequence[str]) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                for key in keys:
                    run.values.pop(key, None)
                    run.sizes.pop(key, None)

    def move(self, run_id: str, keys: Sequence[str], scope: str, new_keys: Sequence[str]) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            values = run.values if run is not None else {}
            missing = [k for k in keys if k not in values]
            if missing or run is None:
                raise MissingKeyError(f"{missing[0]!r} of run {run_id} is not in the store")
            target = self._run(scope)
            for key, new_key in zip(keys, new_keys, strict=True):
                target.values[new_key] = run.values.pop(key)
                target.sizes[new_key] = run.sizes.pop(key)

    def exists(self, run_id: str, key: str) -> bool:
        with self._lock:
            run = self._runs.get(run_id)
            return run is not None and key in run.values

    def claim(self, run_id: str, names: Sequence[str], holder: str = "") -> list[bool]:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:  # a closed run: nothing to claim
                return [False] * len(names)
            claims = run.claims
            won = [name not in claims for name in names]
            for name in names:
                claims.setdefault(name, holder)
        return won

    def release_claims(self, run_id: str, holder: str) -> int:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return 0
            held = [name for name, h in run.claims.items() if h == holder]
            for name in held:
                del run.claims[name]
        return len(held)

    def fan_in_progress(self, run_id: str, children: Sequence[int]) -> list[int]:
        with self._lock:
            run = self._runs.get(run_id)
            fan_ins = run.fan_ins if run is not None else {}
            return [len(fan_ins.get(c, ())) for c in children]

    def sizes(self, run_id: str, keys: Sequence[str]) -> list[int]:
        with self._lock:
            run = self._runs.get(run_id)
            return [run.sizes.get(k, 0) if run else 0 for k in keys]

    def events(self, run_id: str, cursor: str, timeout_s: float) -> tuple[str, list[Event]]:
        start = int(cursor)
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while True:
                run = self._runs.get(run_id)
                if run is not None and len(run.events) > start:
                    new = run.events[start:]
                    return str(start + len(new)), new
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return cursor, []
                self._new_event.wait(remaining)

    def open_run(self, run_id: str) -> None:
        with self._lock:
            self._run(run_id)

    def heartbeat(self, run_id: str, beats: Mapping[str, int]) -> None:
        now = time.monotonic()
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:  # not opened, or deleted already: a straggler's last beat
                return
            for worker, task in beats.items():
                if run.heartbeats.get(worker, (now, 0))[1] != ENDED:
                    run.heartbeats[worker] = (now, task)

    def live_workers(self, run_id: str, ttl_s: float) -> dict[str, int]:
        beats = self.heartbeats(run_id)
        return {w: t for w, (age, t) in beats.items() if age < ttl_s and t != ENDED}

    def heartbeats(self, run_id: str) -> dict[str, tuple[float, int]]:
        now = time.monotonic()
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return {}
            return {w: (now - at, t) for w, (at, t) in run.heartbeats.items()}

    def cancel(self, run_id: str) -> None:
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None:
                run.cancelled = True

    def is_cancelled(self, run_id: str) -> bool:
        run = self._runs.get(run_id)  # a racy read is fine: cancellation is best effort
        return run is None or run.cancelled

    def delete_run(self, run_id: str) -> int:
        with self._lock:
            run = self._runs.pop(run_id, None)
        if run is None:
            return 0
        return len(run.values) + len(run.fan_ins) + (1 if run.events else 0)

    def run_keys(self, run_id: str) -> list[str]:
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                return []
            return [*run.values, *(f"fanin:{c}" for c in run.fan_ins)]

    def close(self) -> None:
        with self._lock:
            self._runs.clear()
