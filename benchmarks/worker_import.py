"""What a worker's cold start pays to import dask-kong's handler.

Each repeat imports the modules in a fresh interpreter under `python -X importtime` and
records the wall time of the import, the peak RSS afterwards, how many modules were
loaded and the sum of their own (self) import times. `--repo` points at another checkout
(a `git worktree` of an older commit) to compare code versions on the same machine:

    git worktree add /tmp/kong-old e6be2ef
    python -m benchmarks.worker_import --repo /tmp/kong-old \
        --modules dask_kong.backends.aws_lambda.handler,dask_kong.store.redis
    python -m benchmarks.worker_import
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
from dataclasses import asdict, dataclass

#: One line of `python -X importtime`: self and cumulative microseconds, then the name.
_IMPORTTIME = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|\s*(\S+)")

_PROBE = (
    "import resource, time\n"
    "t = time.perf_counter()\n"
    "{imports}\n"
    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)


@dataclass
class ImportSample:
    """One fresh interpreter's import of the handler."""

    wall_s: float
    max_rss_mb: float
    modules: int
    self_time_s: float


def sample(repo: str, modules: list[str]) -> ImportSample:
    """Import `modules` in a fresh interpreter whose working directory is `repo`."""
    code = _PROBE.format(imports="\n".join(f"import {m}" for m in modules))
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    )
    wall, rss_kb = done.stdout.split()
    selfs = [int(m.group(1)) for m in map(_IMPORTTIME.match, done.stderr.splitlines()) if m]
    return ImportSample(float(wall), int(rss_kb) / 1024, len(selfs), sum(selfs) / 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.worker_import")
    parser.add_argument("--repo", default=".", help="checkout to import from")
    parser.add_argument("--modules", default="dask_kong.handler", help="comma-separated")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", help="write every sample here")
    args = parser.parse_args(argv)
    samples = [sample(args.repo, args.modules.split(",")) for _ in range(args.repeat)]
    med = {
        field: statistics.median(getattr(s, field) for s in samples)
        for field in ("wall_s", "max_rss_mb", "modules", "self_time_s")
    }
    print(
        f"{args.modules} from {args.repo}: import {med['wall_s']:.3f} s wall, "
        f"{med['self_time_s']:.3f} s self time over {med['modules']:.0f} modules, "
        f"peak RSS {med['max_rss_mb']:.1f} MB (medians of {args.repeat})"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "samples": [asdict(s) for s in samples]}, f, indent=1)


if __name__ == "__main__":
    main()
