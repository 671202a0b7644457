"""dataframe-groupby: `df.groupby("key").value.sum()` over a frame of integer keys and
float values: a dataframe tree reduction (partial sums per partition, then combined).
Generated, each partition is drawn inside its task (`dd.from_map`); on the user's data
(`dataframe-groupby-data`) the frame is the client's pandas DataFrame (`dd.from_pandas`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .base import SEED, Case, compare_arrays, user_data

if TYPE_CHECKING:
    import pandas as pd

# pandas and dask.dataframe are imported where they are used: every worker process that
# runs a task of any workload imports this package, and they take seconds to import.

NAME = "dataframe-groupby"
USER_DATA = True
SIZES = {
    "quick": {"rows": 1_000_000, "partitions": 8, "keys": 100},
    "core": {"rows": 8_000_000, "partitions": 32, "keys": 1000},
    "full": {"rows": 32_000_000, "partitions": 64, "keys": 1000},
}


def partition(index: int, rows: int, keys: int) -> pd.DataFrame:
    """Partition `index`: `rows` rows drawn from a generator seeded by SEED and `index`."""
    import pandas as pd

    rng = np.random.default_rng([SEED, index])
    return pd.DataFrame({"key": rng.integers(0, keys, rows), "value": rng.random(rows)})


def build(params: dict[str, Any]) -> Case:
    import dask.dataframe as dd
    import pandas as pd

    rows, parts, keys = params["rows"], params["partitions"], params["keys"]
    per_part = rows // parts
    frame = pd.concat([partition(i, per_part, keys) for i in range(parts)], ignore_index=True)
    if user_data(params):
        df = dd.from_pandas(frame, npartitions=parts, sort=False)
    else:
        df = dd.from_map(partition, range(parts), rows=per_part, keys=keys)
    expected = frame.groupby("key").value.sum().sort_index()

    def check(results: Any) -> str | None:
        got = results[0].sort_index()
        if not got.index.equals(expected.index):
            return "groupby keys differ from pandas'"
        return compare_arrays(got.to_numpy(), expected.to_numpy(), "sums", rtol=1e-12)

    return Case(
        collections=(df.groupby("key").value.sum(),),
        check=check,
        numpy_fn=lambda: (frame.groupby("key").value.sum(),),
        description=(
            f"groupby('key').value.sum() of {rows:,} rows ({keys} keys) in {parts} "
            + (
                "partitions of a client pandas DataFrame (dd.from_pandas)"
                if user_data(params)
                else "partitions drawn in the graph (dd.from_map)"
            )
            + "; numpy column: pandas on the whole frame"
        ),
    )
