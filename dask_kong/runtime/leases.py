"""Leases: how a client learns that a worker on AWS Lambda was lost.

The local gateway reports every worker it loses, at once (`backends.processes`). AWS
Lambda reports nothing: a worker killed for its memory or its timeout, or frozen, just
stops; the platform delivers the event again at most twice, and not at all after a
timeout of the whole function or with retries switched off. So an invocation on Lambda
(`InvokerSpec.holds_leases`) holds a lease in the store while its branch runs:

* `take`: when the branch starts, its heartbeat entry (`Store.heartbeat`, named by its
  `Invocation.id`) is written at once, and the inputs it carries inline are written to
  the store as the outputs they are (write-once), so that a new attempt finds them;
* the process's heartbeat thread renews it every `kong.heartbeat.interval_s`;
* `give_back`: when the branch ends, the entry says so (`ENDED`).

A lease not given back and not renewed for `kong.heartbeat.ttl_s` ran out: its worker
was lost, and the client invokes the branch again (`expired`), as it does for a loss the
gateway reports. A later attempt of the same branch in the heartbeats (Lambda's own
retry of the lost delivery: `handler.redelivered`) supersedes it, so the platform's
retries and kong's never count one loss twice.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ..constants import output_key
from ..invocation.model import Invocation
from ..store.base import ENDED, Store
from .context import RunContext

logger = logging.getLogger("dask_kong.runtime")


def take(ctx: RunContext, invocation: Invocation) -> None:
    """Hold a lease for `invocation` (delivered: its `id` names this delivery)."""
    if invocation.inputs:
        writes = {output_key(t): v for t, v in invocation.inputs.items()}
        ctx.store.commit(ctx.run_id, writes)
    ctx.heartbeater.beat_now(ctx.run_id, invocation.id, invocation.start)


def give_back(ctx: RunContext, invocation_id: str) -> None:
    """The branch ended (finished, failed or stopped): its lease no longer runs out."""
    ctx.heartbeater.end(ctx.run_id, invocation_id)


def expired(
    store: Store, run_id: str, ttl_s: float, seen: set[str], tasks: int
) -> list[tuple[Invocation, float, int]]:
    """Invocations whose lease ran out, not in `seen` (added now) nor superseded by a
    later attempt of their branch: each with the age of its last heartbeat and the
    task that heartbeat named (what it was running). `tasks`: the DAG's size; an entry
    naming no task of it is not an invocation of this run."""
    beats = store.heartbeats(run_id)
    branches = {h: _named(run_id, h, tasks) for h in beats}
    lost = []
    for holder, (age, task) in beats.items():
        invocation = branches[holder]
        if task == ENDED or age < ttl_s or holder in seen or invocation is None:
            continue
        seen.add(holder)
        if not _superseded(invocation, branches):
            lost.append((invocation, age, task))
    return lost


def _named(run_id: str, holder: str, tasks: int) -> Invocation | None:
    """The invocation a heartbeat's name says (None: not one of this run's DAG of
    `tasks` tasks; heartbeats are not signed, so nothing in them is trusted further)."""
    try:
        invocation = Invocation.from_id(run_id, holder)
    except ValueError:
        return None
    if not 0 <= invocation.start < tasks or invocation.attempt < 1:
        return None
    return invocation


def _superseded(invocation: Invocation, branches: Mapping[str, Invocation | None]) -> bool:
    """Whether a later attempt of the same branch holds or held a lease."""
    return any(
        b is not None and b.start == invocation.start and b.attempt > invocation.attempt
        for b in branches.values()
    )
