"""The manager's lock: one live manager per (Gateway address, port, client id) on this machine.

Two locks, both dropped by the kernel when the manager dies, however it dies:

- an abstract unix socket per address (Linux), named after the address, port and client id: it
  does not depend on the state directory, so a second manager started with another
  ``IBGW_STATE_DIR`` is refused too;
- a lock file per address in the state directory, held with ``flock`` and rewritten in place with
  the pid and start time of the manager and of its current worker. A manager that finds such a
  file unlocked has found the leftovers of a dead manager (fsm.zombies decides what to end).

Keys are resolved addresses (fsm.hosts.resolve), never host names as typed: ``localhost`` and
``127.0.0.1`` meet at the same lock. A manager removes only a lock file it still holds (same
inode), never a successor's. LockRecord.parse is the one parser of lock files; ``ibgw doctor``
reads them with read_lock.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from fsm.errors import AlreadyRunning, UnsafeStateDir
from fsm.pids import PID_MAX, ProcessId, process_id
from fsm.statedir import MAX_STATE_FILE_BYTES, UntrustedFile, check_owned, file_slug, read_bounded

log = logging.getLogger(__name__)

__all__ = ["LockRecord", "WorkerLock", "lock_path", "read_lock"]

Pid = Annotated[int, Meta(ge=1, le=PID_MAX)]
StartTime = Annotated[float, Meta(ge=0)]


class LockRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a lock file says: the manager, its current worker, and the session it is for."""

    manager_pid: Pid
    manager_create_time: StartTime | None = None
    worker_pid: Pid | None = None
    worker_create_time: StartTime | None = None
    host: Annotated[str, Meta(max_length=255)]
    addresses: tuple[Annotated[str, Meta(max_length=64)], ...] = ()
    port: Annotated[int, Meta(ge=1, le=65535)]
    client_id: Annotated[int, Meta(ge=0, le=2**31 - 1)]

    @classmethod
    def parse(cls, data: bytes | str) -> LockRecord:
        """Decode a lock file's content; UntrustedFile (one line) if it is not a lock record."""
        try:
            return msgspec.json.decode(data, type=cls)
        except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
            raise UntrustedFile(f"not a lock record: {str(exc)[:120]}") from None

    @property
    def manager(self) -> ProcessId | None:
        if self.manager_create_time is None:
            return None
        return ProcessId(self.manager_pid, self.manager_create_time)

    @property
    def worker(self) -> ProcessId | None:
        if self.worker_pid is None or self.worker_create_time is None:
            return None
        return ProcessId(self.worker_pid, self.worker_create_time)

    def dumps(self) -> bytes:
        return msgspec.json.encode(self) + b"\n"


def lock_path(state_dir: Path, address: str, port: int, client_id: int) -> Path:
    """Where the lock file for (resolved address, port, client id) lives."""
    return Path(state_dir) / f"ibgw-{file_slug(address)}-{port}-{client_id}.lock"


def read_lock(path: Path) -> LockRecord | None:
    """The record in the lock file at ``path``; None if there is no file.

    UntrustedFile (one line) for anything else than a small regular file of ours holding a
    valid record: a symlink, FIFO, oversized file, damaged or nested JSON, a pid out of range.
    Never blocks and never takes the lock (so it cannot race a starting manager)."""
    data = read_bounded(path)
    if data is None:
        return None
    if not data.strip():
        raise UntrustedFile(f"{path} is empty (a manager may be writing it)")
    try:
        return LockRecord.parse(data)
    except UntrustedFile as exc:
        raise UntrustedFile(f"{path}: {exc}") from None


def _machine_lock_name(address: str, port: int, client_id: int) -> str:
    return f"\0ibgw-fsm:{address}:{port}:{client_id}"


def _holder_pid(name: str) -> int | None:
    """The pid that holds a machine lock, from SO_PEERCRED (None if it cannot be told)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(0.2)
    try:
        probe.connect(name)
        creds = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid: int = struct.unpack("3i", creds)[0]
        return pid or None
    except OSError:
        return None
    finally:
        probe.close()


class WorkerLock:
    """The locks of one manager for one (host, port, client id), keyed on its addresses."""

    def __init__(
        self, state_dir: Path, host: str, addresses: Sequence[str], port: int, client_id: int
    ) -> None:
        self.host, self.addresses, self.port, self.client_id = host, tuple(addresses), port, client_id
        self.paths = [lock_path(state_dir, a, port, client_id) for a in self.addresses]
        self._fds: list[int] = []
        self._sockets: list[socket.socket] = []
        self._me = process_id()

    @property
    def path(self) -> Path:
        return self.paths[0]

    def acquire(self) -> LockRecord | None:
        """Take every lock; return what a dead manager left behind for us (None if nothing).

        AlreadyRunning when a live manager holds any of them; UnsafeStateDir when a lock path is
        a symlink or a file that is not ours. A damaged record is reported in one warning line
        and ignored (nothing to act on): it never stops a manager from starting."""
        try:
            if sys.platform.startswith("linux"):
                for a in self.addresses:
                    self._sockets.append(self._bind_machine_lock(a))
            stale = [self._lock_file(p) for p in self.paths]
            self.record(worker=None)
        except BaseException:
            self.release()
            raise
        return next((r for r in stale if r is not None and r.worker is not None), None)

    def _refuse(self, who: str, where: str) -> AlreadyRunning:
        return AlreadyRunning(
            f"another ibgw manager ({who}) already manages client id {self.client_id} for "
            f"{self.host}:{self.port} on this machine ({where}); stop it first, or give this one "
            f"another client id"
        )

    def _bind_machine_lock(self, address: str) -> socket.socket:
        name = _machine_lock_name(address, self.port, self.client_id)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(name)
            sock.listen(64)  # only so that a refused manager can name us (SO_PEERCRED)
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            pid = _holder_pid(name)
            raise self._refuse(f"pid {pid}" if pid else "another process", f"address {address}") from None
        return sock

    def _lock_file(self, path: Path) -> LockRecord | None:
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                why = "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
                raise UnsafeStateDir(f"lock file {path} {why}; refusing to use it") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise UntrustedFile(f"{path} is not a plain file of its own (links: {st.st_nlink})")
                check_owned(st, str(path), allow_root_reader=False)
            except UntrustedFile as exc:
                os.close(fd)
                raise UnsafeStateDir(f"lock file: {exc}; refusing to use it") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                try:
                    other = read_lock(path)
                except UntrustedFile:
                    other = None
                raise self._refuse(
                    f"pid {other.manager_pid}" if other else "another process", f"lock {path}"
                ) from None
            if self._is_at(fd, path):
                self._fds.append(fd)
                return self._stale_record(fd, path)
            os.close(fd)  # unlinked by a releasing manager between our open and flock: again

    @staticmethod
    def _is_at(fd: int, path: Path) -> bool:
        try:
            here, there = os.fstat(fd), os.lstat(path)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def _stale_record(self, fd: int, path: Path) -> LockRecord | None:
        data = os.pread(fd, MAX_STATE_FILE_BYTES + 1, 0)
        if not data.strip():
            return None
        try:
            if len(data) > MAX_STATE_FILE_BYTES:
                raise UntrustedFile(f"over {MAX_STATE_FILE_BYTES} bytes")
            rec = LockRecord.parse(data)
        except UntrustedFile as exc:
            log.warning("ignoring the damaged lock record in %s: %s", path, exc)
            return None
        if (rec.port, rec.client_id) != (self.port, self.client_id):
            log.warning("ignoring the lock record in %s: it is for another port or client id", path)
            return None
        return rec

    def record(self, *, worker: ProcessId | None) -> None:
        """Rewrite every lock file in place (the flock is on the inode: no rename) so that a
        reader sees the old record or the new one, never an empty or torn file: one write of the
        new record padded with blanks over the old one, then cut to length. Not fsync'd: the
        record proves which worker is ours, and no worker outlives an OS crash."""
        if not self._fds:
            raise RuntimeError("lock not held")
        me = self._me
        rec = LockRecord(
            manager_pid=me.pid if me else os.getpid(),
            manager_create_time=me.create_time if me else None,
            worker_pid=worker.pid if worker else None,
            worker_create_time=worker.create_time if worker else None,
            host=self.host[:255],
            addresses=self.addresses,
            port=self.port,
            client_id=self.client_id,
        )
        data = rec.dumps()
        for fd in self._fds:
            old = os.fstat(fd).st_size
            os.pwrite(fd, data.ljust(old), 0)  # JSON allows trailing blanks
            os.ftruncate(fd, len(data))

    def release(self) -> None:
        """Remove each lock file that is still ours (same inode), then drop the locks."""
        fds, self._fds = self._fds, []
        for path, fd in zip(self.paths, fds, strict=False):
            try:
                if self._is_at(fd, path):
                    path.unlink(missing_ok=True)
                else:
                    log.warning("lock file %s is no longer ours: left in place", path)
            except OSError as exc:
                log.warning("cannot remove lock file %s: %s", path, exc)
            finally:
                os.close(fd)
        socks, self._sockets = self._sockets, []
        for sock in socks:
            sock.close()
