"""A worker's cold start imports only what a worker runs: importing the handler loads no
session, client, planner, report, DOT export, diagnostics, benchmarks or distributed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Module prefixes a worker process must not import.
CLIENT_ONLY = (
    "dask_kong.session",
    "dask_kong.runtime.client",
    "dask_kong.runtime.prefetch",
    "dask_kong.planning.planners",
    "dask_kong.planning.report",
    "dask_kong.planning.dot",
    "dask_kong.planning.history",
    "dask_kong.planning.predict",
    "dask_kong.planning.schedule",
    "dask_kong.diagnostics",
    "dask_kong.demo",
    "benchmarks",
    "distributed",
    "bokeh",
)


def modules_after_import(statement: str) -> list[str]:
    """The modules loaded in a fresh interpreter after `statement`."""
    code = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded: list[str] = json.loads(out.stdout)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import dask_kong.handler",
        "from dask_kong.backends.processes import worker_main",
        "import dask_kong",
    ],
)
def test_importing_the_worker_loads_nothing_only_the_client_needs(statement: str) -> None:
    loaded = modules_after_import(statement)
    client_only = [m for m in loaded if m.startswith(CLIENT_ONLY)]
    assert client_only == []


def test_the_session_still_loads_on_first_use() -> None:
    loaded = modules_after_import("import dask_kong\ndask_kong.Kong")
    assert "dask_kong.session" in loaded
