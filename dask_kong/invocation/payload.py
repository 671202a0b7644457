"""The payload format: what one invocation carries, as every platform delivers it.

A Lambda event is JSON, so a payload is a small JSON object; binary parts (the run spec,
inline inputs) are pickles in base64. A run is prepared once by the client
(`runtime.remote.prepare_remote_run`):

* the `RunSpec` (DAG without its large data, plan, settings) is pickled once; it travels
  inline when small, else it is stored once under the run's `dag` key and every worker
  process fetches it once and caches it by run id;
* large data entries (DataNodes, constants lifted out of `da.from_array` tasks) are
  stored once per session under their content token (`DataRefs`, `runtime.upload`), and
  fetched only by the worker whose task reads it.

Pickle memoization keeps a function shared by many tasks once in the spec.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import dask.config

from .. import config, security, serialize
from ..dag import DAG
from ..errors import SerializationError
from ..faults import FaultSettings
from ..gc_pause import paused_gc
from ..planning.plan import Plan
from .model import Invocation, InvokerSpec

PAYLOAD_VERSION = 1

# `encode_invocation` writes the run id near the start of the payload; looking there
# first spares parsing whole payloads (an inline DAG or inputs can make them hundreds of
# KB) for every queued invocation when a run is cancelled.
_RUN_FIELD = b'"run":"'
_RUN_FIELD_WITHIN = 256


@dataclass(frozen=True)
class RunSettings:
    """Thresholds workers read on the hot path, resolved once per run from config."""

    inline_input_bytes: int
    progress_interval_s: float
    cancel_check_s: float
    cluster_bytes: int
    delay_io_bytes: int
    delay_io_wait_s: float
    shared_root_wait_s: float
    recompute_min_bytes: int
    recompute_input_fraction: float
    recompute_bytes_per_s: float
    inspect_items: int
    # Report each task's start as an event, sent at once with its finish: a dask
    # callback with a `pretask` (Profiler, CacheProfiler) watches the run. Off otherwise:
    # it costs two store round-trips per task.
    report_starts: bool = False
    # Task retries (kong.run.retries, or the call's retries=) and, by task, those
    # dask.annotate(retries=) gave; pauses between tries (waits.pauses).
    retries: int = 0
    task_retries: Mapping[int, int] = field(default_factory=dict)
    retry_delay_s: float = 0.1
    retry_max_delay_s: float = 2.0
    faults: FaultSettings = field(default_factory=FaultSettings)
    # At most this many characters of what one task prints or logs in a worker process
    # are kept for the client (kong.logs.max_task_bytes).
    max_task_log_bytes: int = 65536
    # Bytes of session data a worker process keeps between tasks, invocations and runs
    # (kong.data.worker_cache_bytes; runtime.data_cache), 0 keeps none; at most this
    # fraction of its memory limit (kong.data.worker_cache_fraction).
    worker_cache_bytes: int = 0
    worker_cache_fraction: float = 0.25

    @classmethod
    def from_config(cls) -> RunSettings:
        return cls(
            inline_input_bytes=int(config.get("payload.inline_input_bytes")),
            progress_interval_s=float(config.get("run.progress_interval_s")),
            cancel_check_s=float(config.get("run.cancel_check_s")),
            cluster_bytes=int(config.get("wukong.cluster_bytes")),
            delay_io_bytes=int(config.get("wukong.delay_io_bytes")),
            delay_io_wait_s=float(config.get("wukong.delay_io_wait_s")),
            shared_root_wait_s=float(config.get("wukong.shared_root_wait_s")),
            recompute_min_bytes=int(config.get("wukong.recompute_min_bytes")),
            recompute_input_fraction=float(config.get("wukong.recompute_input_fraction")),
            recompute_bytes_per_s=float(config.get("wukong.recompute_bytes_per_s")),
            inspect_items=int(config.get("values.inspect_items")),
            retries=int(config.get("run.retries")),
            retry_delay_s=float(config.get("run.retry_delay_s")),
            retry_max_delay_s=float(config.get("run.retry_max_delay_s")),
            faults=FaultSettings.from_config(),
            max_task_log_bytes=int(config.get("logs.max_task_bytes")),
            worker_cache_bytes=int(config.get("data.worker_cache_bytes")),
            worker_cache_fraction=float(config.get("data.worker_cache_fraction")),
        )

    def retries_of(self, task: int) -> int:
        """How many more times `task` runs after raising."""
        return self.task_retries.get(task, self.retries)


@dataclass(frozen=True)
class DataRefs:
    """Where a run's uploaded data entries are: the session's scope (a pseudo-run id,
    `runtime.session_keys`) and, per data entry name of the DAG, its key there (named by
    the value's content token, so later runs over the same data find it)."""

    scope: str
    keys: Mapping[str, str]


@dataclass(frozen=True)
class RunSpec:
    """Everything a remote worker needs about a run besides its inputs. `data_refs`
    says which data entries are not in the DAG but in the session's scope."""

    dag: DAG
    plan: Plan
    settings: RunSettings
    output_tasks: frozenset[int]
    data_refs: DataRefs | None = None
    #: The caller's dask config when the run started, apart from `kong` (whose values
    #: reach workers as `settings`): tasks in a worker read it as they would in the
    #: caller's process (`dataframe.shuffle.compression`, `array.chunk-size`, ...).
    dask_config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Shipment:
    """A prepared run: how invocations refer to its spec, and how workers invoke."""

    spec_inline: str | None  # base64 pickle of the RunSpec, or None when stored
    invoker: InvokerSpec
    # What preparing the run wrote to the store: the stored spec's bytes, and the bytes
    # of data entries stored in the run itself (only where no session scope takes them)
    spec_bytes: int = 0
    data_bytes: int = 0


def caller_dask_config() -> dict[str, Any]:
    """The caller's dask config to ship with a run (see `RunSpec.dask_config`): its
    settings, not the objects some keys hold in the caller's process (`scheduler` is the
    session's `get`, `pool` an executor), which mean nothing in a worker."""
    return {k: v for k, v in dask.config.config.items() if k != "kong" and _is_setting(v)}


_SETTING_LEAVES = (str, int, float, bool, type(None))


def _is_setting(value: Any) -> bool:
    """Whether `value` is made of what a YAML config file can say."""
    if isinstance(value, _SETTING_LEAVES):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_setting(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(_is_setting(v) for v in value)
    return False


#: A run spec as it travels: the caller's dask config, then the spec's own pickle (not
#: signed apart: it is only ever read out of a signed `SpecParts`, whose signature covers
#: its bytes). The config comes first so that `spec_from_parts` unpickles the DAG under it.
SpecParts = tuple[dict[str, Any], bytes]


def spec_parts(spec: RunSpec) -> SpecParts:
    """The spec as it travels (`SpecParts`), unsigned: `dumps_spec` signs it for an
    invocation payload, the store signs it as the run's `dag` value, once either way.
    When pickling fails, names the first task that cannot be pickled."""
    try:
        inner = serialize.dumps_unsigned(spec, what="the run's DAG")
    except SerializationError:
        for key, node in zip(spec.dag.keys, spec.dag.nodes, strict=True):
            serialize.dumps_unsigned(node, what=f"task {key!r}")  # raises naming the task
        raise
    return dict(spec.dask_config), inner


def dumps_spec(parts: SpecParts, run_id: str) -> bytes:
    """The spec's parts pickled and signed for run `run_id` only (one signature over
    the config and the DAG's pickle together)."""
    return serialize.dumps(parts, where=spec_place(run_id), what="the run's spec")


def loads_spec(blob: bytes, run_id: str, *, what: str) -> RunSpec:
    """Inverse of `dumps_spec` (a spec of another run is refused)."""
    parts: SpecParts = serialize.loads(blob, where=spec_place(run_id), what=what)
    return spec_from_parts(parts)


def spec_from_parts(parts: SpecParts) -> RunSpec:
    """The spec out of parts whose signature was checked (`loads_spec`, or the store's
    read of the run's `dag` value). The DAG is unpickled under the caller's dask config:
    some of dask's objects read the config as they are unpickled, not when called (the
    disk shuffle's partd factory reads `dataframe.shuffle.compression`)."""
    settings, inner = parts
    with dask.config.set(settings), paused_gc():  # a DAG: objects that all stay alive
        spec: RunSpec = serialize.loads_trusted(inner)
    return spec


def spec_place(run_id: str) -> bytes:
    """Where a run's spec is signed for: that run alone (`security.place`)."""
    return security.place("spec", run_id)


def inputs_place(run_id: str, start: int) -> bytes:
    """Where an invocation's inline inputs are signed for: its run and start task, so
    that inputs are refused in a payload for another run or another branch."""
    return security.place("inputs", run_id, start)


def encode_invocation(invocation: Invocation, shipment: Shipment) -> bytes:
    """The JSON payload of one invocation (the run id first: see `payload_run_id`)."""
    body: dict[str, Any] = {
        "run": invocation.run_id,
        "kong": PAYLOAD_VERSION,
        "start": invocation.start,
        "attempt": invocation.attempt,
        "sent": invocation.sent_at,
        "invoker": asdict(shipment.invoker),
    }
    if invocation.resumed:
        body["resumed"] = True
    if invocation.inputs:
        where = inputs_place(invocation.run_id, invocation.start)
        body["inputs"] = b64(serialize.dumps(invocation.inputs, where=where, what="inline inputs"))
    if shipment.spec_inline is not None:
        body["spec"] = shipment.spec_inline
    return json.dumps(body, separators=(",", ":")).encode()


@dataclass(frozen=True)
class DecodedInvocation:
    """An invocation, the run spec when it travelled inline (base64, passed on as is to
    the workers this one invokes), and how to invoke further workers."""

    invocation: Invocation
    spec_b64: str | None
    invoker: InvokerSpec

    @property
    def spec_inline(self) -> bytes | None:
        return None if self.spec_b64 is None else base64.b64decode(self.spec_b64)


def decode_invocation(event: dict[str, Any]) -> DecodedInvocation:
    """Inverse of `encode_invocation`; a payload of another version is refused."""
    if event.get("kong") != PAYLOAD_VERSION:
        raise ValueError(f"not a dask-kong v{PAYLOAD_VERSION} invocation: {sorted(event)}")
    inputs = (
        serialize.loads(
            base64.b64decode(event["inputs"]),
            where=inputs_place(str(event["run"]), int(event["start"])),
            what=f"the inputs of the invocation of task {event['start']} in run {event['run']}",
        )
        if "inputs" in event
        else {}
    )
    invocation = Invocation(
        event["run"],
        int(event["start"]),
        inputs,
        sent_at=float(event.get("sent", 0.0)),
        attempt=int(event.get("attempt", 1)),
        resumed=bool(event.get("resumed", False)),
    )
    return DecodedInvocation(invocation, event.get("spec"), InvokerSpec(**event["invoker"]))


def payload_run_id(payload: bytes) -> str | None:
    """The run a dask-kong invocation payload belongs to (None: not one, e.g. a pre-warm)."""
    head = payload[:_RUN_FIELD_WITHIN]
    start = head.find(_RUN_FIELD)
    if start >= 0:
        end = head.find(b'"', start + len(_RUN_FIELD))
        if end >= 0:
            return head[start + len(_RUN_FIELD) : end].decode(errors="replace")
    try:
        run = json.loads(payload).get("run")
    except (ValueError, AttributeError):
        return None
    return None if run is None else str(run)


def payload_branch(payload: bytes) -> tuple[str, int] | None:
    """(run id, start task) of a dask-kong invocation payload; None for anything else."""
    try:
        body = json.loads(payload)
        return str(body["run"]), int(body["start"])
    except (ValueError, KeyError, TypeError):
        return None


def b64(blob: bytes) -> str:
    """`blob` as base64 text, for a JSON payload."""
    return base64.b64encode(blob).decode("ascii")
