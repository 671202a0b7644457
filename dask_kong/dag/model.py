"""The Kong DAG: an immutable, index-based view of a culled Dask graph.

Tasks are numbered 0..n-1 in a topological order, so workers, the store and events speak
in small integers instead of arbitrary Dask keys. Aliases are resolved away at translation
(they cost nothing at run time) and data (DataNodes, large constants lifted out of tasks)
lives apart from tasks so that a mode with a remote store keeps it once per run.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dask._task_spec import GraphNode
from dask.utils import key_split

Key = Hashable


class StoredValue:
    """A value persisted in a session's store (`Kong.persist`): what a persisted
    collection's graph holds instead of the value. Translation lifts it out of every task
    into a data entry, and the workers read the value where it is; the client never
    fetches it (`runtime.upload`, `runtime.session_keys`) unless asked: `result()` reads
    it, as a distributed `Future` in a persisted graph does (dask's own checks, such as
    `dask.array.utils._check_chunks`, call `.result()` on what a persist left there).

    The object the session made holds one pin on its key: when it is garbage collected
    (with the last collection that refers to it) the key is released. A copy made by
    pickling holds no pin and cannot read the value (`result()` says so)."""

    __slots__ = ("__weakref__", "_read", "key", "scope")

    def __init__(self, scope: str, key: str, read: Callable[[], Any] | None = None) -> None:
        self.scope = scope
        self.key = key
        #: Reads the value from the session's store; None for a pickled copy.
        self._read = read

    def result(self, timeout: float | None = None) -> Any:
        """The value, read from the store. `timeout` bounds the wait for the value to be
        computed, as in distributed's `Future.result`: there is none (persist returns
        once its values are stored), so any timeout is met; the read itself has the
        store's own deadline."""
        if self._read is None:
            raise RuntimeError(
                f"StoredValue({self.key!r}) is a copy made by pickling: only the one the "
                "persisting session returned can read its value"
            )
        return self._read()

    def done(self) -> bool:
        """Always True: a persist returns once its values are stored."""
        return True

    def __reduce__(self) -> tuple[Any, ...]:
        return (StoredValue, (self.scope, self.key))

    def __dask_tokenize__(self) -> tuple[str, str, str]:
        return ("kong-stored-value", self.scope, self.key)

    def __repr__(self) -> str:
        return f"StoredValue({self.key!r})"


@dataclass(frozen=True)
class TaskInput:
    """One input of a task: the Dask key the task's node reads it under, and its source:
    either the index of the task that computes it or the name of a data entry."""

    key: Key
    task: int | None = None
    data: str | None = None


@dataclass(frozen=True)
class Output:
    """A requested key and where its value comes from (a task or a data entry)."""

    key: Key
    task: int | None = None
    data: str | None = None


@dataclass(frozen=True, eq=False)
class DAG:
    """A culled, alias-free task graph ready to run.

    Attributes are tuples indexed by task number. `inputs[i]` lists what task i reads;
    `parents[i]` are the distinct task indices among them (the fan-in in-degree is
    `len(parents[i])`); `children[i]` are the tasks that read task i.
    """

    keys: tuple[Key, ...]
    nodes: tuple[GraphNode, ...]
    inputs: tuple[tuple[TaskInput, ...], ...]
    parents: tuple[tuple[int, ...], ...]
    children: tuple[tuple[int, ...], ...]
    data: Mapping[str, Any]
    outputs: tuple[Output, ...]
    #: Per task, the user's priority (`dask.annotate(priority=...)`); empty: all 0.
    priorities: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def roots(self) -> tuple[int, ...]:
        """Tasks with no task parents: each starts a branch when the run is submitted."""
        return tuple(i for i, p in enumerate(self.parents) if not p)

    @property
    def output_tasks(self) -> frozenset[int]:
        """Indices of tasks whose value was requested."""
        return frozenset(o.task for o in self.outputs if o.task is not None)

    @functools.cached_property
    def task_digests(self) -> tuple[str, ...]:
        """Per task, a digest of its place in the structure (see `task_digests`): the same
        in every process, whatever order the translation numbered the tasks in."""
        return tuple(d.hex() for d in task_digests(self.keys, self.parents))

    @functools.cached_property
    def heights(self) -> tuple[int, ...]:
        """Per task, how many tasks the longest path from it to a sink has (itself
        included): its upward rank. With a bounded number of workers, running the higher
        ones first keeps the longest chain moving (list scheduling's classic priority)."""
        heights = [1] * len(self)
        for task in reversed(range(len(self))):  # dependents before their parents
            children = self.children[task]
            if children:
                heights[task] = 1 + max(heights[c] for c in children)
        return tuple(heights)

    @functools.cached_property
    def successors(self) -> tuple[int, ...]:
        """Per task, how many tasks wait on it, directly or through others: a task
        reached along two paths counts twice, and no count exceeds len(dag) (one linear
        pass, where exact counts would need a set per task).

        A bounded backend starts queued invocations by this urgency. TSQR-SVD's sign
        factor gates all 20 U blocks; queued first-in-first-out, its invocation waited
        behind the 19 Q-block chains, each of which then had to write its 8 MB block and
        have it read back (479 MB written instead of 327 MB, 1.35x the time).
        """
        cap = len(self)
        counts = [0] * cap
        for task in reversed(range(cap)):  # dependents before their parents
            total = sum(1 + counts[c] for c in self.children[task])
            counts[task] = min(total, cap)
        return tuple(counts)

    @functools.cached_property
    def urgency(self) -> tuple[int, ...]:
        """Per task, the order a bounded backend starts its queued invocations in,
        highest first: the user's priority first (as distributed orders by it), then
        `successors`."""
        if not self.priorities:
            return self.successors
        scale = len(self) + 1  # successors never exceed len(dag)
        return tuple(p * scale + s for p, s in zip(self.priorities, self.successors, strict=True))

    def longest_chains_first(self, tasks: Iterable[int]) -> list[int]:
        """`tasks` by decreasing height (stable): the order to invoke them in. A bounded
        backend starts queued invocations by urgency (`successors`), then by arrival:
        this order breaks its ties."""
        heights = self.heights
        return sorted(tasks, key=lambda t: -heights[t])

    @functools.cached_property
    def shape_hash(self) -> str:
        """Digest of the structure (computed on first use: only history needs it)."""
        return digest_of_shape(self.task_digests)

    def index_of(self, key: Key) -> int:
        """Index of the task computing `key` (tests and diagnostics; O(n))."""
        return self.keys.index(key)


def task_digests(order: tuple[Key, ...], parents: tuple[tuple[int, ...], ...]) -> list[bytes]:
    """Per task, a digest of its task name prefix, block position and its parents'
    digests (Merkle-style): not data tokens nor dict order, so two runs of one
    computation on other data, in other processes, give every task the same digest."""
    node_digests: list[bytes] = []
    for key, ps in zip(order, parents, strict=True):
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr((key_split(key), _key_position(key))).encode())
        for parent_digest in sorted(node_digests[p] for p in ps):
            digest.update(parent_digest)
        node_digests.append(digest.digest())
    return node_digests


def digest_of_shape(task_digests: tuple[str, ...]) -> str:
    """The graph's digest: that of its sorted task digests (so two runs of one
    computation on other data share a history)."""
    joined = "".join(sorted(task_digests)).encode()
    return hashlib.blake2b(joined, digest_size=16).hexdigest()


def _key_position(key: Hashable) -> tuple[Any, ...]:
    """The block index part of a tuple key ('x-token', 0, 1) -> (0, 1)."""
    return tuple(key[1:]) if isinstance(key, tuple) else ()
