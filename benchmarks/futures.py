"""The futures workload: `client.map` over many small inputs, then a tree of `submit`s,
on dask_kong.Client against distributed's Client on LocalCluster(n_workers=2,
threads_per_worker=1), in one run.

    python -m benchmarks.futures                      # kong-threads, kong-processes, distributed
    python -m benchmarks.futures --quick              # 1,000 inputs, 128 leaves
    python -m benchmarks.futures --inputs 10000 --leaves 1024 --repeat 3 --json out.json

Each repeat times, per client: `gather(map(inc, range(inputs)))`, then a binary tree of
`submit(add, a, b)` over `leaves` mapped leaves down to one Future, `result()` of its
root. Every client is started (and its workers warmed by one call) before the clock
starts, and the clients take turns within each repeat (the order rotating from one
repeat to the next), so a change in the machine's load hits them alike; each sample
records the load average when it started. The table gives medians, and each kong
client's ratio to distributed's as the median of its per-repeat ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

CLIENTS = ("kong-threads", "kong-processes", "distributed")


def inc(x: int) -> int:
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


@dataclass
class Sample:
    client: str
    repeat: int
    map_s: float
    tree_s: float
    #: 1-minute load average when the sample started.
    load: float = 0.0

    @property
    def total_s(self) -> float:
        return self.map_s + self.tree_s


def open_client(name: str) -> Any:
    """A started client called `name`, its workers warmed by one call."""
    if name == "distributed":
        from distributed import Client, LocalCluster

        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True)
        client: Any = Client(cluster, set_as_default=False)
        client._bench_cluster = cluster
    else:
        from dask_kong import Client as KongClient

        backend = name.removeprefix("kong-")
        store = "memory" if backend == "threads" else "redis"
        client = KongClient(backend=backend, store=store, workers=2, set_as_default=False)
    client.submit(inc, -1, pure=False).result()
    return client


def close_client(client: Any) -> None:
    client.close()
    cluster = getattr(client, "_bench_cluster", None)
    if cluster is not None:
        cluster.close()


def timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = work()
    return time.perf_counter() - started, value


def tree(client: Any, leaves: int) -> int:
    level = client.map(inc, range(leaves), pure=False)
    while len(level) > 1:
        pairs = zip(level[::2], level[1::2], strict=True)
        level = [client.submit(add, a, b, pure=False) for a, b in pairs]
    return int(level[0].result())


def run_once(client: Any, name: str, repeat: int, inputs: int, leaves: int) -> Sample:
    load = os.getloadavg()[0]
    map_s, values = timed(lambda: client.gather(client.map(inc, range(inputs), pure=False)))
    assert values == list(range(1, inputs + 1)), f"{name}: wrong map result"
    tree_s, root = timed(lambda: tree(client, leaves))
    assert root == sum(range(1, leaves + 1)), f"{name}: wrong tree result"
    return Sample(name, repeat, map_s, tree_s, load)


def table(samples: list[Sample]) -> str:
    names = list(dict.fromkeys(s.client for s in samples))
    medians = {
        name: {
            part: statistics.median(getattr(s, part) for s in samples if s.client == name)
            for part in ("map_s", "tree_s", "total_s")
        }
        for name in names
    }
    lines = [
        "| client | map (s) | tree (s) | total (s) | total vs distributed (median of repeats) |",
        "|---|---|---|---|---|",
    ]
    for name, m in medians.items():
        ratios = repeat_ratios(samples, name)
        ratio = (
            f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
            if ratios
            else "-"
        )
        lines.append(
            f"| {name} | {m['map_s']:.3f} | {m['tree_s']:.3f} | {m['total_s']:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def repeat_ratios(samples: list[Sample], name: str) -> list[float]:
    """`name`'s total over distributed's, per repeat both ran."""
    base = {s.repeat: s.total_s for s in samples if s.client == "distributed"}
    return [s.total_s / base[s.repeat] for s in samples if s.client == name and s.repeat in base]


def commit() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True
    )
    return out.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=10_000)
    parser.add_argument("--leaves", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="1,000 inputs, 128 leaves")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--json", default=None, help="write every sample here")
    args = parser.parse_args(argv)
    if args.quick:
        args.inputs, args.leaves = 1000, 128
    names = args.clients.split(",")
    clients: dict[str, Any] = {}
    samples = []
    try:
        for name in names:
            clients[name] = open_client(name)
        for repeat in range(args.repeat):
            turn = names[repeat % len(names) :] + names[: repeat % len(names)]
            for name in turn:
                samples.append(run_once(clients[name], name, repeat, args.inputs, args.leaves))
                print(samples[-1], f"total {samples[-1].total_s:.3f} s", flush=True)
    finally:
        for client in clients.values():
            close_client(client)
    load = os.getloadavg()[0]
    loads = [s.load for s in samples] or [load]
    print(
        f"commit {commit()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {load:.1f} at the end, {min(loads):.1f}-{max(loads):.1f} at the "
        f"samples' starts, on {os.cpu_count()} cores"
    )
    print(table(samples))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"commit": commit(), "load": load, "samples": [asdict(s) for s in samples]},
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
