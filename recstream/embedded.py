"""``recstream up``: the whole service on this machine, no Docker.

Starts a local Redis and a Kafka-protocol broker (genuine Apache Kafka when Java and the
jars from ``scripts/fetch-kafka.sh`` are there, else Tansu), creates the topics, then the
worker and the API as child processes, and optionally demo traffic. Ctrl-C (or SIGTERM)
stops every process it started, by PID, the worker first so it checkpoints.

It supervises them too: a worker or API process that exits (killed, out of memory) is started again, after
:func:`restart_delay` (the worker continues from its last checkpoint, as after any restart); the broker or Redis
exiting stops everything, since the others cannot go on without them.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shlex
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from api.auth import hash_key, new_key
from recstream import local_services
from recstream.settings import PUBLIC_HMAC_KEY, Settings

#: The file in the state directory that holds its snapshot key, made on the first run (owner-only).
HMAC_KEY_FILE = "hmac.key"
#: This run's API key (all scopes), owner-only in the state directory: the banner says how to read it, never prints it.
API_KEY_FILE = "api.key"
#: Marks a state directory whose runs were given RECSTREAM_HMAC_KEY (none of its own: its model is signed with that).
OUTSIDE_KEY_FILE = "hmac.key.from-environment"
#: This run's Redis URL, with its password (owner-only in the state directory, like the API key).
REDIS_URL_FILE = "redis.url"

#: A restarted process that ran at least this long before it exited is restarted at once; one that exits sooner waits
#: twice as long as the time before, up to :data:`RESTART_MAX_SECONDS` (a process that cannot start does not spin).
RESTART_STEADY_SECONDS = 60.0
RESTART_MAX_SECONDS = 30.0


def restart_delay(previous: float, ran_seconds: float) -> float:
    """Seconds to wait before starting again a process that exited after ``ran_seconds``, the wait before its last
    start having been ``previous``.

    >>> restart_delay(0.0, 3600.0), restart_delay(0.0, 2.0), restart_delay(4.0, 2.0), restart_delay(30.0, 1.0)
    (0.0, 1.0, 8.0, 30.0)
    """
    if ran_seconds >= RESTART_STEADY_SECONDS:
        return 0.0
    return min(RESTART_MAX_SECONDS, max(1.0, previous * 2))


def local_hmac_key(state_dir: Path) -> str:
    """The snapshot key of ``state_dir``'s runs, from its key file; made there if absent (random, owner-only, written
    whole before it appears), so a second run reads the first one's snapshots. SystemExit naming the file when it is
    not a key, or is the public key an older recstream used (its snapshots cannot be trusted: the run starts afresh
    once the directory is removed)."""
    path = state_dir / HMAC_KEY_FILE
    if not path.exists():
        made = _owner_only(path, secrets.token_hex(32))
        try:
            os.link(made, path)  # appears with its key in it; another run that made one first wins
        except FileExistsError:
            pass
        finally:
            made.unlink()
    key = path.read_text().strip()
    if not key:
        raise SystemExit(f"recstream up: {path} holds no key; delete it (snapshots signed with its key will not load)")
    if key == PUBLIC_HMAC_KEY:
        raise SystemExit(
            f"recstream up: {path} holds the public development key an older recstream used, which is no longer "
            f"accepted (anyone could sign a model with it); {_afresh(state_dir)}"
        )
    return key


def _owner_only(path: Path, text: str) -> Path:
    """A new file beside ``path`` holding ``text``, readable by its owner only: moved or linked to ``path`` by the
    caller, so ``path`` never appears half written."""
    made = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(text)
    return made


def write_owner_only(path: Path, text: str) -> Path:
    """``text`` in ``path`` (owner-only), in place of what was there (the last run's); ``path``."""
    os.replace(_owner_only(path, text + "\n"), path)
    return path


def refuse_unkeyed_state(state_dir: Path) -> None:
    """SystemExit when ``state_dir`` holds a Redis made without this directory's own key: by a run given
    ``RECSTREAM_HMAC_KEY`` (which this run must be given too), or by an older recstream, before runs had their own
    key (its snapshots are signed with the public development key, which is no longer accepted)."""
    if not (state_dir / "redis").exists() or (state_dir / HMAC_KEY_FILE).exists():
        return
    if (state_dir / OUTSIDE_KEY_FILE).exists():
        raise SystemExit(
            f"recstream up: {state_dir} holds a model signed with the RECSTREAM_HMAC_KEY an earlier run was given; "
            f"set it again (or, {_afresh(state_dir)})"
        )
    raise SystemExit(
        f"recstream up: {state_dir} holds a model an older recstream signed with its public development key, "
        f"which is no longer accepted (anyone could sign a model with it); {_afresh(state_dir)}"
    )


def _afresh(state_dir: Path) -> str:
    return f"to start afresh: rm -rf {shlex.quote(str(state_dir))}"


def run_embedded(demo: bool = False, api_port: int = 8000, broker: str = "auto", state_dir: Path | None = None) -> int:
    state_dir = (state_dir or Path(".recstream")).resolve()
    if not os.environ.get("RECSTREAM_HMAC_KEY"):
        refuse_unkeyed_state(state_dir)  # (before anything starts)
    state_dir.mkdir(parents=True, exist_ok=True)
    if os.environ.get("RECSTREAM_HMAC_KEY") and not (state_dir / HMAC_KEY_FILE).exists():
        (state_dir / OUTSIDE_KEY_FILE).touch()  # (a later run without it is told to set it: refuse_unkeyed_state)
    started: list[local_services.LocalService] = []
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"recstream up: starting a local broker ({broker}) …", flush=True)
        kafka = local_services.start_broker(broker, workdir=state_dir / "broker")
        started.append(kafka)
        # Kafka keeps its log in state_dir, so Redis keeps its state there too (AOF) and a second
        # `recstream up` continues where the first stopped. Tansu here keeps its log in memory
        # only, so Redis must start empty as well: stored offsets would point past a fresh log.
        durable = kafka.name == "kafka"
        print(
            f"recstream up: starting Redis ({'persistent' if durable else 'in-memory, like the broker'}) …", flush=True
        )
        # A password for this run (Redis's port is open to every local user): in an owner-only file, never printed.
        redis_password = secrets.token_hex(16)
        redis = local_services.start_redis(
            workdir=state_dir / "redis" if durable else None, appendonly=durable, password=redis_password
        )
        started.append(redis)
        redis_url = f"redis://:{redis_password}@{redis.address}/0"
        redis_url_file = write_owner_only(state_dir / REDIS_URL_FILE, redis_url)
        # A fresh key for this run only (docs/security.md), in an owner-only file the banner names (never printed).
        api_key = new_key()
        key_file = write_owner_only(state_dir / API_KEY_FILE, api_key)
        local_keys = [{"name": "local-admin", "scopes": ["ingest", "read", "admin"], "hash": hash_key(api_key)}]
        env = {
            "RECSTREAM_BROKER_URL": kafka.url,
            "RECSTREAM_REDIS_URL": redis_url,
            "RECSTREAM_API_PORT": str(api_port),
            "RECSTREAM_API_KEYS": json.dumps(local_keys),
            # the worker's own Prometheus endpoint (what it consumes, learns, holds): the API's /metrics has the API's
            "RECSTREAM_WORKER_METRICS_PORT": os.environ.get("RECSTREAM_WORKER_METRICS_PORT")
            or str(local_services.free_port()),
            # the snapshots' key: the one set, else this state directory's own (never the public development key)
            "RECSTREAM_HMAC_KEY": os.environ.get("RECSTREAM_HMAC_KEY") or local_hmac_key(state_dir),
        }
        exports = f"RECSTREAM_REDIS_URL=$(cat {shlex.quote(str(redis_url_file))}) RECSTREAM_BROKER_URL={kafka.url}"
        if not os.environ.get("RECSTREAM_HMAC_KEY"):  # (the key itself is never printed)
            exports += f" RECSTREAM_HMAC_KEY=$(cat {shlex.quote(str(state_dir / HMAC_KEY_FILE))})"
        os.environ.update(env)
        settings = Settings()
        from stream.topics import ensure_topics

        asyncio.run(ensure_topics(settings))
        worker = local_services.start_worker(env, workdir=state_dir / "worker")
        started.append(worker)
        api = local_services.start_api(env, port=api_port, workdir=state_dir / "api")
        started.append(api)
        starters = {  # (the API on the port it first had, which was printed: --port 0 gives a free one)
            "worker": lambda: local_services.start_worker(env, workdir=state_dir / "worker"),
            "api": lambda port=api.port: local_services.start_api(env, port=port, workdir=state_dir / "api"),
        }
        now = datetime.now(UTC).isoformat(timespec="seconds")
        cli = _cli_command()
        print(
            f"""
recstream is up ({kafka.name} broker at {kafka.address}, Redis at {redis.address}).
  API key          KEY=$(cat {shlex.quote(str(key_file))})   (this run only; scopes ingest, read, admin)
  API docs         {api.url}/docs   ("Authorize" with the key)
  recommendations  curl -H "Authorization: Bearer $KEY" '{api.url}/v1/users/user-0000/recommendations?k=5'
  publish          curl -X POST {api.url}/v1/events -H "Authorization: Bearer $KEY" \\
                     -H 'content-type: application/json' -d \\
                     '[{{"event_id":"e1","user_id":"me","item_id":"pets-001","type":"like","ts":"{now}"}}]'
  dashboard        {api.url}/dashboard   (live page; paste the key: cat {shlex.quote(str(key_file))})
  metrics          {api.url}/metrics (API), {worker.url or "off (RECSTREAM_WORKER_METRICS_PORT=0)"} (worker)
  logs             {state_dir}/{{worker,api,broker,redis}}/*.log
  operator CLI     in another terminal (docs/operations.md):
                     export {exports}
                     {cli} models list
Ctrl-C stops everything. A worker or API that exits is started again; the broker or Redis exiting stops everything.
""",
            flush=True,
        )
        if demo:
            from recstream.demo import run_demo

            demo_thread = threading.Thread(
                target=run_demo, args=(api.url,), kwargs={"rate": 50.0, "stop": stop, "api_key": api_key}, daemon=True
            )
            demo_thread.start()
        return 0 if supervise(started, starters, stop) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop.set()
        print("recstream up: stopping …", flush=True)
        for service in reversed(started):  # API, worker (checkpoints on SIGTERM), broker, Redis
            service.stop(timeout=30)


def supervise(
    started: list[local_services.LocalService],
    starters: dict[str, Callable[[], local_services.LocalService]],
    stop: threading.Event,
) -> bool:
    """Until ``stop`` is set (then True): start again each of ``started`` that exits and has a starter (by its name),
    after :func:`restart_delay`, in its place in ``started``; False as soon as one without a starter exits. Each exit
    is printed with the tail of its log."""
    since = {service.name: time.monotonic() for service in started}
    delays = dict.fromkeys(since, 0.0)
    unstarted: set[int] = set()  # places whose process exited and whose start again failed (reported already)
    while not stop.is_set():
        for at, service in enumerate(started):
            if service.is_running():
                continue
            if at not in unstarted:
                ended = f"{service.name} exited ({service.exit_status()})"
                print(f"recstream up: {ended}; log tail:\n{service.log_tail()}", file=sys.stderr, flush=True)
            start = starters.get(service.name)
            if start is None:
                return False
            service.stop(timeout=0)  # (exited: its log file closed, its bookkeeping dropped)
            delay = delays[service.name] = restart_delay(delays[service.name], time.monotonic() - since[service.name])
            print(
                f"recstream up: starting the {service.name} again in {delay:.0f} s (the worker continues from its last "
                "checkpoint; nothing accepted is lost)",
                file=sys.stderr,
                flush=True,
            )
            if stop.wait(delay):
                return True
            try:
                started[at] = start()
            except Exception as exc:  # noqa: BLE001 - e.g. the API not answering in time: tried again after a wait
                print(f"recstream up: the {service.name} did not start ({exc})", file=sys.stderr, flush=True)
                unstarted.add(at)  # (the next round waits longer, then starts it again)
                continue
            finally:
                since[service.name] = time.monotonic()
            unstarted.discard(at)
            print(f"recstream up: the {service.name} runs again (pid {started[at].pid})", flush=True)
        stop.wait(1.0)
    return True


def _cli_command() -> str:
    """How to run ``recstream`` from another terminal: the venv's script when it is not on PATH."""
    script = Path(sys.executable).parent / "recstream"
    if shutil.which("recstream") == str(script) or not script.exists():
        return "recstream"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)
