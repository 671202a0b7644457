"""The one serializer: pickle protocol 5, by cloudpickle where plain pickle cannot.

cloudpickle handles lambdas, closures and what `__main__` defines in user tasks; plain
pickle is much faster on everything else (events, small outputs); protocol 5 keeps NumPy
buffers as one contiguous copy. Errors name the object that could not be pickled. Every pickle is
signed on the way out and checked on the way in (`security`): this is the one place where
bytes become objects, so it is the one place that refuses bytes nobody with the key wrote.
Every caller says where the pickle belongs (`security.place`: a run's key, its events, its
spec, an invocation's inputs), and a pickle read anywhere else is refused.

A signed blob's body keeps large buffers (a NumPy array's memory, a pandas column's)
out of the pickle (protocol 5's out-of-band buffers):

    count (u32) | length of each buffer (u64 each) | pickle | buffer | buffer ...

so writing a value copies its memory once, into the blob, where pickling it in band and
then putting the header in front copied it twice (on fresh memory, as a task's output
is, each copy of 8 MB cost ~7 ms here against ~4 ms for its MAC). Reading gives each
buffer back as a bytearray of its own (one copy, as an in-band pickle makes): arrays come
back writable. Unsigned pickles (`kong.security.sign: false`) stay plain, in band.
"""

from __future__ import annotations

import pickle
import struct
import sys
from typing import Any

import cloudpickle

from . import security
from .errors import SerializationError

# The frame of a signed body without out-of-band buffers (a count of 0).
_NO_BUFFERS = struct.pack("<I", 0)


def dumps(obj: Any, *, where: bytes, what: str = "object") -> bytes:
    """Serialize `obj`, signed for place `where` (`security.place`); `what` names it in
    the error (e.g. "output of task ('x', 0)")."""
    key = security.signing_key()
    if key is None:
        return dumps_unsigned(obj, what=what)
    buffers: list[memoryview] = []
    try:
        pickled = _pickle(obj, buffers)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {type(obj).__name__}: {exc}"
        ) from exc
    frame = (
        struct.pack(f"<I{len(buffers)}Q", len(buffers), *(b.nbytes for b in buffers))
        if buffers
        else _NO_BUFFERS
    )
    return security.sign([frame, pickled, *buffers], where, key)


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


def _pickle(obj: Any, buffers: list[memoryview] | None = None) -> bytes:
    """Plain pickle when it can (three to ten times faster than cloudpickle on the small
    values and events most tasks make), cloudpickle when it must: plain pickle refuses
    lambdas and closures, and stores what `__main__` defines by reference, which a worker
    process cannot import; distributed's `protocol.pickle.dumps` decides the same way.
    With `buffers`, contiguous buffers go there (views, not copies) instead of into the
    pickle."""
    keep = None if buffers is None else _out_of_band(buffers)
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        return _cloudpickle(obj, buffers)
    if _plain_array(obj):
        return data  # refers to numpy alone: scanning its megabytes would cost 40% more
    if b"__main__" in data or _by_value_module(data):
        return _cloudpickle(obj, buffers)
    return data


def _cloudpickle(obj: Any, buffers: list[memoryview] | None) -> bytes:
    """`obj` pickled by cloudpickle (buffers out of band into `buffers` when given; those
    a failed plain pickle left there are dropped first)."""
    if buffers is None:
        return bytes(cloudpickle.dumps(obj, protocol=5))
    buffers.clear()
    return bytes(cloudpickle.dumps(obj, protocol=5, buffer_callback=_out_of_band(buffers)))


def _out_of_band(buffers: list[memoryview]) -> Any:
    """A pickle `buffer_callback` that keeps each contiguous buffer out of band, as a flat
    byte view appended to `buffers`; a buffer that cannot be viewed flat stays in band."""

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(buffer.raw())
        except BufferError:
            return True  # not contiguous: pickled in band
        return False

    return keep


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
    body = security.verified(data, what, where)
    if not security.is_signed(data):
        return pickle.loads(body)  # a plain pickle (signing is off)
    if body[:4] == _NO_BUFFERS:  # most pickles: events, small outputs
        return pickle.loads(body[4:])
    (count,) = struct.unpack_from("<I", body)
    lengths = struct.unpack_from(f"<{count}Q", body, 4)
    end = len(body)
    buffers = []
    for length in reversed(lengths):
        buffers.append(bytearray(body[end - length : end]))  # writable, as in band
        end -= length
    buffers.reverse()
    return pickle.loads(body[4 + 8 * count : end], buffers=buffers)


def loads_trusted(data: bytes) -> Any:
    """Inverse of `dumps_unsigned`: only for a pickle taken out of a signed one whose
    signature was just checked (`loads`), never for bytes read from anywhere else."""
    return pickle.loads(data)
