"""The metrics taxonomy: what the history records, and the groups it records it under.

A group names what a set of observations is about; its kind (the part before the first
``/``) says which metrics it can hold:

* ``fn/<resource>/<function>``, per task function (``key_split`` of its key) and resource
  config: `FUNCTION_METRICS`;
* ``res/<resource>``, per resource config: `RESOURCE_METRICS`;
* ``shape/<shape hash>``, per DAG shape, and ``shape/<shape hash>/<planner>``, the same
  per planner that ran it: `SHAPE_METRICS`.

Stores (`memory.py`, `redis.py`) key everything by these names, so they are the one
place where a group's name is made or taken apart.
"""

from __future__ import annotations

import enum

from ...dag import DAG


class Metric(enum.StrEnum):
    """What a history group summarises. Durations in seconds, sizes in bytes."""

    # per (function, resource config)
    EXEC_S = "exec_s"  # execution time of one task
    EXEC_S_PER_BYTE = "exec_s_per_byte"  # execution time / input bytes (sizes known)
    OUTPUT_BYTES = "output_bytes"  # size of one task's output
    OUTPUT_RATIO = "output_ratio"  # output bytes / input bytes
    RECIPE = "recipe"  # 1 when the output was published as a recipe, else 0
    STATEFUL = "stateful"  # 1 when the task read or made a handle to state (values.py)
    # per resource config
    READ_BPS = "read_bps"  # bytes read from the store per second of reading
    WRITE_BPS = "write_bps"  # bytes written to the store per second of writing
    READ_S = "read_s"  # one task's store read, for when sizes are unknown
    WRITE_S = "write_s"  # one task's store write, for when sizes are unknown
    INVOKE_S = "invoke_s"  # one invocation, as seen by the invoking worker
    STARTUP_COLD_S = "startup_cold_s"  # a new worker's start-up (fed by the runtime)
    STARTUP_WARM_S = "startup_warm_s"  # a warm worker's start-up (fed by the runtime)
    STARTUP_S = "startup_s"  # any start-up, cold or warm, as the backend's pool mixes them
    # per DAG shape
    MAKESPAN_S = "makespan_s"  # observed makespan of a run
    PREDICTED_MAKESPAN_S = "predicted_makespan_s"  # the plan's prediction for that run
    MAKESPAN_ERROR = "makespan_error"  # |predicted - observed| / observed
    # the makespan outside the tasks' span: shipping the run, the first invocations,
    # reading the results back, deleting the run's keys (the client's share)
    CLIENT_S = "client_s"


FUNCTION_METRICS = (
    Metric.EXEC_S,
    Metric.EXEC_S_PER_BYTE,
    Metric.OUTPUT_BYTES,
    Metric.OUTPUT_RATIO,
    Metric.RECIPE,
)
RESOURCE_METRICS = (
    Metric.READ_BPS,
    Metric.WRITE_BPS,
    Metric.READ_S,
    Metric.WRITE_S,
    Metric.INVOKE_S,
    Metric.STARTUP_COLD_S,
    Metric.STARTUP_WARM_S,
    Metric.STARTUP_S,
)
SHAPE_METRICS = (
    Metric.MAKESPAN_S,
    Metric.PREDICTED_MAKESPAN_S,
    Metric.MAKESPAN_ERROR,
    Metric.CLIENT_S,
)


def function_group(function: str, resource: str) -> str:
    """Group of a task function on a resource config (config names contain no '/')."""
    return f"fn/{resource}/{function}"


def resource_group(resource: str) -> str:
    return f"res/{resource}"


def shape_group(shape_hash: str) -> str:
    return f"shape/{shape_hash}"


def planner_shape_group(shape_hash: str, planner: str) -> str:
    """Group of one planner's runs of a DAG shape (planner names contain no '/')."""
    return f"shape/{shape_hash}/{planner}"


def task_profile_name(dag: DAG, task: int) -> str:
    """The pseudo-function under which one task of one DAG shape is profiled: a task of
    a shape seen before is predicted from its own earlier runs, not from every task that
    shares its function (a TSQR's leaf and tree `qr`s differ a hundredfold in time). Named
    by the task's structural digest, not its number, which another process's translation
    may assign differently; tasks alike in structure share a profile."""
    return f"{dag.shape_hash}#{dag.task_digests[task]}"


def group_metrics(group: str) -> tuple[Metric, ...]:
    """The metrics a group can hold, from its kind."""
    kind = group.split("/", 1)[0]
    return {"fn": FUNCTION_METRICS, "res": RESOURCE_METRICS, "shape": SHAPE_METRICS}[kind]
