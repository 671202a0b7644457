"""The futures example of docs/migration.md, written for distributed, runs on dask-kong
with only its import line changed."""

from __future__ import annotations

import re
from pathlib import Path

import dask

MIGRATION = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
DISTRIBUTED_IMPORT = "from dask.distributed import Client, as_completed"


def distributed_example() -> str:
    text = MIGRATION.read_text()
    match = re.search(r"```python distributed-example\n(.*?)```", text, re.S)
    assert match is not None, "docs/migration.md lost its distributed example"
    return match.group(1)


def test_the_distributed_example_runs_with_only_the_import_changed() -> None:
    source = distributed_example()
    assert source.count(DISTRIBUTED_IMPORT) == 1
    ported = source.replace(DISTRIBUTED_IMPORT, "from dask_kong import Client, as_completed")
    assert [a for a, b in zip(source.splitlines(), ported.splitlines(), strict=True) if a != b] == [
        DISTRIBUTED_IMPORT
    ]
    before = dask.config.get("scheduler", None)
    namespace: dict[str, object] = {"__name__": "migration_example"}
    with dask.config.set({"kong.backend": "threads", "kong.store.kind": "memory"}):
        exec(compile(ported, str(MIGRATION), "exec"), namespace)  # the asserts inside run
    client = namespace["client"]
    assert getattr(client, "status", None) == "closed"
    assert dask.config.get("scheduler", None) == before  # closing gave the scheduler back
