"""How fast one worker moves a value through the Redis store, pickling included: the
figure behind `kong.wukong.recompute_bytes_per_s` (recompute a task rather than move its
output when running it takes less than `bytes / rate`).

    python -m benchmarks.store_throughput --mb 8 --repeat 20

Writes then reads a float64 block of the given size through `RedisStore` (a private
redis-server, as `Kong(store="redis")` starts), and reports the median time of each way
and the rate both together give: a recipe saves the writer's write and each reader's read.
It also times drawing the same block with NumPy, the typical task recomputation replaces.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from dask_kong import security
from dask_kong.store.redis import open_store


def measure(mb: float, repeat: int) -> dict[str, float]:
    """Median write and read seconds of an `mb` MB block, and the draw time."""
    security.ensure_key()  # values are signed pickles, as a session's client writes them
    rng = np.random.default_rng(0)
    block = rng.random(int(mb * 2**20 / 8))
    writes, reads, draws = [], [], []
    security.ensure_key()  # a client of the store: it signs what it writes
    store = open_store("redis")
    try:
        for i in range(repeat):
            run_id = f"throughput-{i}"
            store.open_run(run_id)  # a store takes commits only for an open run
            started = time.perf_counter()
            store.commit(run_id, {"out:0": block})
            writes.append(time.perf_counter() - started)
            started = time.perf_counter()
            store.get_many(run_id, ["out:0"])
            reads.append(time.perf_counter() - started)
            store.delete_run(run_id)
            started = time.perf_counter()
            rng.random(block.size)
            draws.append(time.perf_counter() - started)
    finally:
        store.close()
    write, read = statistics.median(writes), statistics.median(reads)
    return {
        "bytes": float(block.nbytes),
        "write_s": write,
        "read_s": read,
        "write_mb_s": block.nbytes / write / 1e6,
        "read_mb_s": block.nbytes / read / 1e6,
        "draw_s": statistics.median(draws),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=8.0, help="block size in MiB")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args(argv)
    m = measure(args.mb, args.repeat)
    print(f"block {m['bytes'] / 1e6:.1f} MB, median of {args.repeat}:")
    print(f"  write {m['write_s'] * 1e3:.1f} ms ({m['write_mb_s']:.0f} MB/s)")
    print(f"  read  {m['read_s'] * 1e3:.1f} ms ({m['read_mb_s']:.0f} MB/s)")
    print(f"  draw with numpy {m['draw_s'] * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
