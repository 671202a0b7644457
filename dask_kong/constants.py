"""Every store key of a run, in one place.

All keys of run R start with ``kong:{R}:`` so that Redis Cluster places a whole run on one
slot (the braces are a hash tag) and cleanup can find every key of a run by prefix.
"""

from __future__ import annotations

KEY_PREFIX = "kong"


def run_prefix(run_id: str) -> str:
    """Prefix shared by every key of one run."""
    return f"{KEY_PREFIX}:{{{run_id}}}:"


def output_key(task: int) -> str:
    """Run-relative name of a task's output."""
    return f"out:{task}"


def data_key(name: str) -> str:
    """Run-relative name of a data node or lifted constant, stored once per run."""
    return f"data:{name}"


def fan_in_key(child: int) -> str:
    """Run-relative name of the set of finished parents of a fan-in task."""
    return f"fanin:{child}"


def claim_key(name: str) -> str:
    """Run-relative name of a first-caller-wins claim (e.g. who may delay at a fan-in)."""
    return f"claim:{name}"


def stateful_claim(task: int) -> str:
    """Claim name of a stateful task (`dask_kong.values`): its first runner owns it, so a
    duplicate delivery never acts on the state behind a handle a second time."""
    return f"stateful:{task}"


DAG_KEY = "dag"
EVENTS_KEY = "events"
HEARTBEATS_KEY = "heartbeats"
LIVE_KEY = "live"
CANCEL_KEY = "cancel"
