"""The one serializer: pickle protocol 5, by cloudpickle where plain pickle cannot.

cloudpickle handles lambdas, closures and what `__main__` defines in user tasks; plain
pickle is much faster on everything else (events, small outputs); protocol 5 keeps NumPy
buffers as one contiguous copy. Errors name the object that could not be pickled. Every pickle is
signed on the way out and checked on the way in (`security`): this is the one place where
bytes become objects, so it is the one place that refuses bytes nobody with the key wrote.
Every caller says where the pickle belongs (`security.place`: a run's key, its events, its
spec, an invocation's inputs), and a pickle read anywhere else is refused.

A signed blob's body keeps large buffers (a NumPy array's memory, a pandas column's: at
least `kong.security.out_of_band_bytes`) out of the pickle (protocol 5's out-of-band
buffers):

    count (u32) | per buffer: length, read-only in the top bit (u64) | pickle | buffers

so writing a value copies its memory once, into the blob, where pickling it in band and
then putting the header in front copied it twice (docs/benchmarks.md, "What signing
costs"). Reading gives each buffer back as a copy of its own, as pickle would in band:
a bytearray for a writable buffer, bytes for a read-only one. An array a worker froze
because it shares it (`runtime.data_cache`), or a view of one, is written as writable
(`_as_written`): what a reader gets is its own copy, writable as distributed gives it.
Unsigned pickles (`kong.security.sign: false`) stay plain, in band.

`content_token` names a value by what it pickles to (the user's data in the session's
store): the same pickle parts, hashed.
"""

from __future__ import annotations

import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

import blake3
import cloudpickle

from . import config, security
from .errors import SerializationError

# The frame of a signed body without out-of-band buffers (a count of 0).
_NO_BUFFERS = struct.pack("<I", 0)
# A buffer's length word: the top bit says the buffer was read-only.
_READ_ONLY = 1 << 63
# `content_token` hashes a value of at least this many bytes on all cores: below it,
# handing the work to threads costs more than it saves (1,024 chunks of 256 KB took
# 0.28 s on threads against 0.19 s on one here).
_THREADED_HASH_BYTES = 4 << 20


def dumps(obj: Any, *, where: bytes, what: str = "object") -> bytes:
    """Serialize `obj`, signed for place `where` (`security.place`); `what` names it in
    the error (e.g. "output of task ('x', 0)")."""
    key = security.signing_key()
    if key is None:
        return dumps_unsigned(obj, what=what)
    return security.sign(_framed(obj, what), where, key)


def content_token(obj: Any, *, what: str = "object") -> str:
    """A name for `obj` by its content: the BLAKE3 hash of what it pickles to (its
    buffers out of band, so hashing copies nothing). Unlike `dask.base.tokenize`, which
    hashes an array's elements in memory order, it tells a square array from its
    transpose and object arrays whose joined text agree: uploads named by it are never
    read for another value."""
    parts = _framed(obj, what)
    large = sum(len(part) for part in parts) >= _THREADED_HASH_BYTES
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO if large else 1)
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest(length=20)


def _framed(obj: Any, what: str) -> list[bytes | memoryview]:
    """The parts of `obj`'s signed body: its frame, its pickle, its out-of-band buffers."""
    buffers: list[pickle.PickleBuffer] = []
    try:
        pickled = _pickle(obj, buffers)
    except Exception as exc:
        raise SerializationError(
            f"cannot serialize {what} of type {type(obj).__name__}: {exc}"
        ) from exc
    if not buffers:
        return [_NO_BUFFERS, pickled]
    views = [b.raw() for b in buffers]
    words = [v.nbytes | (_READ_ONLY if v.readonly else 0) for v in views]
    return [struct.pack(f"<I{len(words)}Q", len(words), *words), pickled, *views]


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


def _pickle(obj: Any, buffers: list[pickle.PickleBuffer] | None = None) -> bytes:
    """Plain pickle when it can (three to ten times faster than cloudpickle on the small
    values and events most tasks make), cloudpickle when it must: plain pickle refuses
    lambdas and closures, and stores what `__main__` defines by reference, which a worker
    process cannot import; distributed's `protocol.pickle.dumps` decides the same way.
    With `buffers`, contiguous buffers go there (views, not copies) instead of into the
    pickle."""
    keep = None if buffers is None else _out_of_band(buffers)
    obj = _as_written(obj)
    try:
        data = pickle.dumps(obj, protocol=5, buffer_callback=keep)
    except Exception:
        return _cloudpickle(obj, buffers)
    if _plain_array(obj):
        return data  # refers to numpy alone: scanning its megabytes would cost 40% more
    if b"__main__" in data or _by_value_module(data):
        return _cloudpickle(obj, buffers)
    return data


def _cloudpickle(obj: Any, buffers: list[pickle.PickleBuffer] | None) -> bytes:
    """`obj` pickled by cloudpickle (buffers out of band into `buffers` when given; those
    a failed plain pickle left there are dropped first)."""
    if buffers is None:
        return bytes(cloudpickle.dumps(obj, protocol=5))
    buffers.clear()
    return bytes(cloudpickle.dumps(obj, protocol=5, buffer_callback=_out_of_band(buffers)))


def _out_of_band(buffers: list[pickle.PickleBuffer]) -> Callable[[pickle.PickleBuffer], bool]:
    """A pickle `buffer_callback` that keeps each large contiguous buffer out of band
    (appended to `buffers`); small ones (below `kong.security.out_of_band_bytes`: the
    frame and the slicing cost more than copying them) and ones that cannot be viewed
    flat stay in band."""
    smallest = int(config.section("security")["out_of_band_bytes"])

    def keep(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:
            return True  # not contiguous: pickled in band
        if view.nbytes < smallest:
            return True
        buffers.append(buffer)
        return False

    return keep


def _as_written(obj: Any) -> Any:
    """`obj`, or a writable view of it when it is a NumPy array made read-only over
    memory that may be written (a worker's shared input, `runtime.data_cache`, or a
    view of one a task returned): pickle carries an array's read-only flag, and the
    reader's copy is its own. An array over read-only memory (bytes) stays as it is."""
    if not is_ndarray(obj, exactly=True) or obj.flags.writeable:
        return obj
    view = obj.view()
    try:
        view.flags.writeable = True
    except ValueError:
        return obj
    return view


def _plain_array(obj: Any) -> bool:
    """Whether `obj` is a NumPy array of plain numbers (no Python objects inside): its
    pickle names only numpy's own functions, so nothing in it needs cloudpickle."""
    return is_ndarray(obj, exactly=True) and not obj.dtype.hasobject


def is_ndarray(obj: Any, *, exactly: bool = False) -> bool:
    """Whether `obj` is a NumPy array (`exactly`: of that type, not a subclass such as a
    masked array), asked without importing NumPy: a process that never imported it has
    none."""
    numpy = sys.modules.get("numpy")
    if numpy is None:
        return False
    return type(obj) is numpy.ndarray if exactly else isinstance(obj, numpy.ndarray)


def _by_value_module(data: bytes) -> bool:
    """Whether `data` refers to a module registered with cloudpickle to be pickled by
    value (`cloudpickle.register_pickle_by_value`): its workers may not have it."""
    registered = cloudpickle.list_registry_pickle_by_value()
    return any(name.encode() in data for name in registered)


def loads(data: bytes | bytearray | memoryview, *, where: bytes, what: str = "data") -> Any:
    """Inverse of `dumps`; `SignatureError` (naming `what`) for a pickle without a valid
    signature for place `where`."""
    body = security.verified(data, what, where)
    if not security.is_signed(data):
        return pickle.loads(body)  # a plain pickle (signing is off)
    if body[:4] == _NO_BUFFERS:  # most pickles: events, small outputs
        return pickle.loads(body[4:])
    pickled, buffers = _unframed(body, what)
    return pickle.loads(pickled, buffers=buffers)


def _unframed(body: memoryview, what: str) -> tuple[memoryview, list[bytes | bytearray]]:
    """The pickle and the out-of-band buffers of a signed body (`_framed`), each buffer
    a copy as pickle would make it in band; `SerializationError` naming `what` when the
    frame does not add up (only a writer's bug can make one: the body is signed)."""
    try:
        (count,) = struct.unpack_from("<I", body)
        words = struct.unpack_from(f"<{count}Q", body, 4)
    except struct.error as exc:
        raise SerializationError(f"malformed {what}: its frame is cut short") from exc
    lengths = [w & ~_READ_ONLY for w in words]
    start = 4 + 8 * count
    end = len(body) - sum(lengths)
    if end < start:
        raise SerializationError(
            f"malformed {what}: its frame lists {sum(lengths)} bytes of buffers in a body "
            f"of {len(body)}"
        )
    pickled = body[start:end]
    buffers: list[bytes | bytearray] = []
    for word, length in zip(words, lengths, strict=True):
        view = body[end : end + length]
        buffers.append(bytes(view) if word & _READ_ONLY else bytearray(view))
        end += length
    return pickled, buffers


def loads_trusted(data: bytes) -> Any:
    """Inverse of `dumps_unsigned`: only for a pickle taken out of a signed one whose
    signature was just checked (`loads`), never for bytes read from anywhere else."""
    return pickle.loads(data)
