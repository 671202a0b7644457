"""Recovery (issue #13): runs survive lost workers, failing tasks and duplicates.

Faults are injected with the documented switch (`kong.faults`, dask_kong/faults.py):
worker processes die at chosen points of their branches (before and after a commit,
inside a batched subtree, holding a delayed output, holding a shared root's claim) and
invocations are delivered twice. Random DAGs, every planner: every result equals the
`sync` scheduler's and no key of the run is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import dask.bag as db
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pytest

import dask_kong
from dask_kong import Kong, last_run
from dask_kong.backends.aws_lambda.probe import ProbeResult, probe_function
from dask_kong.backends.processes.gateway import Gateway
from dask_kong.dag import to_dag
from dask_kong.errors import MisconfiguredError, StoreUnavailableError, WorkerLostError
from dask_kong.faults import KILL_EXIT_CODE, FaultSettings, KillPoint
from dask_kong.invocation.model import Invocation, InvokerSpec
from dask_kong.invocation.payload import RunSettings, Shipment, encode_invocation
from dask_kong.invocation.transports import LambdaTransport
from dask_kong.planning import PlanningContext, get_planner
from dask_kong.runtime import leases
from dask_kong.runtime.client import RunProgress, new_run_id, reinvoke_lost
from dask_kong.runtime.context import RunContext
from dask_kong.runtime.heartbeat import Heartbeater
from dask_kong.store.base import ENDED, Event, EventKind
from dask_kong.store.redis import RedisStore, connect
from dask_kong.store.server import RedisServer
from dask_kong.waits import poll_until

from .kong_fixtures import lambda_session, serve_lambda

PLANNERS = ("naive", "wukong", "uniform", "non_uniform")


@pytest.fixture
def processes(kong_sessions: Callable[[str], Kong]) -> Kong:
    return kong_sessions("processes")


def combine(*parts: np.ndarray) -> np.ndarray:
    """A pure task: a new array from its inputs (the same bytes in every run)."""
    out = np.zeros(256)
    for i, part in enumerate(parts):
        out += np.roll(part, i + 1) * 0.5
    return out + 1.0


def leaf(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(256)  # 2 KB: above the test thresholds


def random_dag(seed: int, size: int = 40) -> tuple[dict[str, Any], list[str]]:
    """Roots, chains, fan-ins and shared roots, as a dict graph; the sinks are the keys."""
    rng = random.Random(seed)
    dsk: dict[str, Any] = {}
    names: list[str] = []
    for i in range(size):
        name = f"t{i}"
        if i < max(3, size // 5) or rng.random() < 0.1:
            dsk[name] = (leaf, seed * 1000 + i)
        else:
            k = rng.choice((1, 1, 2, 2, 3))
            parents = rng.sample(names[-12:], min(k, len(names[-12:])))
            dsk[name] = (combine, *parents)
        names.append(name)
    used = {a for v in dsk.values() for a in v[1:] if isinstance(a, str)}
    return dsk, [n for n in names if n not in used]


def shared_root_dag(seed: int, chains: int = 12) -> tuple[dict[str, Any], list[str]]:
    """A root every chain reads (batched subtrees share it: `Plan.shared_roots`), the
    chains reduced pairwise to one key."""
    dsk: dict[str, Any] = {"root": (leaf, seed)}
    level = []
    for i in range(chains):
        dsk[f"a{i}"] = (leaf, seed * 100 + i)
        dsk[f"b{i}"] = (combine, f"a{i}", "root")
        dsk[f"c{i}"] = (combine, f"b{i}")
        level.append(f"c{i}")
    depth = 0
    while len(level) > 1:
        depth += 1
        pairs = [level[i : i + 2] for i in range(0, len(level), 2)]
        level = [f"s{depth}-{i}" for i in range(len(pairs))]
        dsk.update({name: (combine, *pair) for name, pair in zip(level, pairs, strict=True)})
    return dsk, level


@pytest.fixture
def small_thresholds() -> Iterator[None]:
    """Clustering, delayed I/O and recipes for 2 KB outputs, so the test DAGs use them."""
    with dask.config.set(
        {
            "kong.wukong.cluster_bytes": 4096,
            "kong.wukong.delay_io_bytes": 1024,
            "kong.wukong.delay_io_wait_s": 0.2,
        }
    ):
        yield


def faults(fraction: float, seed: int, points: list[str] | None = None, dup: float = 0.0) -> Any:
    return dask.config.set(
        {
            "kong.faults.kill_fraction": fraction,
            "kong.faults.kill_points": points,
            "kong.faults.seed": seed,
            "kong.faults.duplicate_fraction": dup,
        }
    )


def assert_same(got: Any, expected: Any) -> None:
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_fault_settings_draw_reproducibly() -> None:
    settings = FaultSettings(kill_fraction=0.5, seed=7)
    draws = [settings.kill_point("run", t, 1) for t in range(200)]
    assert draws == [settings.kill_point("run", t, 1) for t in range(200)]
    assert 60 < sum(d is not None for d in draws) < 140
    assert {d for d in draws if d is not None} == set(KillPoint)
    assert all(settings.kill_point("run", t, 2) is None for t in range(50))  # kill_attempts
    with (
        pytest.raises(ValueError, match="known points"),
        dask.config.set({"kong.faults.kill_points": ["nowhere"]}),
    ):
        FaultSettings.from_config()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("planner", PLANNERS)
def test_random_dags_survive_kills_and_duplicates(
    processes: Kong, small_thresholds: None, planner: str
) -> None:
    """Kills at every point and duplicate deliveries: results equal sync's, no key left,
    and the lost branches were invoked again (seed after seed until one was)."""
    reinvoked = 0
    for seed in range(1, 5):
        if reinvoked:
            break
        dsk, keys = random_dag(seed)
        expected = dask.get(dsk, keys)
        with faults(0.2, seed, dup=0.1):
            got = processes.get(dsk, keys, planner=planner)
        assert_same(got, expected)
        assert processes.store.run_keys(processes.last_run_id or "") == []
        summary = last_run()
        assert summary is not None and summary.succeeded
        reinvoked += summary.reinvocations
    assert reinvoked > 0


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", [p.value for p in KillPoint])
def test_every_kill_point_is_recovered(
    processes: Kong, small_thresholds: None, point: str, tmp_path: Path
) -> None:
    """Each point alone: branches that get there die (until one did, seed after seed),
    and their re-invocations finish the run."""
    log = tmp_path / "kills.jsonl"
    for seed in range(10):  # draws depend on the random run id: seldom more than three
        shared = point == KillPoint.SHARED_ROOT
        dsk, keys = shared_root_dag(seed) if shared else random_dag(seed, size=48)
        expected = dask.get(dsk, keys)
        fraction = 0.5 if shared else 0.3  # one claimant per run reaches shared-root
        with faults(fraction, seed, points=[point]), dask.config.set({"kong.faults.log": str(log)}):
            got = processes.get(dsk, keys)
        assert_same(got, expected)
        assert processes.store.run_keys(processes.last_run_id or "") == []
        if log.exists():
            break
    assert log.exists() and f'"point": "{point}"' in log.read_text()


# A few of the fault tests above on worker processes over a three-shard Redis Cluster
# (issue #17): outputs on other shards than the fan-ins they complete, when a worker
# dies before or after its commit.


@pytest.fixture
def processes_on_a_cluster(cluster_kong_sessions: Callable[[str], Kong]) -> Kong:
    return cluster_kong_sessions("processes-cluster")


@pytest.mark.timeout(180)
def test_random_dags_survive_kills_and_duplicates_on_a_cluster(
    processes_on_a_cluster: Kong, small_thresholds: None
) -> None:
    test_random_dags_survive_kills_and_duplicates(
        processes_on_a_cluster, small_thresholds, "wukong"
    )


@pytest.mark.timeout(180)
@pytest.mark.parametrize("point", [KillPoint.BEFORE_COMMIT.value, KillPoint.AFTER_COMMIT.value])
def test_kills_around_a_commit_are_recovered_on_a_cluster(
    processes_on_a_cluster: Kong, small_thresholds: None, point: str, tmp_path: Path
) -> None:
    test_every_kill_point_is_recovered(processes_on_a_cluster, small_thresholds, point, tmp_path)


def die(value: Any) -> Any:
    os._exit(KILL_EXIT_CODE)


def test_a_task_that_always_kills_its_worker_fails_after_max_attempts(processes: Kong) -> None:
    dsk = {"a": (leaf, 1), "b": (die, "a"), "c": (combine, "b")}
    started = time.monotonic()
    # the branch starts at 'a' and runs on to 'b' in the same worker
    # ... and dies in 'b' each time: the error names 'b' (the resumed attempt's heartbeat)
    lost_twice = r"task 'b' lost its worker 2 times.*starts at task 'a'.*exited with code 113"
    with (
        dask.config.set({"kong.run.max_attempts": 2}),
        pytest.raises(WorkerLostError, match=lost_twice),
    ):
        processes.get(dsk, "c")
    assert time.monotonic() - started < 60  # two replacement cold starts, on a busy machine
    assert processes.store.run_keys(processes.last_run_id or "") == []


def test_loss_is_detected_within_two_seconds(processes: Kong, tmp_path: Path) -> None:
    """From the kill to the branch's re-invocation: the gateway sees the exit at once."""
    log = tmp_path / "kills.jsonl"
    dsk: dict[str, Any] = {f"x{i}": (leaf, i) for i in range(4)}
    dsk["total"] = (combine, *[f"x{i}" for i in range(4)])
    with faults(1.0, 5, points=["task"]), dask.config.set({"kong.faults.log": str(log)}):
        processes.get(dsk, "total")
    summary = last_run()
    assert summary is not None and summary.reinvocations >= 1
    kills = sorted(json.loads(line)["time"] for line in log.read_text().splitlines())
    assert len(kills) == summary.reinvocations
    detections = [r - k for k, r in zip(kills, sorted(summary.reinvoked_at), strict=True)]
    assert all(0 <= d < 2 for d in detections), detections


# -- task retries ---------------------------------------------------------------------


class Flaky:
    """A task that raises its first `failures` calls (counted in a file, so worker
    processes count too), then returns its input plus one."""

    def __init__(self, path: Path, failures: int) -> None:
        self.path = path
        self.failures = failures

    def __call__(self, value: int) -> int:
        calls = int(self.path.read_text() or "0") + 1 if self.path.exists() else 1
        self.path.write_text(str(calls))
        if calls <= self.failures:
            raise ValueError(f"flaky call {calls}")
        return value + 1

    @property
    def calls(self) -> int:
        return int(self.path.read_text())


@pytest.fixture
def fast_retries() -> Iterator[None]:
    with dask.config.set({"kong.run.retry_delay_s": 0.01}):
        yield


def test_compute_retries_runs_a_failing_task_again(
    kong: Kong, tmp_path: Path, fast_retries: None
) -> None:
    flaky = Flaky(tmp_path / "calls", failures=2)
    (value,) = dask.compute(dask.delayed(flaky)(1), scheduler=kong.get, retries=2)
    assert value == 2 and flaky.calls == 3
    summary = last_run()
    assert summary is not None
    assert sum(m.retries for m in summary.task_metrics.values()) == 2


def test_the_last_try_raises_the_tasks_own_exception(
    kong: Kong, tmp_path: Path, fast_retries: None
) -> None:
    flaky = Flaky(tmp_path / "calls", failures=5)
    with pytest.raises(ValueError, match="flaky call 2"):
        dask.compute(dask.delayed(flaky)(1), scheduler=kong.get, retries=1)
    assert flaky.calls == 2


def test_annotated_retries_win_over_the_call(
    kong: Kong, tmp_path: Path, fast_retries: None
) -> None:
    retried, never = Flaky(tmp_path / "a", failures=2), Flaky(tmp_path / "b", failures=1)
    with dask.annotate(retries=2):
        x = dask.delayed(retried)(1)
    assert dask.compute(x, scheduler=kong.get) == (2,)
    assert retried.calls == 3
    with dask.annotate(retries=0):
        y = dask.delayed(never)(1)
    with pytest.raises(ValueError, match="flaky call 1"):
        dask.compute(y, scheduler=kong.get, retries=3)


def test_config_retries_are_the_default(kong: Kong, tmp_path: Path, fast_retries: None) -> None:
    flaky = Flaky(tmp_path / "calls", failures=1)
    with dask.config.set({"kong.run.retries": 1}):
        assert dask.compute(dask.delayed(flaky)(1), scheduler=kong.get) == (2,)


def test_bad_retries_are_named(kong: Kong) -> None:
    with pytest.raises(ValueError, match="retries= must be a whole number"):
        dask.compute(dask.delayed(int)(1), scheduler=kong.get, retries=-1)


# -- the lambda backend, through the local gateway (Lambda's own retries) --------------


@pytest.mark.timeout(180)
def test_lambda_backend_recovers_through_the_platforms_retries(
    lambda_gateway: Gateway, redis_server: RedisServer, small_thresholds: None, tmp_path: Path
) -> None:
    """On Lambda a lost invocation is delivered again by the platform (the gateway
    behaves as Lambda: two retries, same request id); the retry resumes the lost
    branch. Results equal sync's, no key is left. Draws depend on the run id, so runs
    go on (seed after seed, at least two) until one lost a worker."""
    log = tmp_path / "kills.jsonl"
    session = lambda_session(lambda_gateway, redis_server.url)
    try:
        for seed in range(11, 19):
            dsk, keys = random_dag(seed, size=30)
            expected = dask.get(dsk, keys)
            with faults(0.3, seed, dup=0.1), dask.config.set({"kong.faults.log": str(log)}):
                got = session.get(dsk, keys)
            assert_same(got, expected)
            assert session.store.run_keys(session.last_run_id or "") == []
            if seed >= 12 and log.exists():
                break
    finally:
        session.close()
    assert log.exists()


# -- a lost store -----------------------------------------------------------------------


def test_a_private_redis_that_dies_is_restarted_and_the_run_submitted_again() -> None:
    """The session's own redis-server is killed between two computes: the next compute
    restarts it (same address, empty) and runs; later computes work too."""
    session = Kong(backend="threads", store="redis", workers=2)
    try:
        server = session.store._owned_server  # type: ignore[attr-defined]
        dsk = {"a": (leaf, 1), "b": (combine, "a")}
        expected = dask.get(dsk, "b")
        np.testing.assert_array_equal(session.get(dsk, "b"), expected)
        pid = server.pid
        os.kill(pid, signal.SIGKILL)
        poll_until(lambda: server.died, 5)
        started = time.monotonic()
        np.testing.assert_array_equal(session.get(dsk, "b"), expected)
        assert time.monotonic() - started < 20
        assert server.pid != pid
        np.testing.assert_array_equal(session.get(dsk, "b"), expected)
    finally:
        session.close()


def test_an_unreachable_external_redis_fails_in_seconds_naming_it() -> None:
    server = RedisServer()
    session = Kong(backend="threads", store=server.url, workers=2)
    try:
        address = server.address
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=re.escape(address)):
            session.get({"a": (leaf, 1)}, "a")
        assert time.monotonic() - started < 15
    finally:
        session.close()


# -- misconfiguration is reported fast: the start-up probe -----------------------------


gateway_of = contextlib.contextmanager(serve_lambda)


def probe(gateway: Gateway, store_url: str, function: str | None = None) -> ProbeResult:
    store = connect(store_url)
    transport = LambdaTransport(gateway.url)
    try:
        return probe_function(store, transport, function or gateway.default_function)
    finally:
        transport.close()
        store.close()


def test_probe_passes_a_good_deployment(lambda_gateway: Gateway, redis_server: RedisServer) -> None:
    result = probe(lambda_gateway, redis_server.url)
    assert result.kong_version == dask_kong.__version__


def test_probe_names_a_missing_function(lambda_gateway: Gateway, redis_server: RedisServer) -> None:
    with pytest.raises(MisconfiguredError, match="'no-such-function' could not be invoked"):
        probe(lambda_gateway, redis_server.url, "no-such-function")


def test_probe_names_a_function_on_another_store(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RedisServer() as other, gateway_of(other.url, monkeypatch) as gateway:
        started = time.monotonic()
        with pytest.raises(MisconfiguredError, match="reaches another store"):
            probe(gateway, redis_server.url)
        assert time.monotonic() - started < 30  # a cold start, not a stall timeout


def test_probe_names_a_function_without_a_store(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        gateway_of("", monkeypatch) as gateway,
        pytest.raises(MisconfiguredError, match=r"cannot reach its store.*has no store"),
    ):
        probe(gateway, redis_server.url)


def test_probe_command(lambda_gateway: Gateway, redis_server: RedisServer) -> None:
    """`python -m dask_kong probe`: the deploy smoke test, exit 0 or 1 naming the fault."""
    env = dict(os.environ, DASK_KONG__SECURITY__KEY=str(dask.config.get("kong.security.key")))
    argv = [sys.executable, "-m", "dask_kong", "probe", "--store", redis_server.url]
    argv += ["--endpoint-url", lambda_gateway.url, "--function"]
    good = subprocess.run([*argv, lambda_gateway.default_function], env=env, capture_output=True)
    assert good.returncode == 0, good.stderr
    assert b"same store" in good.stdout
    bad = subprocess.run([*argv, "nope"], env=env, capture_output=True)
    assert bad.returncode == 1 and b"'nope' could not be invoked" in bad.stderr


# -- deliveries: each has its own id (claims, heartbeats, logs) ---------------------------


def test_two_deliveries_of_one_invocation_have_their_own_ids() -> None:
    invocation = Invocation("run", 3, attempt=2)
    first, second = invocation.with_delivery("request-a"), invocation.with_delivery("request-b")
    assert first.id == "3.2/request-a" and first.id != second.id
    assert invocation.with_delivery().id != invocation.with_delivery().id  # nonces


class RecordingInvoker:
    """The runtime's invoker, recording what the client invokes (no platform behind)."""

    def __init__(self) -> None:
        self.invoked: list[Invocation] = []

    def invoke(self, ctx: RunContext, invocations: Sequence[Invocation]) -> None:
        self.invoked += invocations


def test_a_lost_delivery_frees_its_own_claims_never_a_live_duplicates(
    redis_store: RedisStore,
) -> None:
    """Two deliveries of one invocation: the live one holds a shared root's claim, the
    lost one a stateful task's. The loss frees only the lost one's; when the second
    delivery is lost too, its claim is freed, and the branch is invoked again once."""
    dag = to_dag({"a": (leaf, 1), "b": (combine, "a")}, ["b"])
    run_id = new_run_id()
    invoker = RecordingInvoker()
    ctx = RunContext(
        run_id=run_id,
        dag=dag,
        plan=get_planner("naive")(dag, PlanningContext()),
        store=redis_store,
        invoker=invoker,
        heartbeater=Heartbeater(redis_store),
        settings=RunSettings.from_config(),
    )
    progress = RunProgress(dag, set(dag.output_tasks))
    shipment = Shipment(None, InvokerSpec("gateway", "kong"))
    payload = encode_invocation(Invocation(run_id, 0), shipment)
    live, lost = Invocation(run_id, 0, delivery="live"), Invocation(run_id, 0, delivery="lost")
    redis_store.open_run(run_id)
    try:
        assert redis_store.claim(run_id, ["root:0"], live.id) == [True]
        assert redis_store.claim(run_id, ["stateful:1"], lost.id) == [True]
        loss = Event(EventKind.WORKER_FAILED, 0, "lost", message="exited", payload=payload)
        reinvoke_lost(ctx, progress, loss)
        assert redis_store.claim(run_id, ["stateful:1"], "next") == [True]
        assert redis_store.claim(run_id, ["root:0"], "next") == [False]  # live's, still
        reinvoke_lost(ctx, progress, replace(loss, worker="live"))  # it is lost as well
        assert redis_store.claim(run_id, ["root:0"], "next") == [True]
        assert [(i.start, i.attempt, i.resumed) for i in invoker.invoked] == [(0, 2, True)]
    finally:
        redis_store.delete_run(run_id)


# -- stateful tasks (dask's disk shuffles) under kills -----------------------------------


def as_groups(groups: Any) -> list[tuple[Any, list[Any]]]:
    return sorted((k, sorted(v)) for k, v in groups)


def as_rows(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


@pytest.mark.timeout(240)
def test_disk_shuffles_survive_kills(processes: Kong, tmp_path: Path) -> None:
    """A bag groupby and a dataframe shuffle through partd on disk, with workers killed:
    a re-invoked branch that walks on to a stateful task another worker ran (or runs)
    goes on from its output; results equal sync's, no key is left (seed after seed
    until a worker was lost in each)."""
    bag = db.from_sequence(list(range(60)) * 2, npartitions=6)
    grouped = bag.groupby(lambda v: v % 5, shuffle="disk")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"k": rng.integers(0, 30, 300), "v": rng.random(300)})
    with dask.config.set({"dataframe.shuffle.method": "disk"}):
        shuffled = dd.from_pandas(frame, npartitions=4).shuffle("k")
        cases = [(grouped, as_groups), (shuffled, as_rows)]
        for i, (collection, canonical) in enumerate(cases):
            (want,) = dask.compute(collection, scheduler="sync")
            log = tmp_path / f"kills-{i}.jsonl"
            for seed in range(8):
                with faults(0.25, seed), dask.config.set({"kong.faults.log": str(log)}):
                    (got,) = dask.compute(collection, scheduler=processes.get)
                if isinstance(want, pd.DataFrame):
                    pd.testing.assert_frame_equal(canonical(got), canonical(want))
                else:
                    assert canonical(got) == canonical(want)
                assert processes.store.run_keys(processes.last_run_id or "") == []
                if log.exists():
                    break
            assert log.exists()


# -- leases: a lost worker on Lambda, where nobody reports it ------------------------------


def test_a_lease_runs_out_unless_renewed_or_given_back(redis_store: RedisStore) -> None:
    run_id = new_run_id()
    redis_store.open_run(run_id)
    try:
        # the last two name no invocation of a 5-task DAG (heartbeats are not signed)
        beats = {"0.1/a": 0, "1.1/b": 1, "2.1/c": 2, "2.2/d": 2, "not-an-invocation": 3, "9.1/x": 1}
        redis_store.heartbeat(run_id, beats)
        redis_store.heartbeat(run_id, {"1.1/b": ENDED})  # given back
        redis_store.heartbeat(run_id, {"1.1/b": 4})  # a late beat does not take it again
        seen: set[str] = set()
        assert leases.expired(redis_store, run_id, 5.0, seen, 5) == []
        time.sleep(0.3)
        redis_store.heartbeat(run_id, {"2.2/d": 5})  # renewed
        lost = leases.expired(redis_store, run_id, 0.2, seen, 5)
        # "2.1/c" ran out too, but its branch's next attempt ("2.2/d") supersedes it
        assert [(i.start, i.attempt, i.delivery, task) for i, _, task in lost] == [(0, 1, "a", 0)]
        assert leases.expired(redis_store, run_id, 0.2, seen, 5) == []  # reported once
        assert redis_store.live_workers(run_id, 5.0) == {
            "0.1/a": 0,
            "2.1/c": 2,
            "2.2/d": 5,
            "not-an-invocation": 3,
            "9.1/x": 1,
        }
    finally:
        redis_store.delete_run(run_id)


@pytest.fixture
def lambda_gateway_without_retries(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Gateway]:
    """A local Lambda whose asynchronous retries are off: a lost worker stays lost."""
    with dask.config.set({"kong.gateway.async_retries": 0}):
        yield from serve_lambda(redis_server.url, monkeypatch)


@pytest.mark.timeout(180)
def test_lambda_leases_recover_workers_the_platform_does_not_retry(
    lambda_gateway_without_retries: Gateway,
    redis_server: RedisServer,
    small_thresholds: None,
    tmp_path: Path,
) -> None:
    """On Lambda with retries off, nothing reports a lost worker: its lease runs out
    (kong.heartbeat.ttl_s) and the client invokes its branch again. Results equal
    sync's, no key is left, each loss is detected within the lease plus one look at
    the heartbeats (seed after seed until a worker was lost)."""
    gateway = lambda_gateway_without_retries
    log = tmp_path / "kills.jsonl"
    session = lambda_session(gateway, redis_server.url)
    detections: list[float] = []
    try:
        for seed in range(21, 29):
            dsk, keys = random_dag(seed, size=30)
            expected = dask.get(dsk, keys)
            with faults(0.2, seed), dask.config.set({"kong.faults.log": str(log)}):
                got = session.get(dsk, keys)
            assert_same(got, expected)
            assert session.store.run_keys(session.last_run_id or "") == []
            summary = last_run()
            assert summary is not None
            if log.exists():
                kills = [json.loads(line)["time"] for line in log.read_text().splitlines()]
                reinvoked = sorted(summary.reinvoked_at)
                assert len(reinvoked) == len(kills)
                detections = [r - k for k, r in zip(sorted(kills), reinvoked, strict=True)]
                break
    finally:
        session.close()
    assert detections
    lease_s = float(dask.config.get("kong.heartbeat.ttl_s"))
    interval_s = float(dask.config.get("kong.heartbeat.interval_s"))
    # the last beat came up to an interval before the kill; the client looks every interval
    assert all(0 < d < lease_s + interval_s + 2.0 for d in detections), detections
