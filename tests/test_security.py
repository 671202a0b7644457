"""Only holders of the key run code: signed pickles (issue #18).

Every pickle dask-kong writes carries a MAC (keyed BLAKE3) under the key the client and its workers
share; these tests tamper with payloads and stored objects on a real gateway and a real
redis-server and check that the worker refuses them and that the refusal reaches whoever
reads the run's events.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
import secrets
import struct
import traceback
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import dask.config
import numpy as np
import pandas as pd
import pytest
import redis

from dask_kong import Kong, constants, last_run, security, serialize
from dask_kong.backends.processes.backend import HANDLER
from dask_kong.backends.processes.gateway import FunctionError, Gateway
from dask_kong.backends.processes.settings import GatewaySettings
from dask_kong.constants import DAG_KEY
from dask_kong.dag.translate import to_dag
from dask_kong.errors import KongError, MisconfiguredError, SerializationError
from dask_kong.invocation.model import Invocation, InvokerSpec
from dask_kong.invocation.payload import (
    RunSettings,
    RunSpec,
    Shipment,
    dumps_spec,
    encode_invocation,
    loads_spec,
    spec_parts,
    spec_place,
)
from dask_kong.metrics.records import CapturedWarning, TaskMetrics
from dask_kong.planning.plan import Plan, TaskPlan
from dask_kong.security import Secret, SignatureError
from dask_kong.store.base import Event, EventKind, MissingKeyError, event_from_wire, event_to_wire
from dask_kong.store.redis import RedisStore
from dask_kong.store.server import RedisServer

from .kong_fixtures import lambda_session, pid_alive

#: Where the pickles of the unit tests below are signed for.
HERE = security.place("value", "a-run", "x")


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


def test_the_run_spec_is_signed_once_and_only_for_its_run() -> None:
    """One tag covers the caller's config and the DAG's pickle together (the DAG is not
    signed apart, so a worker checks the spec once): a bit flipped anywhere is refused,
    and so is the spec under another run's id."""
    security.ensure_key()
    dag = to_dag({"x": 1, "y": (sum, ["x", 2])}, ["y"])
    plan = Plan("wukong", tuple(TaskPlan() for _ in range(len(dag))))
    spec = RunSpec(dag, plan, RunSettings.from_config(), frozenset({len(dag) - 1}))
    parts = spec_parts(spec)
    assert not parts[1].startswith(security.MAGIC)
    blob = dumps_spec(parts, "run-a")
    assert blob.count(security.MAGIC) == 1
    assert loads_spec(blob, "run-a", what="the spec").dag.keys == dag.keys
    with pytest.raises(SignatureError, match=r"the spec.*another place"):
        loads_spec(blob, "run-b", what="the spec")
    inner_at = blob.index(parts[1])
    flipped = bytearray(blob)
    flipped[inner_at + len(parts[1]) // 2] ^= 1
    with pytest.raises(SignatureError, match="does not match"):
        loads_spec(bytes(flipped), "run-a", what="the spec")


def test_a_key_changed_at_run_time_is_used_at_once() -> None:
    """The encoded key is cached by its value: a pickle signed under one configured key
    is refused once the config names another."""
    with dask.config.set({"kong.security.key": "a" * 32}):
        blob = serialize.dumps("value", where=HERE)
        assert serialize.loads(blob, where=HERE) == "value"
    with (
        dask.config.set({"kong.security.key": "b" * 32}),
        pytest.raises(SignatureError, match="does not match"),
    ):
        serialize.loads(blob, where=HERE)


def test_the_tag_is_keyed_blake3_under_the_derived_key() -> None:
    """The data tag is BLAKE3's keyed hash of the pickle under the key derived from the
    configured string; a blob signed in the older format (version 2, HMAC-SHA256) is
    refused naming the format, not taken for unsigned or tampered data."""
    import blake3

    configured = "c" * 32
    with dask.config.set({"kong.security.key": configured}):
        blob = serialize.dumps([1.5], where=HERE)
        data = blob[security.HEADER_BYTES :]
        mac_key = blake3.blake3(
            configured.encode(), derive_key_context=security.KDF_CONTEXT
        ).digest()
        expected = blake3.blake3(data, key=mac_key).digest()
        assert blob[security.HEADER_BYTES - security.TAG_BYTES : security.HEADER_BYTES] == (
            expected
        )
        assert mac_key != configured.encode()[:32]
        old_format = b"kongsig2" + blob[len(security.MAGIC) :]
        with pytest.raises(SignatureError, match=r"signed in another format.*kongsig2"):
            serialize.loads(old_format, where=HERE, what="a value")


def _closure_over(block: np.ndarray) -> Any:
    return lambda y: block + y  # cloudpickle's path, with a buffer inside


@pytest.mark.parametrize(
    "value",
    [
        np.arange(100_000, dtype=np.float64),  # contiguous: its buffer out of band
        np.asfortranarray(np.arange(600.0).reshape(20, 30)),
        np.arange(1000.0)[::3],  # not contiguous: in band
        np.array(3.5),
        np.array(["a", None, 1], dtype=object),
        pd.DataFrame({"a": np.arange(1000), "b": np.arange(1000) * 0.5}),
        {"blocks": [np.ones(5000), np.zeros((10, 10), dtype=np.int32)], "n": 2},
        b"plain bytes" * 1000,
    ],
    ids=["c-array", "f-array", "strided", "0-d", "objects", "frame", "nested", "bytes"],
)
def test_values_round_trip_signed_with_their_buffers_out_of_band(value: Any) -> None:
    security.ensure_key()
    blob = serialize.dumps(value, where=HERE)
    back = serialize.loads(blob, where=HERE)
    if isinstance(value, pd.DataFrame):
        pd.testing.assert_frame_equal(back, value)
    elif isinstance(value, dict):
        for got, want in zip(back["blocks"], value["blocks"], strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.flags.writeable  # a task may write into what it made
    elif isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
        assert back.dtype == value.dtype and back.flags.writeable
        if value.ndim > 1:  # the memory order comes back as it was
            assert back.flags.f_contiguous == value.flags.f_contiguous
    else:
        assert back == value


def test_a_flipped_bit_in_an_out_of_band_buffer_is_refused() -> None:
    """The tag covers the buffers as well as the pickle: a bit flipped in the middle of
    an array's memory (where no pickle opcode is) is refused."""
    security.ensure_key()
    value = np.arange(50_000, dtype=np.float64)
    blob = serialize.dumps(value, where=HERE)
    assert len(blob) - value.nbytes < 1000  # the array's memory is in once, out of band
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(SignatureError, match="does not match"):
        serialize.loads(bytes(flipped), where=HERE)
    lam = serialize.loads(serialize.dumps(_closure_over(value), where=HERE), where=HERE)
    np.testing.assert_array_equal(lam(1.0), value + 1.0)


class HashedBytes:
    """Keeps bytes (hashed, as a dict key would be) and pickles them as a read-only
    buffer: unpickled in band they are bytes again, and so must they be out of band."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.digest = hash(data)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (HashedBytes, (pickle.PickleBuffer(self.data),))


def test_a_read_only_buffer_comes_back_as_bytes_and_a_writable_one_as_bytearray() -> None:
    security.ensure_key()
    back = serialize.loads(serialize.dumps(HashedBytes(b"x" * 100_000), where=HERE), where=HERE)
    assert isinstance(back.data, bytes) and back.digest == hash(b"x" * 100_000)
    frozen = np.arange(10_000.0)
    frozen.flags.writeable = False
    again = serialize.loads(serialize.dumps(frozen, where=HERE), where=HERE)
    assert not again.flags.writeable  # as pickle in band gives it back


def test_small_buffers_stay_in_band_and_large_ones_go_out_of_band() -> None:
    security.ensure_key()
    small, large = np.zeros(100), np.zeros(100_000)
    # a frame without buffers: the count is 0 right after the header
    assert serialize.dumps(small, where=HERE)[security.HEADER_BYTES :][:4] == bytes(4)
    assert serialize.dumps(large, where=HERE)[security.HEADER_BYTES :][:4] != bytes(4)
    mixed = [np.arange(50_000.0), lambda: 1, np.zeros(0), np.arange(3)]  # cloudpickle's path
    back = serialize.loads(serialize.dumps(mixed, where=HERE), where=HERE)
    np.testing.assert_array_equal(back[0], mixed[0])
    assert back[1]() == 1 and back[2].size == 0
    blob = serialize.dumps(mixed[0], where=HERE)
    for given in (bytearray(blob), memoryview(blob)):  # what a reader may hold
        np.testing.assert_array_equal(serialize.loads(given, where=HERE), mixed[0])


def test_a_validly_signed_but_malformed_frame_is_a_serialization_error() -> None:
    security.ensure_key()
    key = security.signing_key()
    assert key is not None
    too_long = security.sign([struct.pack("<IQ", 1, 10**6), pickle.dumps(1)], HERE, key)
    with pytest.raises(SerializationError, match=r"malformed a value: its frame lists"):
        serialize.loads(too_long, where=HERE, what="a value")
    cut = security.sign([b"\x01"], HERE, key)
    with pytest.raises(SerializationError, match="malformed a value: its frame is cut short"):
        serialize.loads(cut, where=HERE, what="a value")


def test_events_travel_as_tuples_and_another_format_is_named() -> None:
    metrics = TaskMetrics(
        worker="w",
        container="1:1",
        start=1.0,
        end=2.0,
        read_bytes=3,
        cached_bytes=4,
        warnings=(CapturedWarning(UserWarning, "careful", "f.py", 3),),
        logs="printed",
    )
    event = Event(
        EventKind.TASK_FAILED, 7, "w", metrics, b"pickled error", "boom", "tb", True, b"p"
    )
    wire = serialize.loads(serialize.dumps(event_to_wire(event), where=HERE), where=HERE)
    assert event_from_wire(wire) == event
    assert event_from_wire(event_to_wire(Event(EventKind.TASK_DONE, 1, "w"))).metrics is None
    with pytest.raises(ValueError, match="another format"):
        event_from_wire(wire[1:])  # as an older dask-kong wrote it (no version)
    with pytest.raises(ValueError, match="another format"):
        event_from_wire((*wire[:4], wire[4][:-1], *wire[5:]))  # metrics of another version


def tamper_stored(client: redis.Redis, name: str) -> None:
    """Flip one bit of the value stored under `name`, as someone with store access could."""
    data = client.get(name)
    assert isinstance(data, bytes)
    client.set(name, flip_last_byte(data))


def test_a_signed_pickle_round_trips_and_a_flipped_bit_is_refused() -> None:
    security.ensure_key()
    blob = serialize.dumps({"x": [1, 2, 3]}, where=HERE)
    assert blob.startswith(security.MAGIC)
    assert serialize.loads(blob, where=HERE) == {"x": [1, 2, 3]}
    with pytest.raises(SignatureError, match="refusing the thing: its signature does not"):
        serialize.loads(flip_last_byte(blob), where=HERE, what="the thing")


def test_a_pickle_signed_for_one_place_is_refused_at_any_other() -> None:
    security.ensure_key()
    blob = serialize.dumps("out of x", where=HERE)
    elsewhere = [
        security.place("value", "a-run", "y"),  # another key
        security.place("value", "another-run", "x"),  # another run
        security.place("inputs", "a-run", "x"),  # another kind of place
        security.place("value", "a-ru", "nx"),  # the same characters, cut elsewhere
    ]
    for where in elsewhere:
        with pytest.raises(SignatureError, match=r"refusing y: .*signed, but for another place"):
            serialize.loads(blob, where=where, what="y")


def test_a_header_is_rebound_only_from_the_place_it_was_signed_for() -> None:
    security.ensure_key()
    blob = serialize.dumps([1, 2], where=HERE)
    there = security.place("value", "a-session", "kept")
    header = security.rebound_header(blob[: security.HEADER_BYTES], "x", HERE, there)
    assert header is not None
    moved = header + blob[security.HEADER_BYTES :]
    assert serialize.loads(moved, where=there) == [1, 2]
    with pytest.raises(SignatureError, match="for another place"):
        serialize.loads(moved, where=HERE)
    with pytest.raises(SignatureError, match=r"refusing 'y' of run r: .*another place"):
        security.rebound_header(blob, "'y' of run r", security.place("value", "r", "y"), there)
    assert security.rebound_header(pickle.dumps(1), "x", HERE, there) is None


def test_an_unsigned_pickle_is_refused_naming_what_it_was() -> None:
    with pytest.raises(SignatureError, match="refusing unsigned task output"):
        serialize.loads(pickle.dumps(42), where=HERE, what="task output")


def test_a_pickle_signed_under_another_key_is_refused() -> None:
    security.ensure_key()
    with dask.config.set({"kong.security.key": secrets.token_hex(32)}):
        foreign = serialize.dumps("from someone else", where=HERE)
    with pytest.raises(SignatureError, match="does not match"):
        serialize.loads(foreign, where=HERE)


def test_signing_off_writes_and_accepts_plain_pickles() -> None:
    with dask.config.set({"kong.security.sign": False}):
        blob = serialize.dumps(7, where=HERE)
        assert not blob.startswith(security.MAGIC)
        assert serialize.loads(blob, where=HERE) == 7
        assert serialize.loads(pickle.dumps(8), where=HERE) == 8


def test_a_short_key_is_refused_with_a_hint() -> None:
    with (
        dask.config.set({"kong.security.key": "tooshort"}),
        pytest.raises(KongError, match=r"too short.*token_hex"),
    ):
        serialize.dumps(1, where=HERE)


def test_secrets_do_not_show_in_reprs() -> None:
    secret = Secret("s3cr3t-value-that-must-not-leak")
    assert "s3cr3t" not in repr(secret) and "s3cr3t" not in f"{secret}"
    assert secret == Secret("s3cr3t-value-that-must-not-leak")


def test_store_urls_are_shown_without_their_password() -> None:
    assert security.redact_url("rediss://kong:pw@h:6379/0?a=1") == "rediss://kong:***@h:6379/0?a=1"
    assert security.redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert security.redact_url("redis://h:6379/0") == "redis://h:6379/0"


def test_a_tampered_stored_value_is_refused_by_the_store(redis_store: RedisStore) -> None:
    security.ensure_key()
    run_id = "tamper-store"
    redis_store.open_run(run_id)
    redis_store.commit(run_id, {"x": b"payload-bytes" * 100})
    name = redis_store._value_prefix(run_id) + "x"
    client = redis.Redis.from_url(redis_store.url)
    try:
        tamper_stored(client, name)
        with pytest.raises(SignatureError, match="'x' of run tamper-store"):
            redis_store.get_many(run_id, ["x"])
        client.set(name, pickle.dumps("written by someone without the key"))
        with pytest.raises(SignatureError, match="refusing unsigned 'x'"):
            redis_store.get_many(run_id, ["x"])
    finally:
        redis_store.delete_run(run_id)
        client.close()


def copy_stored(client: redis.Redis, source: str, target: str) -> None:
    """Store the bytes of `source` under `target`, as someone with store access could."""
    data = client.get(source)
    assert isinstance(data, bytes)
    client.set(target, data)


def test_a_stored_value_copied_to_another_key_or_run_is_refused(redis_store: RedisStore) -> None:
    """Valid signed values swapped between keys, or replayed from an earlier run, are
    refused naming the key they were found under; the originals still read."""
    security.ensure_key()
    old_run, run_id = "replay-old", "replay-new"
    for run in (old_run, run_id):
        redis_store.open_run(run)
        redis_store.commit(run, {"out:1": f"one of {run}", "out:2": f"two of {run}"})
    client = redis.Redis.from_url(redis_store.url)
    name = redis_store._value_prefix
    try:
        copy_stored(client, name(run_id) + "out:1", name(run_id) + "out:2")
        with pytest.raises(SignatureError, match=r"refusing 'out:2' of run replay-new: .*another"):
            redis_store.get_many(run_id, ["out:1", "out:2"])
        copy_stored(client, name(old_run) + "out:1", name(run_id) + "out:1")
        with pytest.raises(SignatureError, match=r"refusing 'out:1' of run replay-new: .*another"):
            redis_store.get_many(run_id, ["out:1"])
        assert redis_store.get_many(old_run, ["out:1", "out:2"])[0] == [
            "one of replay-old",
            "two of replay-old",
        ]
    finally:
        for run in (old_run, run_id):
            redis_store.delete_run(run)
        client.close()


def test_an_event_replayed_from_another_run_is_refused(redis_store: RedisStore) -> None:
    """A task-failed event of one run, appended to another run's stream by someone with
    store access, is refused by the reader of that stream (the client), naming the run."""
    security.ensure_key()
    old_run, run_id = "events-old", "events-new"
    client = redis.Redis.from_url(redis_store.url)
    try:
        for run in (old_run, run_id):
            redis_store.open_run(run)
        redis_store.commit(old_run, {}, (), [Event(EventKind.TASK_FAILED, 0, "w", message="x")])
        stream = constants.run_prefix(old_run) + constants.EVENTS_KEY
        entries: Any = client.xrange(stream)
        ((_, fields),) = entries
        client.xadd(constants.run_prefix(run_id) + constants.EVENTS_KEY, dict(fields))
        with pytest.raises(SignatureError, match=r"refusing events of run events-new: .*another"):
            redis_store.events(run_id, "0", 1.0)
        assert redis_store.events(old_run, "0", 1.0)[1][0].kind is EventKind.TASK_FAILED
    finally:
        for run in (old_run, run_id):
            redis_store.delete_run(run)
        client.close()


@pytest.mark.parametrize("max_value_bytes", [None, 4096], ids=["whole", "in-parts"])
def test_a_moved_value_is_bound_to_its_new_place_and_a_swapped_one_is_not_moved(
    redis_server: RedisServer, max_value_bytes: int | None
) -> None:
    """persist moves values on the server (RENAME): the move re-binds each value's
    header to its new key (values in parts too), and refuses to move a value that was
    swapped in from another key, naming it."""
    security.ensure_key()
    big = b"x" * 20_000  # in parts when max_value_bytes is 4096
    settings = {} if max_value_bytes is None else {"kong.store.max_value_bytes": max_value_bytes}
    run_id, scope = "move-run", "move-scope"
    with dask.config.set(settings):
        store = RedisStore(redis_server.url)
    client = redis.Redis.from_url(redis_server.url)
    try:
        store.open_run(run_id)
        store.commit(run_id, {"out:1": big, "out:2": b"small", "out:3": b"three"})
        store.move(run_id, ["out:1", "out:2"], scope, ["kept-1", "kept-2"])
        assert store.get_many(scope, ["kept-1", "kept-2"])[0] == [big, b"small"]
        copy_stored(client, store._value_prefix(scope) + "kept-2", store._value_prefix(scope) + "k")
        with pytest.raises(SignatureError, match=r"refusing 'k' of run move-scope: .*another"):
            store.get_many(scope, ["k"])
        copy_stored(
            client, store._value_prefix(scope) + "kept-2", store._value_prefix(run_id) + "out:3"
        )
        with pytest.raises(SignatureError, match=r"refusing 'out:3' of run move-run: .*another"):
            store.move(run_id, ["out:3"], scope, ["kept-3"])
    finally:
        for run in (run_id, scope):
            store.delete_run(run)
        store.close()
        client.close()


@pytest.fixture
def gateway(redis_server: RedisServer) -> Iterator[Gateway]:
    """A gateway whose workers share this process's key and the session's Redis."""
    env = {"DASK_KONG__STORE__URL": redis_server.url, **security.worker_environment()}
    gateway = Gateway(GatewaySettings.from_config(HANDLER, env=env, concurrency=1)).start()
    try:
        yield gateway
    finally:
        pids = gateway.worker_pids()
        gateway.stop()
        assert not [p for p in pids if pid_alive(p)]


def refusal_reported(store: RedisStore, run_id: str) -> BaseException:
    """The exception the worker reported for the run's first task (as the client reads it)."""
    _, events = store.events(run_id, "0", 5.0)
    (failed,) = [e for e in events if e.kind is EventKind.TASK_FAILED]
    assert isinstance(failed.error, bytes)
    error = serialize.loads(failed.error, where=security.place("error", failed.task))
    assert isinstance(error, BaseException)
    return error


def test_a_worker_refuses_a_tampered_payload_and_reports_it(
    gateway: Gateway, redis_store: RedisStore
) -> None:
    run_id = "tamper-payload"
    redis_store.open_run(run_id)
    shipment = Shipment(spec_inline=None, invoker=InvokerSpec("gateway", "kong"))
    payload = json.loads(encode_invocation(Invocation(run_id, 0, {1: "input"}), shipment))
    payload["inputs"] = base64.b64encode(
        flip_last_byte(base64.b64decode(payload["inputs"]))
    ).decode()
    try:
        with pytest.raises(
            FunctionError, match=r"SignatureError.*inputs of the invocation of task 0"
        ):
            gateway.invoke("kong", json.dumps(payload).encode())
        error = refusal_reported(redis_store, run_id)
        assert isinstance(error, SignatureError)
        assert "does not match" in str(error)
    finally:
        redis_store.delete_run(run_id)


def test_a_worker_refuses_inputs_and_a_spec_replayed_from_another_run(
    gateway: Gateway, redis_store: RedisStore
) -> None:
    """A payload of run A whose run id is changed to run B (its signed inline inputs and
    spec are A's) is refused by the worker, which reports the refusal to run B."""
    run_a, run_b = "replayed-from", "replayed-into"
    redis_store.open_run(run_b)
    spec = serialize.dumps("run A's spec", where=spec_place(run_a))
    shipment = Shipment(
        spec_inline=base64.b64encode(spec).decode(), invoker=InvokerSpec("gateway", "kong")
    )
    with_inputs = json.loads(encode_invocation(Invocation(run_a, 0, {1: "input"}), shipment))
    spec_only = json.loads(encode_invocation(Invocation(run_a, 0), shipment))
    try:
        for payload, refused in [(with_inputs, "inputs of the invocation"), (spec_only, "spec")]:
            payload["run"] = run_b
            with pytest.raises(FunctionError, match=f"SignatureError.*{refused}.*another place"):
                gateway.invoke("kong", json.dumps(payload).encode())
            error = refusal_reported(redis_store, run_b)
            assert isinstance(error, SignatureError) and run_b in str(error)
            redis_store.delete_run(run_b)
            redis_store.open_run(run_b)
    finally:
        redis_store.delete_run(run_b)


def test_a_worker_refuses_a_tampered_stored_run_spec_and_reports_it(
    gateway: Gateway, redis_store: RedisStore
) -> None:
    run_id = "tamper-spec"
    redis_store.open_run(run_id)
    redis_store.commit(run_id, {DAG_KEY: serialize.dumps("a spec", where=spec_place(run_id))})
    name = redis_store._value_prefix(run_id) + DAG_KEY
    client = redis.Redis.from_url(redis_store.url)
    shipment = Shipment(spec_inline=None, invoker=InvokerSpec("gateway", "kong"))
    try:
        tamper_stored(client, name)
        with pytest.raises(FunctionError, match="SignatureError"):
            gateway.invoke("kong", encode_invocation(Invocation(run_id, 0), shipment))
        error = refusal_reported(redis_store, run_id)
        assert isinstance(error, SignatureError)
        assert f"'dag' of run {run_id}" in str(error)
    finally:
        redis_store.delete_run(run_id)
        client.close()


def test_workers_with_another_key_are_named_when_the_session_opens(
    lambda_gateway: Gateway, redis_server: RedisServer
) -> None:
    """The client's key differs from the function's: the start-up probe's marker is
    refused by the worker, and the session says which setting to fix (no stall)."""
    with (
        dask.config.set({"kong.security.key": secrets.token_hex(32)}),
        pytest.raises(MisconfiguredError, match=r"signing key.*DASK_KONG__SECURITY__KEY"),
    ):
        lambda_session(lambda_gateway, redis_server.url)


def test_workers_with_another_key_fail_a_run_with_a_signature_error(
    lambda_gateway: Gateway, redis_server: RedisServer
) -> None:
    """Without the probe, the worker refuses the payload, the client refuses the
    worker's report, and says so (no stall)."""
    settings = {"kong.security.key": secrets.token_hex(32), "kong.lambda.probe": False}
    with (
        dask.config.set(settings),
        lambda_session(lambda_gateway, redis_server.url) as session,
        pytest.raises(SignatureError, match="does not match"),
    ):
        session.get({"a": (sum, [1, 2])}, "a")


def test_the_lambda_backend_needs_a_configured_key(redis_server: RedisServer) -> None:
    with pytest.raises(KongError, match=r"kong\.security\.key"):
        Kong(backend="lambda", store=redis_server.url, endpoint_url="http://127.0.0.1:9")


def explode(value: int) -> int:
    raise ValueError(f"task failed on purpose with {value}")


def everything_said(error: BaseException) -> str:
    """An exception as a user sees it: message, repr, notes, traceback, causes."""
    return "\n".join(
        [
            str(error),
            repr(error),
            *traceback.format_exception(error),
            *getattr(error, "__notes__", []),
        ]
    )


@pytest.mark.timeout(180)
def test_a_failing_run_shows_no_secret_anywhere(
    redis_server: RedisServer,
    lambda_gateway: Gateway,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Runs that fail three ways (a task raises, a gateway refuses a caller, workers
    refuse a payload), with DEBUG logging, and greps all that was printed, logged,
    raised and shown by reprs for the signing key, the Redis password and the
    gateways' secret keys."""
    caplog.set_level(logging.DEBUG)
    key = secrets.token_hex(32)
    said: list[str] = []
    with dask.config.set({"kong.security.key": key}):
        with Kong(backend="processes", store=redis_server.url, workers=1) as session:
            with pytest.raises(ValueError) as failed:
                session.get({"a": (explode, 1)}, "a")
            said.append(everything_said(failed.value))
            gateway = session.backend.gateway  # type: ignore[attr-defined]
            said += [repr(session), repr(session.store), repr(gateway.settings), repr(last_run())]
            said.append(repr(gateway.credentials))
            url = f"{gateway.url}/2015-03-31/functions/kong/invocations"
            urllib_post_unsigned(url)
            gateway_secret = gateway.credentials.secret.reveal()
        lambda_options: dict[str, Any] = {
            "backend": "lambda",
            "store": redis_server.url,
            "endpoint_url": lambda_gateway.url,
            "function": lambda_gateway.default_function,
        }
        with pytest.raises(MisconfiguredError) as misconfigured:
            Kong(**lambda_options)  # the functions have another key: the probe says so
        said.append(everything_said(misconfigured.value))
        with (
            dask.config.set({"kong.lambda.probe": False}),
            Kong(**lambda_options) as session,
            pytest.raises(SignatureError) as refused,
        ):
            session.get({"a": (explode, 2)}, "a")
        said.append(everything_said(refused.value))
    captured = capfd.readouterr()
    said += [captured.out, captured.err, caplog.text]
    text = "\n".join(said)
    assert "task failed on purpose with 1" in text and "refused invocation" in text
    secrets_configured = {
        "signing key": key,
        "functions' signing key": lambda_gateway.settings.pool.env[security.KEY_ENV],
        "redis password": redis_server.password,
        "session gateway's secret": gateway_secret,
        "lambda gateway's secret": lambda_gateway.credentials.secret.reveal(),
    }
    for name, secret in secrets_configured.items():
        assert secret not in text, f"the {name} appears in what the run showed"


def urllib_post_unsigned(url: str) -> None:
    """An unsigned Invoke call, refused (and logged) by the gateway."""
    request = urllib.request.Request(url, data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 403
    refused.value.close()


def test_a_move_whose_value_vanished_meanwhile_leaves_no_header_behind(
    redis_server: RedisServer,
) -> None:
    """A run's cleanup may delete a value between `move` reading its header and renaming
    it: the header the move then writes must not stay as a key of its own (no TTL)."""
    security.ensure_key()
    store = RedisStore(redis_server.url)
    run_id, scope = "vanish-run", "vanish-scope"
    try:
        store.open_run(run_id)
        store.commit(run_id, {"out:1": b"value"})
        source = store._value_prefix(run_id) + "out:1"
        target = store._value_prefix(scope) + "kept-1"
        (head,) = store._heads([source])
        headers = store._rebound_headers(
            run_id, ["out:1"], scope, ["kept-1"], [head], [(source, target)]
        )
        store._client.unlink(source)  # the race, made to happen
        with pytest.raises(MissingKeyError, match="could not move"):
            store._rename_all([(source, target)], headers)
        assert not store._client.exists(target)
    finally:
        for run in (run_id, scope):
            store.delete_run(run)
        store.close()
