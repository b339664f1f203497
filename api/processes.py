"""Several API processes on one port (``recstream api --workers N``): uvicorn's supervisor, their shared metrics.

The supervisor (this process) binds the port and starts the processes, which share the listening socket (the
kernel gives each new connection to one of them); it starts a process again in place of one that dies, replaces
them one at a time on SIGHUP, and stops them all on SIGTERM or SIGINT. Each process runs
:func:`api.app.app_from_environment`, which it imports by name.

Their metrics go through prometheus_client's multiprocess mode (``recstream.metrics``): a directory made for the run
(removed after it), or one the environment names, which must then exist and hold no other run's files (they would be
counted in this one's totals; the supervisor's own are removed, and the run's when it stops). A running supervisor
holds a lock on a file in its directory, so a directory whose lock can be taken is one whose supervisor is gone, in
whatever PID namespace it ran. A supervisor that was killed cannot remove its directory, or empty the one named: the
next one to start does (a directory it made is removed, a named one emptied and used); a named directory whose lock
is held is another running supervisor's, and refused.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import logging
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator

from recstream import metrics

log = logging.getLogger(__name__)

#: How long an API process may take to answer its supervisor's health check before it is replaced, or a new one to
#: start serving before a SIGHUP's replacement of the old is abandoned (uvicorn's default is 5 s). Its health
#: checks are answered by a thread of its own, so a long first load of a large model does not hold them.
HEALTHCHECK_SECONDS = 30
#: The exit status when a process failed to start (uvicorn's, as with one process).
STARTUP_FAILED = 3
#: ``prctl`` option: the signal a process gets when its parent dies (Linux).
_PR_SET_PDEATHSIG = 1
#: The start of the name of a run's metrics directory (in the temporary directory), then its supervisor's PID.
DIRECTORY_PREFIX = "recstream-api-metrics-"
#: The file in a run's metrics directory its supervisor holds locked (``flock``) while it runs.
LOCK_FILE = ".supervisor.lock"
#: The environment variable that tells each API process its supervisor's PID (set by :func:`serve`).
SUPERVISOR_PID = "RECSTREAM_INTERNAL_API_SUPERVISOR_PID"


class MetricsDirectoryRefused(Exception):
    """The environment names a metrics directory that is missing, used by a running supervisor, or holds files of
    another run that are not known to be a killed supervisor's."""


def serve(host: str, port: int, workers: int) -> int:
    """Run ``workers`` API processes on ``host:port`` until SIGTERM or SIGINT; the exit status (STARTUP_FAILED when
    one of them failed to start, which stops them all)."""
    from uvicorn import Config
    from uvicorn.supervisors import Multiprocess

    from api.http_limits import PROTOCOL

    with _metrics_directory():
        # access_log off: an access log line would carry query strings; auth refusals are logged without the key.
        config = Config(
            "api.app:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_worker_healthcheck=HEALTHCHECK_SECONDS,
            log_level="info",
            access_log=False,
            http=PROTOCOL,  # (request heads bounded: api/http_limits.py)
        )
        sock = config.bind_socket()  # (a port it cannot bind: uvicorn exits with status 3, as with one process)
        supervisor = Multiprocess(config, sockets=[sock])
        os.environ[SUPERVISOR_PID] = str(os.getpid())  # (read by the processes: follow_supervisor)
        try:
            supervisor.run()
        finally:
            del os.environ[SUPERVISOR_PID]
            sock.close()
    failed = [process.pid for process in supervisor.processes if process.exitcode == STARTUP_FAILED]
    if failed:
        print(
            f"recstream api: API process {failed[0]} failed to start (its log above says why); all of them stopped",
            file=sys.stderr,
        )
        return STARTUP_FAILED
    return 0


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """The directory the processes write their metrics to (:data:`recstream.metrics.MULTIPROCESS_DIR`): a fresh one,
    removed after the run, unless the environment names one (:func:`_named_directory`)."""
    named = os.environ.get(metrics.MULTIPROCESS_DIR)
    if named:
        with _named_directory(named):
            yield
        return
    _remove_abandoned_directories()
    directory = tempfile.mkdtemp(prefix=f"{DIRECTORY_PREFIX}{os.getpid()}-")
    lock = _locked_file(directory)
    os.environ[metrics.MULTIPROCESS_DIR] = directory  # (read by the processes uvicorn starts)
    try:
        yield
    finally:
        del os.environ[metrics.MULTIPROCESS_DIR]
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


@contextlib.contextmanager
def _named_directory(named: str) -> Iterator[None]:
    """A directory the environment names: it must exist and hold no file but this process's own (the supervisor
    imported the metrics with the variable set: removed, so that it has no series), or be one a killed supervisor
    left (its lock file, which no process holds, and that run's files: removed); locked while the run lasts, and
    emptied after it, so that the next may use it."""
    own = f"_{os.getpid()}.db"
    try:
        files = os.listdir(named)
    except OSError:
        files = None
    if files is None:
        raise MetricsDirectoryRefused(
            f"{metrics.MULTIPROCESS_DIR}={named!r} must be an existing directory: make it, or unset the variable and "
            "recstream makes one for the run"
        )
    lock = _abandoned_lock(named) if LOCK_FILE in files else None
    if lock is None:
        if any(not name.endswith(own) for name in files):
            raise MetricsDirectoryRefused(
                f"{metrics.MULTIPROCESS_DIR}={named!r} must be an existing, empty directory (files of another run "
                "would be counted in this one's metrics): empty it, or unset it and recstream makes one for the run"
            )
        try:
            lock = _locked_file(named)
        except FileExistsError:  # another supervisor is locking it right now
            raise MetricsDirectoryRefused(_in_use(named)) from None
    elif any(name != LOCK_FILE and not name.endswith(".db") for name in files):
        os.close(lock)
        raise MetricsDirectoryRefused(
            f"{metrics.MULTIPROCESS_DIR}={named!r} holds files that are not metrics (a killed run leaves only *.db "
            "files): empty it, or unset the variable and recstream makes one for the run"
        )
    else:
        log.info("emptied %s, left by a supervisor that was killed", named)
    try:
        _remove_files(named, keep=LOCK_FILE)
        yield
    finally:
        _remove_files(named, keep=LOCK_FILE)  # (all of them this run's: it started empty)
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(named, LOCK_FILE))
        os.close(lock)


def _in_use(named: str) -> str:
    return (
        f"{metrics.MULTIPROCESS_DIR}={named!r} is used by another running recstream api (its supervisor holds "
        f"{LOCK_FILE} there): give each run a directory of its own, or unset the variable and recstream makes one"
    )


def _abandoned_lock(directory: str) -> int:
    """The lock file of ``directory``, which holds one, locked by this process: its supervisor is gone. Raises
    :class:`MetricsDirectoryRefused` when the lock is held (its supervisor runs) or is not a regular file."""
    try:
        lock = os.open(os.path.join(directory, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise MetricsDirectoryRefused(
            f"{metrics.MULTIPROCESS_DIR}={directory!r}: cannot open its {LOCK_FILE} ({exc.strerror}): empty the "
            "directory, or unset the variable and recstream makes one for the run"
        ) from None
    if not stat.S_ISREG(os.fstat(lock).st_mode):
        os.close(lock)
        raise MetricsDirectoryRefused(
            f"{metrics.MULTIPROCESS_DIR}={directory!r}: its {LOCK_FILE} is not a file: empty the directory, or unset "
            "the variable and recstream makes one for the run"
        )
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its supervisor runs
        os.close(lock)
        raise MetricsDirectoryRefused(_in_use(directory)) from None
    return lock


def _remove_files(directory: str, keep: str) -> None:
    for name in os.listdir(directory):
        if name != keep:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


def _locked_file(directory: str) -> int:
    """Make ``directory``'s :data:`LOCK_FILE`, locked by this process until it closes it or ends (however it ends):
    locked before it has its name, so that no start takes the directory for an abandoned one meanwhile."""
    making = os.path.join(directory, f"{LOCK_FILE}.new")
    lock = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # (not inherited by the processes it starts)
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(making, os.path.join(directory, LOCK_FILE))
    return lock


def _remove_abandoned_directories() -> None:
    """Remove this user's metrics directories whose supervisor is gone (killed: a stop removes its own), those whose
    lock no process holds. A directory without a lock file is left alone (not one a supervisor made, or one being
    made)."""
    for path in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), f"{DIRECTORY_PREFIX}*")):
        try:
            found = os.lstat(path)
            if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
                continue
            lock = os.open(os.path.join(path, LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:  # gone meanwhile (another start removed it), or no lock file
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its supervisor runs
            continue
        else:
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed %s, left by a supervisor that was killed", path)
        finally:
            os.close(lock)


def follow_supervisor() -> None:
    """In an API process the supervisor started: be sent SIGTERM when the supervisor dies (even by SIGKILL), so
    that no process outlives it holding the port (Linux; elsewhere a warning in the log).

    The supervisor may have died already, while this process was still importing the app: the kernel only signals
    deaths after the request, so a parent other than the supervisor :func:`serve` named means it is gone.
    """
    named = os.environ.get(SUPERVISOR_PID)
    supervisor = int(named) if named else os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    except (OSError, AttributeError) as exc:
        log.warning("this API process will not stop by itself if its supervisor is killed (%s)", exc)
        return
    if os.getppid() != supervisor:  # it died before the request took effect
        log.warning("the API supervisor (PID %s) is gone already: this process stops", supervisor)
        os._exit(0)  # at once: nothing started yet (a SIGTERM here would only end it after its whole start)
