"""The one serializer: cloudpickle with pickle protocol 5.

cloudpickle handles lambdas and closures in user tasks; protocol 5 keeps NumPy buffers as
one contiguous copy. Errors name the object that could not be pickled. Every pickle is
signed on the way out and checked on the way in (`security`): this is the one place where
bytes become objects, so it is the one place that refuses bytes nobody with the key wrote.
Every caller says where the pickle belongs (`security.place`: a run's key, its events, its
spec, an invocation's inputs), and a pickle read anywhere else is refused.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from . import security
from .errors import SerializationError


def dumps(obj: Any, *, where: bytes, what: str = "object") -> bytes:
    """Serialize `obj`, signed for place `where` (`security.place`); `what` names it in
    the error (e.g. "output of task ('x', 0)")."""
    # cloudpickle (not plain pickle) always: plain pickle stores functions of __main__ by
    # reference, which a worker process cannot import.
    try:
        data: bytes = cloudpickle.dumps(obj, protocol=5)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {type(obj).__name__}: {exc}"
        ) from exc
    return security.sign(data, where)


def loads(data: bytes, *, where: bytes, what: str = "data") -> Any:
    """Inverse of `dumps`; `SignatureError` (naming `what`) for a pickle without a valid
    signature for place `where`."""
    return pickle.loads(security.verified(data, what, where))
