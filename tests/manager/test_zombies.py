"""Lock files and stale-worker reaping: only a provably-ours worker is ever ended."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from fsm.errors import AlreadyRunning
from fsm.zombies import (
    LockRecord,
    WorkerLock,
    end_process,
    find_stale_worker,
    lock_path,
    reap_stale_worker,
    worker_label,
)

HOST = "127.0.0.1"

# A stand-in for a stale worker: same command-line shape as ours, connects to the "Gateway"
# port, says so, then blocks on stdin. `ignore_term` makes it survive SIGTERM.
FAKE = r"""
import signal, socket, sys
if sys.argv[-1] == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
port = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", port)) if port else None
print("up", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(8)
    yield srv
    srv.close()


def spawn_fake(port: int, label: str, *extra: str, connect: bool = True) -> subprocess.Popen:
    # The script reads its port from argv[1]; "-m worker --label X" are there for the check.
    argv = [sys.executable, "-c", FAKE, str(port if connect else 0), "-m", "worker", "--label", label, *extra]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"up\n"
    return p


def record_for(
    p: subprocess.Popen, port: int, client_id: int = 7, *, create_time: float | None = None
) -> LockRecord:
    return LockRecord(
        manager_pid=999_999_999,
        worker_pid=p.pid,
        worker_create_time=create_time if create_time is not None else psutil.Process(p.pid).create_time(),
        host=HOST,
        port=port,
        client_id=client_id,
    )


def finish(p: subprocess.Popen) -> int:
    if p.poll() is None:
        p.kill()
    if p.stdin:
        p.stdin.close()
    return p.wait(timeout=10)


def test_second_manager_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    a = WorkerLock(tmp_path, HOST, 4002, 7)
    assert a.acquire() is None
    b = WorkerLock(tmp_path, HOST, 4002, 7)
    with pytest.raises(AlreadyRunning) as exc:
        b.acquire()
    msg = str(exc.value)
    assert f"pid {os.getpid()}" in msg and "client id 7" in msg and "127.0.0.1:4002" in msg
    # other ids and ports are independent
    c = WorkerLock(tmp_path, HOST, 4002, 8)
    assert c.acquire() is None
    c.release()
    a.release()
    assert not lock_path(tmp_path, HOST, 4002, 7).exists()
    assert b.acquire() is None
    b.release()


def test_lock_records_worker_and_returns_what_a_dead_manager_left(tmp_path: Path) -> None:
    path = lock_path(tmp_path, HOST, 4002, 3)
    left = LockRecord(
        manager_pid=999_999_999, worker_pid=1234, worker_create_time=1.5, host=HOST, port=4002, client_id=3
    )
    path.write_text(left.dumps())
    lock = WorkerLock(tmp_path, HOST, 4002, 3)
    assert lock.acquire() == left
    lock.record(worker_pid=42, worker_create_time=2.5)
    now = json.loads(path.read_text())
    assert now == {
        "manager_pid": os.getpid(),
        "worker_pid": 42,
        "worker_create_time": 2.5,
        "host": HOST,
        "port": 4002,
        "client_id": 3,
    }
    lock.release()
    path.write_text("garbage{")
    lock = WorkerLock(tmp_path, HOST, 4002, 3)
    assert lock.acquire() is None  # a damaged file is nothing to act on
    lock.release()


def test_stale_worker_of_ours_is_ended(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    p = spawn_fake(port, worker_label(HOST, port, 7))
    try:
        rec = record_for(p, port)
        assert find_stale_worker(rec, host=HOST, port=port, client_id=7) is not None
        assert reap_stale_worker(rec, host=HOST, port=port, client_id=7, term_grace=5, kill_grace=5) == p.pid
        assert finish(p) == -signal.SIGTERM
    finally:
        finish(p)


def test_a_young_stale_worker_is_ended_only_once_min_session_old(
    listener: socket.socket,
) -> None:
    port = listener.getsockname()[1]
    p = spawn_fake(port, worker_label(HOST, port, 7))
    try:
        rec = record_for(p, port)
        born = psutil.Process(p.pid).create_time()
        assert (
            reap_stale_worker(rec, host=HOST, port=port, client_id=7, term_grace=5, kill_grace=5, min_age=1.5)
            == p.pid
        )
        assert finish(p) == -signal.SIGTERM
        # the process was ended after it was min_age old, never younger (no fast close)
        assert time.time() - born >= 1.5
    finally:
        finish(p)


@pytest.mark.parametrize("why", ["create_time", "label", "client_id", "no_connection", "port"])
def test_anything_unproven_is_left_alone(listener: socket.socket, why: str) -> None:
    port = listener.getsockname()[1]
    label = worker_label(HOST, port, 7) if why != "label" else worker_label(HOST, port, 8)
    p = spawn_fake(port, label, connect=why != "no_connection")
    try:
        rec = record_for(p, port, create_time=1.0 if why == "create_time" else None)
        cid = 9 if why == "client_id" else 7
        gw_port = port + 1 if why == "port" else port
        assert find_stale_worker(rec, host=HOST, port=gw_port, client_id=cid) is None
        assert reap_stale_worker(rec, host=HOST, port=gw_port, client_id=cid) is None
        assert p.poll() is None
    finally:
        finish(p)


def test_own_pid_and_empty_records_are_never_touched() -> None:
    me = LockRecord(
        manager_pid=1,
        worker_pid=os.getpid(),
        worker_create_time=psutil.Process().create_time(),
        host=HOST,
        port=4002,
        client_id=1,
    )
    assert find_stale_worker(me, host=HOST, port=4002, client_id=1) is None
    assert find_stale_worker(None, host=HOST, port=4002, client_id=1) is None
    none = LockRecord(
        manager_pid=1, worker_pid=None, worker_create_time=None, host=HOST, port=4002, client_id=1
    )
    assert find_stale_worker(none, host=HOST, port=4002, client_id=1) is None


def test_end_process_kills_what_ignores_sigterm_and_wakes_stopped(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    stubborn = spawn_fake(port, "x", "ignore_term")
    stopped = spawn_fake(port, "y")
    try:
        os.kill(stopped.pid, signal.SIGSTOP)
        assert end_process(psutil.Process(stubborn.pid), term_grace=0.2, kill_grace=5)
        assert end_process(psutil.Process(stopped.pid), term_grace=5, kill_grace=5)
        assert finish(stubborn) == -signal.SIGKILL
        assert finish(stopped) == -signal.SIGTERM
    finally:
        finish(stubborn)
        finish(stopped)
