"""What signing pickles costs per call (issue #18): `serialize.dumps` and `loads` with
kong.security.sign on and off, for a small object (an event-sized dict) and a large one
(an 8 MB NumPy block, a GEMM chunk of the core suite is 8 MB).

    python -m benchmarks.signing_cost [--repeat N]

Prints one JSON object: microseconds per dumps and loads, signed and unsigned, and the
signed/unsigned difference per MB. The suite-level cost is measured by the core suite
with the kong-*-unsigned schedulers beside the signed ones (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import dask.config
import numpy as np

from dask_kong import security, serialize

#: The place the measured pickles are signed for (a stored value's, as most are).
WHERE = security.place("value", "a-run-id-of-32-hex-characters-xx", "out:12345")


def best_of(repeat: int, call: Callable[[], Any]) -> float:
    """Fastest of `repeat` timings of `call`, in seconds (the least disturbed by load)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - started)
    return best


def measure(obj: Any, repeat: int) -> dict[str, float]:
    """Microseconds per dumps and loads of `obj`, signed and unsigned."""
    result: dict[str, float] = {}
    for sign in (True, False):
        with dask.config.set({"kong.security.sign": sign}):
            blob = serialize.dumps(obj, where=WHERE)
            label = "signed" if sign else "unsigned"
            dumps = partial(serialize.dumps, obj, where=WHERE)
            loads = partial(serialize.loads, blob, where=WHERE)
            result[f"dumps_{label}_us"] = best_of(repeat, dumps) * 1e6
            result[f"loads_{label}_us"] = best_of(repeat, loads) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    security.ensure_key()
    block = np.random.default_rng(0).random((1024, 1024))  # 8 MB
    small = {"kind": "task-finished", "task": 12, "worker": "w-1", "bytes": 4096}
    report = {
        "small": measure(small, args.repeat * 20),
        "block_8mb": measure(block, args.repeat),
    }
    big = report["block_8mb"]
    extra_us = (big["dumps_signed_us"] - big["dumps_unsigned_us"]) + (
        big["loads_signed_us"] - big["loads_unsigned_us"]
    )
    report["signing_us_per_mb"] = {"dumps_plus_loads": extra_us / (block.nbytes / 2**20)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
