"""Fault injection: a switch (`kong.faults` in kong.yaml) that makes workers die and
invocations arrive twice, so recovery is tested and measured as users will meet it.

Off by default. The client's settings travel with each run (`RunSettings.faults`), so
setting `kong.faults` in the client (dask.config.set, a YAML file, or
DASK_KONG__FAULTS__KILL_FRACTION=0.03) is enough: workers read it from their run.

* **Kills** (`kill_fraction`): each invocation of a worker process is doomed with that
  probability (never a thread of the embedded backend, which is the client's own
  process). A doomed invocation draws one of `kill_points` and ends its process with
  `os._exit(KILL_EXIT_CODE)` the first time its branch gets there, as an out-of-memory
  kill or a Lambda timeout would: nothing flushed, no event sent, claims and memory
  lost. A branch that never reaches its point runs to its end. Only invocations of
  attempt at most `kill_attempts` are doomed, so a test can be sure that a run recovers
  within `kong.run.max_attempts`.
* **Duplicates** (`duplicate_fraction`): an invocation is sent twice with that
  probability (what at-least-once platforms do now and then).

Draws come from `seed` and the invocation's identity (run, start task, attempt), so a
seeded test dooms the same invocations however workers are scheduled; with `seed: null`
they are random. `log`, when set, is a file every kill appends one JSON line to (time,
run, invocation, point): benchmarks compute detection times from it.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import random
import time
from dataclasses import dataclass

from . import config

logger = logging.getLogger("dask_kong.faults")

# What a killed worker process exits with: tells an injected kill from a real crash in
# the gateway's log ("exited with code 113").
KILL_EXIT_CODE = 113


class KillPoint(enum.StrEnum):
    """Where in its branch a doomed invocation dies."""

    #: a task just ran; its output exists only in this worker's memory
    TASK = "task"
    #: an output is about to be written and its fan-ins marked
    BEFORE_COMMIT = "before-commit"
    #: an output was written and its fan-ins marked; its dependents not yet invoked/run
    AFTER_COMMIT = "after-commit"
    #: inside a batched subtree: a member finished, its output held in memory only
    SUBTREE = "subtree"
    #: holding a large output in memory for delayed I/O, before the fan-in is complete
    DELAYED_OUTPUT = "delayed-output"
    #: holding a shared root's claim (`Plan.shared_roots`), before publishing it
    SHARED_ROOT = "shared-root"


@dataclass(frozen=True)
class FaultSettings:
    """`kong.faults`, resolved once per run by the client (see the module docstring)."""

    kill_fraction: float = 0.0
    kill_points: tuple[KillPoint, ...] = tuple(KillPoint)
    kill_attempts: int = 1
    duplicate_fraction: float = 0.0
    seed: int | None = None
    log: str | None = None

    @classmethod
    def from_config(cls) -> FaultSettings:
        points = config.get("faults.kill_points") or [p.value for p in KillPoint]
        try:
            kill_points = tuple(KillPoint(p) for p in points)
        except ValueError as exc:
            known = ", ".join(p.value for p in KillPoint)
            raise ValueError(f"kong.faults.kill_points: {exc}; known points: {known}") from exc
        seed = config.get("faults.seed")
        log = config.get("faults.log")
        return cls(
            kill_fraction=float(config.get("faults.kill_fraction")),
            kill_points=kill_points,
            kill_attempts=int(config.get("faults.kill_attempts")),
            duplicate_fraction=float(config.get("faults.duplicate_fraction")),
            seed=None if seed is None else int(seed),
            log=None if not log else str(log),
        )

    def kill_point(self, run_id: str, start: int, attempt: int) -> KillPoint | None:
        """Where the invocation (run, start task, attempt) dies; None: it lives."""
        if self.kill_fraction <= 0 or attempt > self.kill_attempts or not self.kill_points:
            return None
        draw = self._random("kill", run_id, start, attempt)
        if draw.random() >= self.kill_fraction:
            return None
        return draw.choice(self.kill_points)

    def duplicates(self, run_id: str, start: int, attempt: int) -> bool:
        """Whether the invocation is sent twice."""
        if self.duplicate_fraction <= 0:
            return False
        return self._random("dup", run_id, start, attempt).random() < self.duplicate_fraction

    def _random(self, what: str, run_id: str, start: int, attempt: int) -> random.Random:
        if self.seed is None:
            return random.Random()
        return random.Random(f"{self.seed}:{what}:{run_id}:{start}:{attempt}")


def kill(settings: FaultSettings, run_id: str, invocation_id: str, point: KillPoint) -> None:
    """End this process now, as a crash would (nothing flushed, nothing reported)."""
    logger.warning("kong.faults: killing worker %s of run %s at %s", invocation_id, run_id, point)
    if settings.log:
        line = {"time": time.time(), "run": run_id, "invocation": invocation_id, "point": point}
        with open(settings.log, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    os._exit(KILL_EXIT_CODE)
