"""The one serializer: cloudpickle with pickle protocol 5.

cloudpickle handles lambdas and closures in user tasks; protocol 5 keeps NumPy buffers as
one contiguous copy. Errors name the object that could not be pickled.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from .errors import SerializationError


def dumps(obj: Any, *, what: str = "object") -> bytes:
    """Serialize `obj`; `what` names it in the error (e.g. "output of task ('x', 0)")."""
    # cloudpickle (not plain pickle) always: plain pickle stores functions of __main__ by
    # reference, which a worker process cannot import.
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=5)
        return data
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {type(obj).__name__}: {exc}"
        ) from exc


def loads(data: bytes) -> Any:
    """Inverse of `dumps`."""
    return pickle.loads(data)
