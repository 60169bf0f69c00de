"""Lock files and stale-worker reaping: only a provably-ours worker is ever ended.

The stand-ins for stale workers are real processes left behind by a real (dead) parent, with
real TCP connections: the proof is checked against what the kernel says, never against mocks.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from fsm.errors import AlreadyRunning, UnsafeStateDir
from fsm.hosts import resolve
from fsm.lockfile import LockRecord, WorkerLock, lock_path, read_lock
from fsm.pids import ProcessId, pid_alive, process_id, worker_label
from fsm.statedir import UntrustedFile
from fsm.zombies import find_stale_worker, reap_stale_worker

HOST = "127.0.0.1"
ADDRS = (HOST,)

# A stand-in for a stale worker: the command-line shape of ours, connects to argv[1]:argv[2]
# (port 0: no connection), says so, then blocks on stdin. `ignore_term` survives SIGTERM.
FAKE = r"""
import signal, socket, sys
if sys.argv[-1] == "ignore_term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
host, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection((host, port)) if port else None
print("up", flush=True)
sys.stdin.read()
"""

# A manager in miniature that starts `argv` the way ConnectionManager starts a worker (own
# session, IBGW_MANAGER naming itself unless told "nomark"), reports, and dies at once.
MAKER = r"""
import os, subprocess, sys
import psutil
mode, user, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
me = psutil.Process()
marker = f"{me.pid}:{me.create_time()!r}"
env = dict(os.environ)
if mode == "mark":
    env["IBGW_MANAGER"] = marker
other = user >= 0  # another user: no access to our interpreter or our cwd
child = subprocess.Popen(argv, env=env, start_new_session=True, stderr=subprocess.DEVNULL,
                         user=user if other else None, cwd="/" if other else None)
sys.stderr.write(f"{marker} {child.pid}\n")
"""


@dataclass
class Orphan:
    pid: int
    create_time: float
    manager: ProcessId
    pipes: subprocess.Popen[bytes]  # the dead maker's: its stdin/stdout are the orphan's

    def alive(self) -> bool:
        return pid_alive(self.pid, self.create_time)

    def wait_gone(self, timeout: float = 10) -> bool:
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def finish(self) -> None:
        if self.alive():
            psutil.Process(self.pid).kill()
        assert self.pipes.stdin is not None
        self.pipes.stdin.close()
        self.wait_gone()


def orphan(port: int, label: str, *extra: str, host: str = HOST, mark: bool = True, user: int = -1) -> Orphan:
    python = sys.executable if user < 0 else "/usr/bin/python3"  # a user-neutral interpreter
    argv = [python, "-c", FAKE, host, str(port), "-m", "worker", "--label", label, *extra]
    maker = subprocess.Popen(
        [sys.executable, "-c", MAKER, "mark" if mark else "nomark", str(user), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert maker.stderr is not None
    marker, pid = maker.stderr.read().decode().split()  # EOF: the maker has exited
    assert maker.wait(timeout=20) == 0
    assert maker.stdout is not None and maker.stdout.readline() == b"up\n"
    manager = ProcessId.from_marker(marker)
    assert manager is not None and not pid_alive(manager.pid, manager.create_time)
    return Orphan(int(pid), psutil.Process(int(pid)).create_time(), manager, maker)


def record_for(o: Orphan, port: int, client_id: int = 7, **changes: object) -> LockRecord:
    fields: dict[str, object] = {
        "manager_pid": o.manager.pid,
        "manager_create_time": o.manager.create_time,
        "worker_pid": o.pid,
        "worker_create_time": o.create_time,
        "host": HOST,
        "addresses": ADDRS,
        "port": port,
        "client_id": client_id,
    }
    fields.update(changes)
    return LockRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    srv = socket.socket()
    srv.bind((HOST, 0))
    srv.listen(8)
    yield srv
    srv.close()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


# ------------------------------------------------------------------------------------ the lock


def test_second_manager_is_refused_with_a_clear_message(state_dir: Path) -> None:
    a = WorkerLock(state_dir, HOST, ADDRS, 4002, 7)
    assert a.acquire() is None
    b = WorkerLock(state_dir, HOST, ADDRS, 4002, 7)
    with pytest.raises(AlreadyRunning) as exc:
        b.acquire()
    msg = str(exc.value)
    assert f"pid {os.getpid()}" in msg and "client id 7" in msg and "127.0.0.1:4002" in msg
    # other ids and ports are independent
    c = WorkerLock(state_dir, HOST, ADDRS, 4002, 8)
    assert c.acquire() is None
    c.release()
    a.release()
    assert not lock_path(state_dir, HOST, 4002, 7).exists()
    assert b.acquire() is None
    b.release()


def test_localhost_and_another_state_dir_meet_the_same_lock(tmp_path: Path) -> None:
    a = WorkerLock(tmp_path / "a", HOST, resolve(HOST, 4002), 4002, 7)
    (tmp_path / "a").mkdir(mode=0o700)
    (tmp_path / "b").mkdir(mode=0o700)
    assert a.acquire() is None
    try:
        assert HOST in resolve("localhost", 4002)
        for where, host in (
            (tmp_path / "a", "localhost"),
            (tmp_path / "b", HOST),
            (tmp_path / "b", "localhost"),
        ):
            other = WorkerLock(where, host, resolve(host, 4002), 4002, 7)
            with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}"):
                other.acquire()
            assert not (tmp_path / "b" / lock_path(tmp_path, HOST, 4002, 7).name).exists()
    finally:
        a.release()


def test_lock_records_manager_and_worker_by_start_time(state_dir: Path) -> None:
    path = lock_path(state_dir, HOST, 4002, 3)
    left = LockRecord(
        manager_pid=999_999, worker_pid=1234, worker_create_time=1.5, host=HOST, port=4002, client_id=3
    )
    path.write_bytes(left.dumps())
    lock = WorkerLock(state_dir, HOST, ADDRS, 4002, 3)
    assert lock.acquire() == left
    lock.record(worker=ProcessId(42, 2.5))
    me = process_id()
    assert me is not None
    assert json.loads(path.read_text()) == {
        "manager_pid": me.pid,
        "manager_create_time": me.create_time,
        "worker_pid": 42,
        "worker_create_time": 2.5,
        "host": HOST,
        "addresses": [HOST],
        "port": 4002,
        "client_id": 3,
    }
    lock.record(worker=None)  # a shorter record over a longer one: cut to its own length
    assert (
        path.read_bytes()
        == LockRecord(
            manager_pid=me.pid,
            manager_create_time=me.create_time,
            host=HOST,
            addresses=(HOST,),
            port=4002,
            client_id=3,
        ).dumps()
    )
    assert read_lock(path) == LockRecord.parse(path.read_bytes())
    lock.release()


@pytest.mark.parametrize(
    "content",
    [
        b"garbage{",
        b'{"manager_pid": 1, "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"manager_pid": 1' + b"0" * 400 + b', "host": "h", "port": 4002, "client_id": 3}',
        b'{"manager_pid": 12, "host": "h", "port": 4002, "client_id": 3, "pad": "' + b"x" * 70_000 + b'"}',
        b"[]",
    ],
    ids=["garbage", "nested", "huge_pid", "oversized", "array"],
)
def test_a_damaged_lock_never_stops_a_start(
    state_dir: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = lock_path(state_dir, HOST, 4002, 3)
    path.write_bytes(content)
    with pytest.raises(UntrustedFile):
        read_lock(path)  # what doctor does: one line, no crash
    lock = WorkerLock(state_dir, HOST, ADDRS, 4002, 3)
    with caplog.at_level(logging.WARNING, logger="fsm.lockfile"):
        assert lock.acquire() is None  # nothing to act on
    assert any("damaged lock record" in r.getMessage() for r in caplog.records)
    assert read_lock(path) is not None  # now ours
    lock.release()


def test_release_leaves_a_successors_lock_in_place(state_dir: Path) -> None:
    lock = WorkerLock(state_dir, HOST, ADDRS, 4002, 3)
    lock.acquire()
    path = lock.path
    path.unlink()  # a cleaner removed ours; a successor then made its own
    path.write_text("successor")
    lock.release()
    assert path.read_text() == "successor"


def test_a_symlink_at_the_lock_path_is_refused_and_its_target_untouched(
    state_dir: Path, tmp_path: Path
) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    lock_path(state_dir, HOST, 4002, 3).symlink_to(target)
    with pytest.raises(UnsafeStateDir, match="symbolic link"):
        WorkerLock(state_dir, HOST, ADDRS, 4002, 3).acquire()
    assert target.read_text() == "keep me"
    # and the refusal released everything: another manager for that id can start
    other = WorkerLock(state_dir, HOST, ADDRS, 4002, 4)
    other.acquire()
    other.release()


def test_read_lock_does_not_hang_on_a_fifo_or_follow_a_symlink(state_dir: Path) -> None:
    fifo = lock_path(state_dir, HOST, 4002, 1)
    os.mkfifo(fifo)
    link = lock_path(state_dir, HOST, 4002, 2)
    link.symlink_to("/dev/zero")
    # in a child process, so that a regression fails by timeout instead of hanging the suite
    code = (
        "import sys; from fsm.lockfile import read_lock; from fsm.statedir import UntrustedFile\n"
        "for p in sys.argv[1:]:\n"
        "    try: read_lock(p)\n"
        "    except UntrustedFile as e: print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(fifo), str(link)], capture_output=True, timeout=20)
    lines = out.stdout.decode().splitlines()
    assert out.returncode == 0, out.stderr
    assert "not a regular file" in lines[0] and "symbolic link" in lines[1]


# ----------------------------------------------------------------------------------- the proof


def test_stale_worker_of_a_dead_manager_is_proven(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    o = orphan(port, worker_label(HOST, port, 7))
    try:
        found = find_stale_worker(record_for(o, port), addresses=ADDRS, port=port, client_id=7)
        assert found is not None and found.pid == o.pid
    finally:
        o.finish()


# why -> the reason the proof must give (None: refused before any process is looked at)
UNPROVEN = {
    "create_time": None,  # the pid now belongs to another process start
    "label": "is not this user's",
    "client_id": None,
    "no_connection": "holds no connection",
    "port": None,
    "other_address": "holds no connection",  # 127.0.0.2:PORT is not the Gateway
    "not_born_of_it": "was not started by",  # no IBGW_MANAGER in its environment
    "other_manager": "was not started by",  # the lock names another dead process
    "manager_alive": "is alive",
    "other_user": "is not this user's",
}


@pytest.mark.parametrize("why", list(UNPROVEN))
def test_anything_unproven_is_left_alone(
    listener: socket.socket, why: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.getsockname()[1]
    lookalike = None
    host = HOST
    if why == "other_address":  # the same port number on another loopback address
        lookalike = socket.socket()
        lookalike.bind(("127.0.0.2", port))
        lookalike.listen(8)
        host = "127.0.0.2"
    label = worker_label(HOST, port, 8 if why == "label" else 7)
    o = orphan(
        0 if why == "no_connection" else port,
        label,
        host=host,
        mark=why != "not_born_of_it",
        user=65534 if why == "other_user" else -1,
    )
    try:
        changes: dict[str, object] = {}
        if why == "create_time":
            changes["worker_create_time"] = o.create_time - 5
        if why == "other_manager":  # another dead process claims to be its manager
            dead = psutil.Popen([sys.executable, "-c", "pass"])
            changes.update(manager_pid=dead.pid, manager_create_time=dead.create_time())
            dead.wait()
        if why == "manager_alive":
            me = process_id()
            assert me is not None
            changes.update(manager_pid=me.pid, manager_create_time=me.create_time)
        rec = record_for(o, port, **changes)
        cid = 9 if why == "client_id" else 7
        gw_port = port + 1 if why == "port" else port
        with caplog.at_level(logging.INFO, logger="fsm.zombies"):
            assert find_stale_worker(rec, addresses=ADDRS, port=gw_port, client_id=cid) is None
        said = " ".join(r.getMessage() for r in caplog.records)
        expected = UNPROVEN[why]
        assert (expected in said) if expected else said == "", said
        assert o.alive()
    finally:
        o.finish()
        if lookalike is not None:
            lookalike.close()


def test_own_pid_and_empty_records_are_never_touched() -> None:
    me = process_id()
    assert me is not None
    mine = LockRecord(
        manager_pid=1,
        manager_create_time=0.0,
        worker_pid=me.pid,
        worker_create_time=me.create_time,
        host=HOST,
        port=4002,
        client_id=1,
    )
    assert find_stale_worker(mine, addresses=ADDRS, port=4002, client_id=1) is None
    assert find_stale_worker(None, addresses=ADDRS, port=4002, client_id=1) is None
    bare = LockRecord(manager_pid=1, host=HOST, port=4002, client_id=1)
    assert find_stale_worker(bare, addresses=ADDRS, port=4002, client_id=1) is None


# ------------------------------------------------------------------------------------ the reap


@pytest.mark.anyio
async def test_a_young_stale_worker_is_ended_only_once_min_session_old(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    o = orphan(port, worker_label(HOST, port, 7))
    try:
        rec = record_for(o, port)
        pid = await reap_stale_worker(rec, addresses=ADDRS, port=port, client_id=7, term_grace=5, min_age=1.0)
        assert pid == o.pid and o.wait_gone()
        assert time.time() - o.create_time >= 1.0  # never younger: no fast close
    finally:
        o.finish()


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["ignores_sigterm", "stopped"])
async def test_the_retire_ladder_kills_the_stubborn_and_wakes_the_stopped(
    listener: socket.socket, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = listener.getsockname()[1]
    o = orphan(port, worker_label(HOST, port, 7), *(["ignore_term"] if how == "ignores_sigterm" else []))
    try:
        if how == "stopped":
            os.kill(o.pid, signal.SIGSTOP)
        rec = record_for(o, port)
        with caplog.at_level(logging.WARNING, logger="fsm.process"):
            assert (
                await reap_stale_worker(rec, addresses=ADDRS, port=port, client_id=7, term_grace=2) == o.pid
            )
        assert o.wait_gone(0)
        killed = [r for r in caplog.records if "SIGKILL" in r.getMessage()]
        # the stubborn one needed SIGKILL; the stopped one ended on SIGTERM, woken by SIGCONT
        assert len(killed) == (1 if how == "ignores_sigterm" else 0), killed
    finally:
        o.finish()
