"""The user's data in a run: uploaded once per session, in batches, while the run goes.

A graph built from the user's data (`da.from_array` of a NumPy array, `dd.from_pandas`)
carries it as data entries of the DAG (`dag.translate` lifts them out of tasks). Where the
workers are other processes, each entry above `kong.payload.inline_input_bytes` goes to
the store, into the session's scope (`runtime.session_keys`), under its content token
(`serialize.content_token`: a hash of what it pickles to, so the layout in memory
counts, and a square array and its transpose are two values): the same array computed
again, or read by several collections, is found there and not uploaded again; a changed
array has another token. Workers keep what they read of it (`runtime.data_cache`): a key
of the scope never names another value.

The client does not upload everything before the run starts. It invokes each start task
as soon as the data its first tasks read is in the store, and uploads in batches of about
`kong.data.upload_batch_bytes` (one pipelined round-trip each), in the order the start
tasks are invoked: the first branches compute while later data is still on its way. Data
read by tasks that are not started by the client (a dependent reached through the run)
goes first, since nothing says when a worker reaches them.

Values persisted in the session's scope (`StoredValue` in a persisted collection's graph)
take the same way, without upload: the workers read them there, whatever the backend.

Every session key the run reads is pinned until the run ends (`release`), so no other
run's eviction removes data this one still needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dask.sizeof import sizeof

from .. import config
from ..constants import data_key
from ..dag import DAG
from ..dag.model import StoredValue
from ..errors import KongError
from ..invocation.payload import DataRefs
from ..planning import Plan
from ..serialize import content_token
from .session_keys import SessionKeys


@dataclass
class Upload:
    """A run's upload: where its entries go and in which order.

    ============  ================================================================
    field         what it holds
    ============  ================================================================
    session       the session's keys (`SessionKeys`)
    refs          data entry name -> its key in the session's scope (`DataRefs`)
    needs         per start task, the session keys its branch reads first
    batches       the entries still to upload, key -> value, in upload order
    pinned        keys this run holds a pin on (released when the run ends)
    bytes         bytes the store wrote for this run's uploads
    reused_bytes  size of the entries already in the session's scope (not uploaded)
    seconds       time spent tokenizing and uploading
    ============  ================================================================
    """

    session: SessionKeys
    refs: DataRefs
    needs: dict[int, set[str]]
    batches: list[dict[str, Any]] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    bytes: int = 0
    reused_bytes: int = 0
    seconds: float = 0.0

    def release(self) -> None:
        """The run ended: drop its pins (may evict what the budget has no room for)."""
        pinned, self.pinned = self.pinned, []
        self.session.unpin(pinned)


def plan_upload(
    dag: DAG,
    plan: Plan,
    starts: Sequence[int],
    session: SessionKeys,
    inline_bytes: int,
    *,
    upload_large: bool = True,
) -> Upload | None:
    """The upload of `dag`'s data entries above `inline_bytes` (when `upload_large`: the
    workers are in other processes), and the references to values persisted in the
    session's scope (`StoredValue`, always); None when there is neither. Tokenized, the
    ones already in the scope pinned, the rest in batches."""
    started = time.perf_counter()
    session.release_collected()  # persisted values collected since the last run
    stored = {n: v for n, v in dag.data.items() if isinstance(v, StoredValue)}
    large = {
        n: v
        for n, v in dag.data.items()
        if upload_large and n not in stored and sizeof(v) > inline_bytes
    }
    if not large and not stored:
        return None
    keys = {
        name: data_key(content_token(value, what=f"data {name!r}")) for name, value in large.items()
    }
    keys.update({name: value.key for name, value in stored.items()})
    needs = {s: need & keys.keys() for s, need in needs_of_starts(dag, plan, starts).items()}
    upload = Upload(session, DataRefs(session.scope, keys), needs)
    needed = list(dict.fromkeys(keys.values()))
    missing = set(session.pin_present(needed))
    upload.pinned = [k for k in needed if k not in missing]
    check_stored(upload, stored, missing)
    values = {keys[name]: value for name, value in large.items()}
    upload.reused_bytes = sum(sizeof(values[k]) for k in upload.pinned if k in values)
    order = upload_order(dag, starts, upload.needs, keys)
    upload.batches = batched([k for k in order if k in missing], values)
    upload.seconds = time.perf_counter() - started
    return upload


def check_stored(upload: Upload, stored: dict[str, StoredValue], missing: set[str]) -> None:
    """Raise, naming it, when a persisted value the run reads is not in the session's
    store (released, expired, or persisted by another session); pins already taken are
    released first."""
    scope = upload.session.scope
    for value in stored.values():
        if value.scope != scope or value.key in missing:
            upload.release()
            where = "this" if value.scope == scope else "another (closed?)"
            raise KongError(
                f"persisted value {value.key!r} of {where} session is no longer in the "
                "store: persist the collection again in this session"
            )


def needs_of_starts(dag: DAG, plan: Plan, starts: Sequence[int]) -> dict[int, set[str]]:
    """Per start task, the data entry names read by the tasks its invocation runs first
    (the members of its batched subtree, then itself)."""
    needs: dict[int, set[str]] = {}
    for start in starts:
        tasks = [*plan.subtrees.get(start, ()), start]
        needs[start] = {i.data for t in tasks for i in dag.inputs[t] if i.data is not None}
    return needs


def upload_order(
    dag: DAG, starts: Sequence[int], needs: dict[int, set[str]], keys: dict[str, str]
) -> list[str]:
    """Session keys in upload order: the data of tasks no start runs first, then each
    start's data in invocation order (a key once)."""
    by_start = {name for need in needs.values() for name in need}
    early = [name for name in keys if name not in by_start]
    ordered = [*early, *(name for s in starts for name in sorted(needs[s]) if name in keys)]
    return list(dict.fromkeys(keys[name] for name in ordered))


def batched(keys: list[str], values: dict[str, Any]) -> list[dict[str, Any]]:
    """`keys` with their values, cut into batches of about `kong.data.upload_batch_bytes`."""
    limit = int(config.get("data.upload_batch_bytes"))
    batches: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    size = 0
    for key in keys:
        current[key] = values[key]
        size += sizeof(values[key])
        if size >= limit:
            batches.append(current)
            current, size = {}, 0
    if current:
        batches.append(current)
    return batches


def upload_and_invoke(
    upload: Upload,
    starts: Sequence[int],
    invoke: Callable[[list[int]], None],
) -> None:
    """Invoke `starts` in order, each once the data its branch reads first is in the
    store, uploading the batches in between. Data no start reads first (early keys)
    precedes every invocation."""
    started = time.perf_counter()
    waiting = list(starts)
    uploading = {key for batch in upload.batches for key in batch}
    early = uploading - {upload.refs.keys[n] for need in upload.needs.values() for n in need}
    if upload.batches:
        upload.session.open()
    for batch in upload.batches:
        if not early:
            waiting = invoke_ready(upload, waiting, uploading, invoke)
        upload.bytes += upload.session.add(batch)
        upload.pinned += list(batch)
        uploading -= batch.keys()
        early -= batch.keys()
    if waiting:
        invoke(waiting)
    upload.seconds += time.perf_counter() - started


def invoke_ready(
    upload: Upload, waiting: list[int], uploading: set[str], invoke: Callable[[list[int]], None]
) -> list[int]:
    """Invoke the waiting starts whose data is all in the store; the others, in order."""
    keys = upload.refs.keys
    ready = [s for s in waiting if not any(keys[n] in uploading for n in upload.needs[s])]
    if ready:
        invoke(ready)
    invoked = set(ready)
    return [s for s in waiting if s not in invoked]
