"""How a run's bytes spread over the shards of a Redis Cluster, and what the cluster costs
against one node, in one run (issue #17).

    python -m benchmarks.cluster_spread --size core --repeat 5 \
        --json docs/results/cluster-spread.json

Starts a private redis-server and a private three-shard Redis Cluster (`LocalRedisCluster`),
opens a `Kong(backend="processes")` session on each by URL, as a user would, and computes
each workload (GEMM, TSQR-SVD, svd_compressed) on both, alternating which goes first from
one repeat to the next, so that a loaded machine's drift hits both alike. Each workload
runs on its inputs drawn in the graph and on the same sizes of NumPy arrays handed to
dask with `da.from_array` (the user's data, which kong uploads): `--inputs`. One untimed run
on each comes first (worker processes start, and the metrics history holds a run for
both, so both plan alike). Every result is checked before its time counts.

Per timed run it reads every server's INFO stats before and after: bytes each shard
received (the values written to it, and commands) and sent (what was read from it). It
reports the median makespan on one node and on the cluster, the median of the repeats'
ratios cluster / one node (each repeat runs both back to back, so a ratio compares runs
under the same load), the bytes each shard received per run, and the largest shard's
share of them (1/3 is an even spread over three shards), the range of the repeats' ratios
and of the machine's load average (1 minute) as the runs ended. The JSON keeps every
repeat.

    python -m benchmarks.cluster_spread --delete 300000 --repeat 20

times deleting a run (200 outputs and fan-in marks: --outputs) on a cluster whose shards
hold that many keys of nobody's run, by its slot (`delete_run`) and by a SCAN of the run's
shard as `delete_run` did before, alternating.

    python -m benchmarks.cluster_spread --ops 1500

measures single store operations instead, on the same two stores (no Kong session): the
median latency of a commit of one small output with a fan-in mark and an event, of a
commit of a mark and an event alone, of a commit of three outputs, of a `get_many` of one
output, of three (on a cluster mostly on two or three shards, asked at once) and of the
same three read by three calls one after another (what reading shard after shard
would cost), of `is_cancelled`, each run `--ops` times per store, the stores alternating
in five rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import dask
import redis
from redis.cluster import RedisCluster

from dask_kong import Kong, last_run, security
from dask_kong.constants import LIVE_KEY, run_prefix
from dask_kong.store.base import Event, EventKind, FanIn, Store
from dask_kong.store.cluster import RedisClusterStore
from dask_kong.store.redis import connect
from dask_kong.store.server import LocalRedisCluster, RedisServer

from . import environment, workloads
from .schedulers import warm_up
from .workloads.base import Case

WORKLOADS = ("gemm", "tsqr-svd", "svd-compressed")
SHARDS = 3
STORES = ("one-node", "cluster")


@dataclass
class Cell:
    """One workload on one store: every timed repeat."""

    workload: str
    store: str
    times_s: list[float] = field(default_factory=list)
    #: Per repeat: bytes each server received and sent during the run, by host:port.
    received: list[dict[str, int]] = field(default_factory=list)
    sent: list[dict[str, int]] = field(default_factory=list)
    bytes_written: list[int] = field(default_factory=list)
    #: The machine's load average (1 minute) as each timed run ended.
    loads: list[float] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def received_per_run(self) -> dict[str, float]:
        """Mean bytes each server received per run."""
        servers = sorted({name for run in self.received for name in run})
        return {s: statistics.mean(run.get(s, 0) for run in self.received) for s in servers}

    def largest_share(self) -> float:
        """The largest server's share of the bytes all servers received."""
        per_server = self.received_per_run()
        return max(per_server.values()) / (sum(per_server.values()) or 1)


def net_bytes(urls: list[str]) -> dict[str, tuple[int, int]]:
    """(bytes received, bytes sent) so far by each server at `urls`, by host:port."""
    counts = {}
    for url in urls:
        with contextlib.closing(redis.Redis.from_url(url)) as client:
            stats = client.info("stats")
            address = f"{client.connection_pool.connection_kwargs['host']}:" + str(
                client.connection_pool.connection_kwargs["port"]
            )
            counts[address] = (
                int(stats["total_net_input_bytes"]),
                int(stats["total_net_output_bytes"]),
            )
    return counts


def timed_run(session: Kong, case: Case, urls: list[str], cell: Cell) -> None:
    """Compute `case` once on `session`, check it, and record time and traffic."""
    before = net_bytes(urls)
    started = time.perf_counter()
    results = dask.compute(*case.collections, scheduler=session.get)
    elapsed = time.perf_counter() - started
    after = net_bytes(urls)
    problem = case.check(results)
    if problem:
        raise AssertionError(f"{cell.workload} on {cell.store}: wrong result: {problem}")
    summary = last_run()
    cell.times_s.append(elapsed)
    cell.received.append({s: after[s][0] - before[s][0] for s in after})
    cell.sent.append({s: after[s][1] - before[s][1] for s in after})
    cell.bytes_written.append(summary.bytes_written if summary else 0)
    cell.loads.append(os.getloadavg()[0])


@contextlib.contextmanager
def stores() -> Iterator[dict[str, tuple[Kong, list[str]]]]:
    """Both sessions, each with the URLs of its servers; everything stopped at the end."""
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.stop)
        cluster = LocalRedisCluster(SHARDS)
        stack.callback(cluster.stop)
        sessions = {}
        for name, url, urls in (
            ("one-node", server.url, [server.url]),
            ("cluster", cluster.url, cluster.urls),
        ):
            session = stack.enter_context(Kong(backend="processes", store=url))
            warm_up(session.get)
            sessions[name] = (session, urls)
        yield sessions


#: --inputs: the workloads' own inputs drawn in the graph, or NumPy arrays handed to dask
#: with da.from_array (the user's data, uploaded by kong).
INPUTS = ("generated", "from-array")


def build_case(spec: workloads.WorkloadSpec, inputs: str) -> tuple[str, Case]:
    """The workload's name in the table and its case, on `inputs` (INPUTS)."""
    if inputs == "generated":
        return spec.name, spec.module.build(spec.params)
    if not hasattr(spec.module, "build_from_array"):
        raise ValueError(f"workload {spec.name!r} has no from-array version")
    return f"{spec.name} from_array", spec.module.build_from_array(spec.params)


def measure(size: str, repeat: int, names: list[str], inputs: list[str]) -> list[Cell]:
    cells: list[Cell] = []
    with stores() as sessions:
        for spec, kind in ((s, k) for s in workloads.resolve(names, size) for k in inputs):
            name, case = build_case(spec, kind)
            by_store = {store: Cell(name, store) for store in STORES}
            for store in STORES:  # untimed: worker processes and history warm up
                session, _ = sessions[store]
                dask.compute(*case.collections, scheduler=session.get)
            for i in range(repeat):
                order = STORES if i % 2 == 0 else STORES[::-1]
                for store in order:
                    session, urls = sessions[store]
                    timed_run(session, case, urls, by_store[store])
                    print(
                        f"{name} {store} repeat {i + 1}: {by_store[store].times_s[-1]:.2f} s"
                        f" (load {by_store[store].loads[-1]:.1f})",
                        file=sys.stderr,
                    )
            cells += by_store.values()
    return cells


# Rounds of --ops: each store measured this many times, alternating with the other.
OP_ROUNDS = 5


def operation_latencies(count: int) -> dict[str, dict[str, float]]:
    """store -> operation -> median seconds (see the module docstring)."""
    samples: dict[str, dict[str, list[float]]] = {s: {} for s in STORES}
    with contextlib.ExitStack() as stack:
        server = RedisServer()
        stack.callback(server.stop)
        cluster = LocalRedisCluster(SHARDS)
        stack.callback(cluster.stop)
        stores = {"one-node": connect(server.url), "cluster": connect(cluster.url)}
        for store in stores.values():
            stack.callback(store.close)
        for round_ in range(OP_ROUNDS):
            for name in STORES if round_ % 2 == 0 else STORES[::-1]:
                for op, seconds in time_operations(stores[name], count, round_).items():
                    samples[name].setdefault(op, []).extend(seconds)
    return {s: {op: statistics.median(t) for op, t in ops.items()} for s, ops in samples.items()}


def time_operations(store: Store, count: int, round_: int) -> dict[str, list[float]]:
    """Seconds of each call of each operation, `count` calls each, in a fresh run."""
    run = f"ops-{round_}"
    store.open_run(run)

    def done(task: int) -> list[Event]:
        return [Event(EventKind.TASK_DONE, task, "w")]

    operations: dict[str, Callable[[int], object]] = {
        "commit of an output, a mark and an event": lambda i: store.commit(
            run, {f"out:{i}": i}, [FanIn(count + i, i, 2)], done(i)
        ),
        "commit of a mark and an event": lambda i: store.commit(
            run, {}, [FanIn(count + i, i + 1, 2)], done(i)
        ),
        "get_many of one output": lambda i: store.get_many(run, [f"out:{i}"]),
        "get_many of three outputs": lambda i: store.get_many(
            run, [f"out:{(i + k) % count}" for k in range(3)]
        ),
        "three get_many of one output, one after another": lambda i: [
            store.get_many(run, [f"out:{(i + k) % count}"]) for k in range(3)
        ],
        "commit of three outputs": lambda i: store.commit(
            run, {f"three:{i}:{k}": k for k in range(3)}
        ),
        "is_cancelled": lambda i: store.is_cancelled(run),
    }
    seconds: dict[str, list[float]] = {}
    for op, call in operations.items():
        for i in range(count):
            started = time.perf_counter()
            call(i)
            seconds.setdefault(op, []).append(time.perf_counter() - started)
    store.delete_run(run)
    return seconds


def operations_table(latencies: dict[str, dict[str, float]]) -> str:
    rows = ["| operation | one node | 3-shard cluster |", "| --- | ---: | ---: |"]
    for op, one in latencies["one-node"].items():
        rows.append(f"| {op} | {one * 1e6:.0f} us | {latencies['cluster'][op] * 1e6:.0f} us |")
    return "\n".join(rows)


def table(cells: list[Cell]) -> str:
    """The markdown table of docs/benchmarks.md."""
    rows = [
        "| workload | one node | 3-shard cluster | cluster / one node | written per run "
        "| MB received by each shard per run | largest shard's share | repeats' ratios "
        "| load average |",
        "| --- | ---: | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    by_workload: dict[str, dict[str, Cell]] = {}
    for cell in cells:
        by_workload.setdefault(cell.workload, {})[cell.store] = cell
    for workload, pair in by_workload.items():
        one, spread = pair["one-node"], pair["cluster"]
        shards = ", ".join(f"{b / 1e6:.0f}" for b in sorted(spread.received_per_run().values()))
        written = statistics.median(spread.bytes_written) / 1e6
        ratios = [c / o for c, o in zip(spread.times_s, one.times_s, strict=True)]
        rows.append(
            f"| {workload} | {one.median_s:.2f} s | {spread.median_s:.2f} s "
            f"| {statistics.median(ratios):.2f}x | {written:.0f} MB | {shards} "
            f"| {spread.largest_share():.0%} | {min(ratios):.2f}x-{max(ratios):.2f}x "
            f"| {min(one.loads + spread.loads):.1f}-{max(one.loads + spread.loads):.1f} |"
        )
    return "\n".join(rows)


# Keys each filler write sends (the cluster client splits them by slot).
_FILL_BATCH = 10_000


def deletion_times(foreign: int, repeat: int, outputs: int) -> dict[str, list[float]]:
    """Seconds to delete a run of `outputs` outputs, each with a fan-in mark, on a
    three-shard cluster whose shards hold `foreign` keys of no run (see the module
    docstring), `repeat` times each way, the two ways alternating: "by its slot" is
    `delete_run`; "by a SCAN of its shard" is how `delete_run` found the run's own keys
    before (the registry's values deleted alike, then SCAN MATCH on the run's shard)."""
    samples: dict[str, list[float]] = {"by its slot": [], "by a SCAN of its shard": []}
    with contextlib.ExitStack() as stack:
        cluster = LocalRedisCluster(SHARDS)
        stack.callback(cluster.stop)
        store = connect(cluster.url)
        stack.callback(store.close)
        assert isinstance(store, RedisClusterStore)
        filler = stack.enter_context(contextlib.closing(RedisCluster.from_url(cluster.url)))
        for start in range(0, foreign, _FILL_BATCH):
            stop = min(foreign, start + _FILL_BATCH)
            filler.mset_nonatomic({f"filler:{i}": b"x" * 100 for i in range(start, stop)})
        for i in range(repeat):
            for way in list(samples) if i % 2 == 0 else list(samples)[::-1]:
                run = f"delete-{i}-{len(samples[way])}-{way[3]}"
                store.open_run(run)
                fan_ins = [FanIn(outputs + t, t, 2) for t in range(outputs)]
                store.commit(run, {f"out:{t}": t for t in range(outputs)}, fan_ins)
                started = time.perf_counter()
                (store.delete_run if way == "by its slot" else _delete_by_scan(store))(run)
                samples[way].append(time.perf_counter() - started)
                if store.run_keys(run):
                    raise AssertionError(f"{way}: keys of run {run} left")
    return samples


def _delete_by_scan(store: RedisClusterStore) -> Callable[[str], int]:
    """The deletion `delete_run` did before it listed the run's slot: SCAN MATCH."""

    def delete(run: str) -> int:
        live = store._run_client(run).unlink(run_prefix(run) + LIVE_KEY)
        values = store._delete_values(run)
        return int(live) + values + store._delete_prefixed(run, lambda: store._run_client(run))

    return delete


def main(argv: list[str] | None = None) -> int:
    security.ensure_key()  # the store is also used directly here: sign as a client does
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="core", choices=workloads.SIZES)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument(
        "--inputs", default=",".join(INPUTS), help=f"comma-separated, of {', '.join(INPUTS)}"
    )
    parser.add_argument("--json", help="write every repeat here")
    parser.add_argument("--ops", type=int, help="time single store operations instead")
    parser.add_argument(
        "--delete",
        type=int,
        metavar="FOREIGN_KEYS",
        help="time deleting a run on shards holding this many other keys instead",
    )
    parser.add_argument("--outputs", type=int, default=200, help="outputs of a --delete run")
    args = parser.parse_args(argv)
    if args.delete is not None:
        times = deletion_times(args.delete, args.repeat, args.outputs)
        for way, seconds in times.items():
            print(f"{way}: median {statistics.median(seconds) * 1e3:.2f} ms of {len(seconds)}")
        return 0
    if args.ops:
        print(operations_table(operation_latencies(args.ops)))
        return 0
    inputs = args.inputs.split(",")
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown:
        parser.error(f"unknown --inputs {unknown}; known: {', '.join(INPUTS)}")
    cells = measure(args.size, args.repeat, args.workloads.split(","), inputs)
    print(table(cells))
    if args.json:
        document = {
            "command": " ".join(["python -m benchmarks.cluster_spread", *(argv or sys.argv[1:])]),
            "machine": environment.describe_machine(),
            "versions": environment.describe_versions(),
            "cells": [asdict(cell) for cell in cells],
        }
        with open(args.json, "w") as f:
            json.dump(document, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
