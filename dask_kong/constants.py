"""Every store key of a run, in one place.

On one Redis node every key of run R starts with ``kong:{R}:``, and cleanup finds them all
by that prefix. On a Redis Cluster the braces are a hash tag: every key that carries it
lands on the one slot of ``R``. That is where a run's coordination lives (fan-in sets and
their ready claims, claims, the live marker, the event stream, heartbeats, the cancel flag
and the registry of the run's values), because Lua scripts and one pipeline may only touch
keys of one slot. A run's values (what `Store.commit` writes: outputs, uploaded data, the
run spec, and the parts of large ones) would pile up on that one shard too, so on a
cluster they are named ``kong:{}{R}:<key>`` instead (`spread_prefix`): an empty hash tag
first makes Redis hash the whole name, so each value lands on a slot of its own and a
run's bytes spread over every shard (dask_kong/store/cluster.py).
"""

from __future__ import annotations

KEY_PREFIX = "kong"


def run_prefix(run_id: str) -> str:
    """Prefix shared by every key of one run."""
    return f"{KEY_PREFIX}:{{{run_id}}}:"


def spread_prefix(run_id: str) -> str:
    """Prefix of run R's values on a Redis Cluster: the leading empty hash tag ``{}``
    makes Redis hash the whole key name, so values spread over all slots; the run's own
    tag that follows it no longer counts, but still tells whose value it is."""
    return f"{KEY_PREFIX}:{{}}{{{run_id}}}:"


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


def delay_io_claim(child: int) -> str:
    """Claim name of the one parent of fan-in `child` allowed to delay its I/O there
    (two delaying parents would wait for each other)."""
    return f"delay-io:{child}"


def shared_root_claim(task: int) -> str:
    """Claim name of a shared root (`Plan.shared_roots`): its claimant runs it once for
    every subtree that takes it in."""
    return f"root:{task}"


def stateful_claim(task: int) -> str:
    """Claim name of a stateful task (`dask_kong.values`): its first runner owns it, so a
    duplicate delivery never acts on the state behind a handle a second time."""
    return f"stateful:{task}"


def request_claim(request_id: str) -> str:
    """Claim name of one platform request (Lambda's aws_request_id): a second delivery
    of the same request is the platform retrying it after a failure, so the branch
    resumes (`Invocation.resumed`) the work of the delivery that was lost."""
    return f"request:{request_id}"


DAG_KEY = "dag"
# The start-up probe's marker: the client writes a token under it in a run of its own,
# a worker that reaches the same store reads it back (backends/aws_lambda/probe.py).
PROBE_KEY = "probe"
EVENTS_KEY = "events"
HEARTBEATS_KEY = "heartbeats"
LIVE_KEY = "live"
CANCEL_KEY = "cancel"
# On a Redis Cluster: the set of run-relative names of the run's values, which live on
# other shards; `delete_run` deletes what it lists (store/cluster.py).
VALUE_REGISTRY_KEY = "values"
