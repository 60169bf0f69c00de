"""Lock files and reaping of our own stale workers.

One lock file per (host, port, client id) lives in the state directory. The live manager holds it
with ``fcntl.flock`` (the kernel drops the lock when the manager dies, however it dies), and keeps
in it the pid and start time of its current worker. A manager that finds the file unlocked but
naming a worker has found the leftovers of a dead manager: that worker may still hold the client
id at the Gateway (error 326). It is ended only when psutil proves it is ours: same start time
(no pid reuse), a command line of ``-m worker --label <our label>``, and a TCP connection to the
Gateway port. Nothing is ever looked up by name, and nothing unproven is touched.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import json
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from fsm.errors import AlreadyRunning
from fsm.status import host_slug

log = logging.getLogger(__name__)

__all__ = [
    "LockRecord",
    "WorkerLock",
    "end_process",
    "find_stale_worker",
    "lock_path",
    "reap_stale_worker",
    "worker_label",
]


def worker_label(host: str, port: int, client_id: int) -> str:
    """The ``--label`` that marks a worker as ours for this Gateway and client id (shown by ps)."""
    return f"ibgw-fsm:{host}:{port}:{client_id}"


def lock_path(state_dir: Path, host: str, port: int, client_id: int) -> Path:
    """Where the lock file for (host, port, client id) lives."""
    return Path(state_dir) / f"ibgw-{host_slug(host)}-{port}-{client_id}.lock"


@dataclass(frozen=True, slots=True)
class LockRecord:
    """What a lock file says: the manager, its current worker, and the session it is for."""

    manager_pid: int
    worker_pid: int | None
    worker_create_time: float | None
    host: str
    port: int
    client_id: int

    @classmethod
    def parse(cls, text: str) -> LockRecord | None:
        """Decode a lock file's content; None for an empty or damaged file (nothing to act on)."""
        try:
            raw = json.loads(text)
            return cls(
                manager_pid=int(raw["manager_pid"]),
                worker_pid=None if raw.get("worker_pid") is None else int(raw["worker_pid"]),
                worker_create_time=(
                    None if raw.get("worker_create_time") is None else float(raw["worker_create_time"])
                ),
                host=str(raw["host"]),
                port=int(raw["port"]),
                client_id=int(raw["client_id"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"


class WorkerLock:
    """The flock-held lock file of one manager for one (host, port, client id)."""

    def __init__(self, state_dir: Path, host: str, port: int, client_id: int) -> None:
        self.path = lock_path(state_dir, host, port, client_id)
        self.host, self.port, self.client_id = host, port, client_id
        self._fd: int | None = None

    def acquire(self) -> LockRecord | None:
        """Take the lock; return the record a dead manager left behind (None if none).

        Raises AlreadyRunning when a live manager holds it. Retries if the file was unlinked
        between our open and our flock (a releasing manager), so two managers can never each hold
        a lock on a different inode for the same path.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                text = _read_fd(fd)
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                other = LockRecord.parse(text)
                who = f"pid {other.manager_pid}" if other else "another process"
                raise AlreadyRunning(
                    f"another ibgw manager ({who}) already manages client id {self.client_id} "
                    f"for {self.host}:{self.port} on this machine (lock {self.path}); "
                    f"stop it first, or give this one another client id"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            self._fd = fd
            stale = LockRecord.parse(_read_fd(fd))
            self.record(worker_pid=None, worker_create_time=None)
            return stale

    def record(self, *, worker_pid: int | None, worker_create_time: float | None) -> None:
        """Rewrite the file in place (the flock is on this inode: no rename) naming our worker."""
        if self._fd is None:
            raise RuntimeError("lock not held")
        rec = LockRecord(
            manager_pid=os.getpid(),
            worker_pid=worker_pid,
            worker_create_time=worker_create_time,
            host=self.host,
            port=self.port,
            client_id=self.client_id,
        )
        data = rec.dumps().encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def release(self) -> None:
        """Remove the file while still holding the lock, then drop the lock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 1 << 16, 0).decode("utf-8", "replace")
    except OSError:
        return ""


def _cmdline_is_ours(cmdline: list[str], label: str) -> bool:
    has_module = any(a == "-m" and b == "worker" for a, b in itertools.pairwise(cmdline))
    has_label = any(a == "--label" and b == label for a, b in itertools.pairwise(cmdline)) or (
        f"--label={label}" in cmdline
    )
    return has_module and has_label


def _gateway_connections(proc: psutil.Process, port: int) -> list[Any]:
    return [
        c
        for c in proc.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status != psutil.CONN_LISTEN
    ]


def find_stale_worker(
    record: LockRecord | None, *, host: str, port: int, client_id: int
) -> psutil.Process | None:
    """Return the process named by ``record`` only if it is provably a stale worker of ours.

    Proof: the record is for this (host, port, client id); the pid is alive, not us, not a
    zombie; its start time equals the recorded one (so the pid was not reused); its command line
    runs ``-m worker`` with our label; and it has a TCP connection to the Gateway port (so it can
    be what holds the client id). Anything short of that returns None and is left alone.
    """
    if record is None or record.worker_pid is None or record.worker_create_time is None:
        return None
    if (record.host, record.port, record.client_id) != (host, port, client_id):
        return None
    if record.worker_pid in (os.getpid(), 0, 1):
        return None
    label = worker_label(host, port, client_id)
    try:
        proc = psutil.Process(record.worker_pid)
        if abs(proc.create_time() - record.worker_create_time) > 0.05:
            log.info("pid %d is not our old worker (start time differs); left alone", proc.pid)
            return None
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        if not _cmdline_is_ours(proc.cmdline(), label):
            log.info("pid %d does not run '-m worker --label %s'; left alone", proc.pid, label)
            return None
        if not _gateway_connections(proc, port):
            log.info("old worker pid %d has no connection to port %d; left alone", proc.pid, port)
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        log.warning("pid %d: access denied while checking it; left alone", record.worker_pid)
        return None


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    # Polls instead of psutil.wait(): waitpid() here could steal the exit status of a child that
    # its own parent (possibly this process's event loop) is waiting for.
    deadline = time.monotonic() + timeout
    while True:
        if _gone(proc):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def end_process(proc: psutil.Process, *, term_grace: float = 2.0, kill_grace: float = 2.0) -> bool:
    """SIGTERM (plus SIGCONT, so a stopped process can act on it), wait, SIGKILL, wait.

    Signals go through psutil, which refuses if the pid has been reused since ``proc`` was made.
    Blocking: call it from a worker thread. Returns True once the process is gone.
    """
    try:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    if _wait_gone(proc, term_grace):
        return True
    try:
        proc.send_signal(signal.SIGKILL)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    return _wait_gone(proc, kill_grace)


def reap_stale_worker(
    record: LockRecord | None,
    *,
    host: str,
    port: int,
    client_id: int,
    term_grace: float = 2.0,
    kill_grace: float = 2.0,
    min_age: float = 0.0,
) -> int | None:
    """End the stale worker ``record`` names if it is provably ours; return its pid if ended.

    A worker younger than ``min_age`` (the manager's min_session) is left to reach that age
    first: its session is younger still, and closing it would be the fast close that turns a
    Gateway's API layer RED. Blocking: call it from a worker thread.
    """
    proc = find_stale_worker(record, host=host, port=port, client_id=client_id)
    if proc is None:
        return None
    try:
        young_for = proc.create_time() + min_age - time.time()
    except psutil.Error:
        young_for = 0.0
    if young_for > 0:
        log.info(
            "stale worker pid %d is only %.2f s old: ending it in %.2f s (min_session)",
            proc.pid,
            min_age - young_for,
            young_for,
        )
        time.sleep(young_for)
    log.warning(
        "ending stale worker pid %d left by manager pid %s (it holds client id %d at %s:%d)",
        proc.pid,
        record.manager_pid if record else "?",
        client_id,
        host,
        port,
    )
    if end_process(proc, term_grace=term_grace, kill_grace=kill_grace):
        return proc.pid
    log.error("stale worker pid %d survived SIGKILL", proc.pid)
    return None
