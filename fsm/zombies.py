"""Reaping our own stale workers: the only processes a manager ends that are not its children.

A manager that finds a lock file unlocked but naming a worker has found the leftovers of a dead
manager: that worker may still hold the client id at the Gateway (error 326). The file is not
proof of anything (anyone with our uid could have written it), so the worker is ended only when
the process itself proves it is that manager's worker for this Gateway (find_stale_worker), by
the same retire ladder as our own workers (fsm.process.retire). Nothing is looked up by name,
and nothing unproven is ever signalled.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Collection
from functools import partial

import anyio
import anyio.to_thread
import psutil

from fsm.hosts import normalise_address
from fsm.lockfile import LockRecord
from fsm.pids import born_of, is_our_worker, pid_alive, worker_label
from fsm.process import retire

log = logging.getLogger(__name__)

__all__ = ["find_stale_worker", "reap_stale_worker"]


def _holds_gateway_socket(proc: psutil.Process, peers: Collection[tuple[str, int]]) -> bool:
    return any(
        c.raddr and (normalise_address(c.raddr.ip), c.raddr.port) in peers and c.status != psutil.CONN_LISTEN
        for c in proc.net_connections(kind="tcp")
    )


def find_stale_worker(
    record: LockRecord | None, *, addresses: Collection[str], port: int, client_id: int
) -> psutil.Process | None:
    """The process ``record`` names, only if it provably is a stale worker of that dead manager.

    Proof, all of it: the record is for this port and client id and names its manager and worker
    by pid and start time; that manager is gone; the worker pid is running with the recorded
    start time (not reused), is not us, runs as this user ``-m worker`` with the record's label,
    was born of that manager (its environment names it) and is orphaned from it; and it holds a
    TCP connection to exactly one of the Gateway's addresses at ``port`` (so it can be what holds
    the client id). Anything short of that returns None, with the reason logged.
    """
    if record is None or (record.port, record.client_id) != (port, client_id):
        return None
    manager, worker = record.manager, record.worker
    if manager is None or worker is None or worker.pid in (os.getpid(), 1):
        return None
    if pid_alive(manager.pid, manager.create_time):
        log.info("the manager pid %d named by the lock is alive: its worker is not stale", manager.pid)
        return None
    if not pid_alive(worker.pid, worker.create_time):
        return None  # gone, a zombie, or the pid now belongs to another process
    proc = psutil.Process(worker.pid)
    label = worker_label(record.host, record.port, record.client_id)
    peers = {(normalise_address(a), port) for a in addresses}
    try:
        if not is_our_worker(proc, label):
            why = f"is not this user's '-m worker --label {label}'"
        elif not born_of(proc, manager):
            why = f"was not started by the dead manager pid {manager.pid}"
        elif not _holds_gateway_socket(proc, peers):
            why = f"holds no connection to the Gateway at {sorted(peers)}"
        else:
            return proc
    except psutil.AccessDenied:
        why = "cannot be inspected (access denied)"
    except psutil.Error:
        return None
    log.info("pid %d named by the lock %s; left alone", worker.pid, why)
    return None


class _Stale:
    """A proven stale worker as the retire ladder sees it: no stdin of ours; signals through
    psutil, which refuses if the pid has been reused since it was proven."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.pid = proc, proc.pid

    async def close_input(self) -> bool:
        return False

    def signal(self, sig: signal.Signals) -> None:
        try:
            self.proc.send_signal(sig)
        except psutil.Error:
            pass

    def _gone(self) -> bool:
        try:
            return not self.proc.is_running() or self.proc.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    async def wait_exit(self, timeout: float) -> bool:
        # Polls instead of waitpid(): that could steal the exit status of a child whose own
        # parent (possibly this process's event loop) is waiting for it.
        with anyio.move_on_after(timeout):
            while not self._gone():
                await anyio.sleep(0.01)
            return True
        return self._gone()


async def reap_stale_worker(
    record: LockRecord | None,
    *,
    addresses: Collection[str],
    port: int,
    client_id: int,
    term_grace: float,
    min_age: float = 0.0,
) -> int | None:
    """End the stale worker ``record`` names if it is provably ours; its pid if it was ended.

    A worker younger than ``min_age`` (the manager's min_session) is left to reach that age
    first: its session is younger still, and closing it would be the fast close that turns a
    Gateway's API layer RED. SIGTERM, ``term_grace``, SIGKILL (no stdin EOF: not our child)."""
    find = partial(find_stale_worker, record, addresses=addresses, port=port, client_id=client_id)
    proc = await anyio.to_thread.run_sync(find)
    if proc is None or record is None:
        return None
    try:
        young_for = proc.create_time() + min_age - time.time()
    except psutil.Error:
        young_for = 0.0
    if young_for > 0:
        log.info("stale worker pid %d is young: ending it in %.2f s (min_session)", proc.pid, young_for)
        await anyio.sleep(young_for)
    log.warning(
        "ending stale worker pid %d of dead manager pid %d (it holds client id %d at port %d)",
        proc.pid,
        record.manager_pid,
        client_id,
        port,
    )
    if await retire(_Stale(proc), eof=False, eof_grace=0.0, term_grace=term_grace):
        return proc.pid
    return None
