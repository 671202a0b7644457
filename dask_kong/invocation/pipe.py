"""The local gateway's pipe: length-prefixed frames between the gateway and a worker.

The gateway starts each worker process (`backends/processes/worker_main.py`) with two
pipe file descriptors: it sends invocations on one and reads results on the other. Both
carry frames (`FrameKind`): a fixed prefix (kind, header length, payload length), a small
JSON header, the raw payload. A handler inside a worker starts other invocations without
HTTP through `invoke_via_gateway`: one CALL frame on its pipe.

Standard library only: the gateway serves any Lambda-style handler, and a worker's cold
start should cost an interpreter start plus the handler's own imports.
"""

from __future__ import annotations

import enum
import json
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

# Frame layout: kind (1 byte), header length, payload length (4 bytes each, big endian),
# then a small JSON header and the raw payload.
_PREFIX = struct.Struct("!BII")
PREFIX_SIZE = _PREFIX.size


class FrameKind(enum.IntEnum):
    """What a frame means; READY, RESULT, INIT_ERROR and CALL go worker -> gateway."""

    INVOKE = 1  # gateway -> worker: run the handler. header: id, fn, timeout_ms
    READY = 2  # the handler is imported. header: pid, init_s
    RESULT = 3  # header: id, error (bool); payload: result JSON or Lambda error JSON
    INIT_ERROR = 4  # the handler could not be loaded; payload: Lambda error JSON
    CALL = 5  # invoke another function asynchronously. header: fn; payload: event JSON


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    kind: FrameKind
    header: dict[str, Any]
    payload: bytes


def encode_prefix(kind: FrameKind, header: bytes, payload_size: int) -> bytes:
    """The fixed-size prefix plus the header; the payload follows it unchanged (no copy)."""
    return _PREFIX.pack(kind, len(header), payload_size) + header


def encode_header(header: dict[str, Any]) -> bytes:
    """A frame header as compact JSON."""
    return json.dumps(header, separators=(",", ":")).encode()


class FrameDecoder:
    """Incremental decoder for the gateway side, which reads whatever bytes arrived."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Append `data`; return every frame it completed. ValueError on a corrupt stream."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= PREFIX_SIZE:
            kind, header_size, payload_size = _PREFIX.unpack_from(self._buffer)
            total = PREFIX_SIZE + header_size + payload_size
            if total > self.max_frame_bytes:
                raise ValueError(f"frame of {total} bytes exceeds {self.max_frame_bytes}")
            if len(self._buffer) < total:
                break
            header = json.loads(self._buffer[PREFIX_SIZE : PREFIX_SIZE + header_size])
            payload = bytes(self._buffer[PREFIX_SIZE + header_size : total])
            del self._buffer[:total]
            frames.append(Frame(FrameKind(kind), header, payload))
        return frames


class WorkerChannel:
    """The worker's blocking end of the two frame pipes.

    Sends are locked: a handler may call `invoke_via_gateway` from its own threads while
    the main loop sends a result.
    """

    def __init__(self, in_fd: int, out_fd: int) -> None:
        # A subprocess the handler starts must not inherit the frame pipes: it would keep
        # them open and hide this worker's death from the gateway.
        os.set_inheritable(in_fd, False)
        os.set_inheritable(out_fd, False)
        self._in = os.fdopen(in_fd, "rb", buffering=0)
        self._out_fd = out_fd
        self._lock = threading.Lock()

    def receive(self) -> Frame | None:
        """The next frame from the gateway; None when the gateway closed the pipe."""
        prefix = self._read_exactly(PREFIX_SIZE)
        if prefix is None:
            return None
        kind, header_size, payload_size = _PREFIX.unpack(prefix)
        body = self._read_exactly(header_size + payload_size)
        if body is None:
            return None
        header = json.loads(body[:header_size])
        return Frame(FrameKind(kind), header, bytes(body[header_size:]))

    def send(self, kind: FrameKind, header: dict[str, Any], payload: bytes = b"") -> None:
        """Write one whole frame (BrokenPipeError when the gateway is gone)."""
        prefix = encode_prefix(kind, encode_header(header), len(payload))
        with self._lock:
            self._write_all(prefix)
            self._write_all(payload)

    def _read_exactly(self, size: int) -> bytearray | None:
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            n = self._in.readinto(view[got:])
            if not n:
                return None
            got += n
        return buffer

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._out_fd, view) :]


@dataclass(frozen=True)
class GatewayLink:
    """A worker process's one connection to its gateway, and the gateway's limit on an
    asynchronous payload (Lambda's: larger ones are refused before they are sent)."""

    channel: WorkerChannel
    max_async_bytes: int


# Set by the worker's main loop (`attach`). Process-wide by nature: a worker process has
# exactly one gateway.
_link: GatewayLink | None = None


def attach(channel: WorkerChannel, max_async_bytes: int) -> None:
    """Make `channel` this process's link to its gateway (called once, at start)."""
    global _link
    _link = GatewayLink(channel, max_async_bytes)


def invoke_via_gateway(function: str, payload: bytes, priority: int = 0) -> None:
    """Invoke `function` asynchronously (Event semantics, no reply) through the gateway.

    Cheaper than HTTP: one frame on this worker's pipe, which the gateway reads even
    while this invocation is still running. Only valid inside a gateway worker. When
    invocations wait for a concurrency slot, higher `priority` starts first.
    """
    if _link is None:
        raise RuntimeError("invoke_via_gateway works only inside a dask-kong gateway worker")
    if len(payload) > _link.max_async_bytes:
        raise ValueError(
            f"payload of {len(payload)} bytes exceeds the asynchronous invocation limit "
            f"of {_link.max_async_bytes} bytes"
        )
    _link.channel.send(FrameKind.CALL, {"fn": function, "priority": priority}, payload)
