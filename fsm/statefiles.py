"""The files a running manager keeps in its state dir: its lock (fsm.lockfile), naming its
current worker, and its status snapshot (fsm.status). Failing to update either is logged,
never fatal: the session matters more than its records."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fsm.lockfile import LockRecord, WorkerLock
from fsm.pids import ProcessId
from fsm.settings import Settings
from fsm.statedir import ensure_state_dir
from fsm.status import status_path, write_status

log = logging.getLogger("fsm.manager")

__all__ = ["StateFiles"]


class StateFiles:
    """The lock and status snapshot of one manager, keyed on its resolved addresses."""

    def __init__(self, settings: Settings, addresses: tuple[str, ...]) -> None:
        s = settings
        self._dir = s.state_dir
        self._lock = WorkerLock(s.state_dir, s.host, addresses, s.port, s.client_id)
        self._status = status_path(s.state_dir, addresses[0], s.port, s.client_id)
        self._held = False

    def open(self) -> LockRecord | None:
        """Check the state dir (UnsafeStateDir), take the lock (AlreadyRunning); the record a
        dead manager left there, if it names a worker."""
        ensure_state_dir(self._dir)
        stale = self._lock.acquire()
        self._held = True
        return stale

    def record_worker(self, worker: ProcessId | None) -> None:
        try:
            self._lock.record(worker=worker)
        except (OSError, RuntimeError) as exc:
            log.warning("cannot update the lock file %s: %s", self._lock.path, exc)

    def write_status(self, snap: Mapping[str, Any]) -> None:
        """Only while the lock is held: a refused manager never overwrites the live one's."""
        if not self._held:
            return
        try:
            write_status(self._status, snap)
        except OSError as exc:
            log.warning("cannot write the status snapshot %s: %s", self._status, exc)

    def close(self) -> None:
        """Release the lock (its file removed only if still ours)."""
        self._held = False
        self._lock.release()
