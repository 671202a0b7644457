"""The one serializer: pickle protocol 5, by cloudpickle where plain pickle cannot.

cloudpickle handles lambdas, closures and what `__main__` defines in user tasks; plain
pickle is much faster on everything else (events, small outputs); protocol 5 keeps NumPy
buffers as one contiguous copy. Errors name the object that could not be pickled. Every pickle is
signed on the way out and checked on the way in (`security`): this is the one place where
bytes become objects, so it is the one place that refuses bytes nobody with the key wrote.
Every caller says where the pickle belongs (`security.place`: a run's key, its events, its
spec, an invocation's inputs), and a pickle read anywhere else is refused.
"""

from __future__ import annotations

import pickle
import sys
from typing import Any

import cloudpickle

from . import security
from .errors import SerializationError


def dumps(obj: Any, *, where: bytes, what: str = "object") -> bytes:
    """Serialize `obj`, signed for place `where` (`security.place`); `what` names it in
    the error (e.g. "output of task ('x', 0)")."""
    return security.sign(dumps_unsigned(obj, what=what), where)


def dumps_unsigned(obj: Any, *, what: str = "object") -> bytes:
    """Serialize `obj` without a signature: only for a pickle that travels inside
    another, signed one (the run spec's DAG), so that it is signed and checked once."""
    try:
        return _pickle(obj)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {type(obj).__name__}: {exc}"
        ) from exc


def can_serialize(obj: Any) -> bool:
    """Whether `dumps` can serialize `obj` (tried; the bytes are thrown away)."""
    try:
        _pickle(obj)
    except Exception:
        return False
    return True


def _pickle(obj: Any) -> bytes:
    """Plain pickle when it can (three to ten times faster than cloudpickle on the small
    values and events most tasks make), cloudpickle when it must: plain pickle refuses
    lambdas and closures, and stores what `__main__` defines by reference, which a worker
    process cannot import; distributed's `protocol.pickle.dumps` decides the same way."""
    try:
        data = pickle.dumps(obj, protocol=5)
    except Exception:
        return bytes(cloudpickle.dumps(obj, protocol=5))
    if _plain_array(obj):
        return data  # refers to numpy alone: scanning its megabytes would cost 40% more
    if b"__main__" in data or _by_value_module(data):
        return bytes(cloudpickle.dumps(obj, protocol=5))
    return data


def _plain_array(obj: Any) -> bool:
    """Whether `obj` is a NumPy array of plain numbers (no Python objects inside): its
    pickle names only numpy's own functions, so nothing in it needs cloudpickle."""
    numpy = sys.modules.get("numpy")
    return numpy is not None and type(obj) is numpy.ndarray and not obj.dtype.hasobject


def _by_value_module(data: bytes) -> bool:
    """Whether `data` refers to a module registered with cloudpickle to be pickled by
    value (`cloudpickle.register_pickle_by_value`): its workers may not have it."""
    registered = cloudpickle.list_registry_pickle_by_value()
    return any(name.encode() in data for name in registered)


def loads(data: bytes, *, where: bytes, what: str = "data") -> Any:
    """Inverse of `dumps`; `SignatureError` (naming `what`) for a pickle without a valid
    signature for place `where`."""
    return pickle.loads(security.verified(data, what, where))


def loads_trusted(data: bytes) -> Any:
    """Inverse of `dumps_unsigned`: only for a pickle taken out of a signed one whose
    signature was just checked (`loads`), never for bytes read from anywhere else."""
    return pickle.loads(data)
