"""The files a running manager keeps in its state dir: its lock (fsm.lockfile), naming its
current worker, and its status snapshot (fsm.status). Failing to update either is logged,
never fatal: the session matters more than its records.

Snapshots are written by a thread of their own, latest wins: handing one over costs the event
loop no file I/O (a respawn's next action never waits behind a write), a burst of transitions
is one write of its final state, and close() writes the last snapshot handed over before the
lock is released."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from fsm.lockfile import LockRecord, WorkerLock
from fsm.pids import ProcessId
from fsm.settings import Settings
from fsm.statedir import ensure_state_dir
from fsm.status import status_path, write_status

log = logging.getLogger("fsm.manager")

__all__ = ["StateFiles"]

WRITE_WAIT = 5.0  # s close() waits for the last snapshot to be written
WRITE_SETTLE = 0.005  # s a snapshot may wait for the next one (a respawn's transitions take ~1 ms)


class StateFiles:
    """The lock and status snapshot of one manager, keyed on its resolved addresses."""

    def __init__(self, settings: Settings, addresses: tuple[str, ...]) -> None:
        s = settings
        self._dir = s.state_dir
        self._lock = WorkerLock(s.state_dir, s.host, addresses, s.port, s.client_id)
        self._status = status_path(s.state_dir, addresses[0], s.port, s.client_id)
        self._held = False
        self._cond = threading.Condition()
        self._latest: Mapping[str, Any] | None = None  # handed over, not written yet
        self._writer: threading.Thread | None = None

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
        """Hand ``snap`` to the writer (it replaces one not written yet) and return at once.
        Only while the lock is held: a refused manager never overwrites the live one's."""
        with self._cond:
            if not self._held:
                return
            if self._latest is None:  # else the writer is settling and takes this one
                self._cond.notify()
            self._latest = snap
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="ibgw-status", daemon=True)
            self._writer.start()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while self._latest is None and self._held:
                    self._cond.wait()
                if self._held:  # let the burst that woke us settle: one write of its end state
                    self._cond.wait(WRITE_SETTLE)
                snap, self._latest = self._latest, None
            if snap is None:  # closed, and everything handed over is written
                return
            try:
                write_status(self._status, snap)
            except OSError as exc:
                log.warning("cannot write the status snapshot %s: %s", self._status, exc)

    def close(self) -> None:
        """Write the last snapshot handed over, then release the lock (its file removed only if
        still ours)."""
        with self._cond:
            self._held = False
            self._cond.notify()
        if self._writer is not None:
            self._writer.join(WRITE_WAIT)
            if self._writer.is_alive():
                log.warning("the status snapshot %s is still being written", self._status)
        self._lock.release()
