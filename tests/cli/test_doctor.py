"""`ibgw doctor`: the original report's lsof checklist, automated, passive.

The CLOSE_WAIT case is produced the way it happens in the field: a real worker of ours
(`python -m worker --label ibgw-fsm:...`) holds a session to the (simulated) Gateway, the worker
is frozen (SIGSTOP), and the Gateway closes its side. The kernel acknowledges the FIN for the
frozen process, so the worker's socket sits in CLOSE_WAIT until the process is ended.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import psutil

from fsm.lockfile import lock_path
from fsm.pids import label_of

CLIENT_ID = 4242


class Lines:
    """Read a pipe's lines on a thread, so the test can wait for one with a deadline."""

    def __init__(self, pipe: IO[bytes]) -> None:
        self._q: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[bytes]) -> None:
        for line in iter(pipe.readline, b""):
            self._q.put(line)

    def until(self, pred: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self._q.get(timeout=max(0.0, deadline - time.monotonic())))
            if pred(msg):
                return msg


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll a kernel-side condition (socket state has no event to wait on) up to a deadline."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def doctor(port: int, state_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, IBGW_STATE_DIR=str(state_dir))
    env.pop("IBKR_PORT", None)
    return subprocess.run(
        [sys.executable, "-m", "fsm.cli", "doctor", "--port", str(port), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def client_socket_states(pid: int, port: int) -> set[str]:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {c.status for c in conns if c.raddr and c.raddr.port == port}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_label_needs_the_worker_module_and_our_prefix() -> None:
    """Doctor calls a process ours by the manager's own rule (fsm.pids), never by name."""
    assert label_of(["python", "-m", "worker", "--label", "ibgw-fsm:h:1:2"]) == "ibgw-fsm:h:1:2"
    assert label_of(["python", "-m", "worker", "--label=ibgw-fsm:h:1:2"]) == "ibgw-fsm:h:1:2"
    assert label_of(["python", "-m", "worker", "--label", "someone-else"]) is None
    assert label_of(["grep", "ibgw-fsm:h:1:2", "-m", "worker"]) is None
    assert label_of(["bash", "-c", "python -m worker --label ibgw-fsm:h:1:2"]) is None


def test_clean_bill_of_health_and_no_connection_made(tmp_path: Path) -> None:
    from gatewaysim import running_in_thread

    with running_in_thread() as sim:
        before = sim.snapshot()
        proc = doctor(sim.port, tmp_path / "state")
        after = sim.snapshot()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "verdict: healthy" in proc.stdout
    assert f"port {sim.port} is listening" in proc.stdout
    assert "CLOSE_WAIT" not in proc.stdout
    # passive: the Gateway saw nothing at all from doctor
    assert after["counters"]["connections_accepted"] == before["counters"]["connections_accepted"] == 0
    assert after["client_ids_seen"] == before["client_ids_seen"]


def test_nothing_listening_needs_attention(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = doctor(port, tmp_path / "state")
    assert proc.returncode == 1
    assert f"nothing listens on port {port}" in proc.stdout
    assert "verdict: needs attention" in proc.stdout


def test_close_wait_socket_of_a_stopped_worker_of_ours(tmp_path: Path) -> None:
    from gatewaysim import running_in_thread

    state = tmp_path / "state"
    state.mkdir()
    with running_in_thread() as sim:
        label = f"ibgw-fsm:127.0.0.1:{sim.port}:{CLIENT_ID}"
        w = subprocess.Popen(
            [sys.executable, "-m", "worker", "--label", label],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert w.stdin is not None and w.stdout is not None
            lines = Lines(w.stdout)
            lines.until(lambda m: m.get("event") == "ready", timeout=60)
            req = {
                "id": 1,
                "command": "connect",
                "params": {"host": "127.0.0.1", "port": sim.port, "client_id": CLIENT_ID, "timeout": 30.0},
            }
            w.stdin.write((json.dumps(req) + "\n").encode())
            w.stdin.flush()
            resp = lines.until(lambda m: m.get("id") == 1, timeout=60)
            assert resp["status"] == "success", resp

            # the worker freezes (hung trader, debugger, ^Z); then the Gateway drops every session
            os.kill(w.pid, signal.SIGSTOP)
            sim.call("drop_all")
            wait_until(
                lambda: "CLOSE_WAIT" in client_socket_states(w.pid, sim.port),
                10,
                "the stopped worker's socket to reach CLOSE_WAIT",
            )
            # and the lock file of the manager that died and left it behind
            lock_path(state, "127.0.0.1", sim.port, CLIENT_ID).write_text(
                json.dumps(
                    {
                        "manager_pid": dead_pid(),
                        "worker_pid": w.pid,
                        "worker_create_time": psutil.Process(w.pid).create_time(),
                        "host": "127.0.0.1",
                        "port": sim.port,
                        "client_id": CLIENT_ID,
                    }
                )
            )

            proc = doctor(sim.port, state)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            out = proc.stdout
            assert "verdict: needs attention" in out
            close_wait = [ln for ln in out.splitlines() if ln.startswith("FIX") and "CLOSE_WAIT" in ln]
            assert close_wait, out
            assert f"our worker pid {w.pid}" in close_wait[0] and label in close_wait[0]
            assert "[stopped]" in close_wait[0]
            assert any(f"its worker {w.pid} still runs" in ln for ln in out.splitlines()), out

            report = json.loads(doctor(sim.port, state, "--json").stdout)
            assert report["healthy"] is False
            (row,) = [r for r in report["client_sockets"] if r["owner"]["pid"] == w.pid]
            assert row["status"] == "CLOSE_WAIT"
            assert row["owner"]["ours"] is True and row["owner"]["status"] == "stopped"
            (lock,) = report["locks"]
            assert lock["manager_alive"] is False and lock["worker_alive"] is True
        finally:
            w.kill()  # SIGKILL ends a stopped process too
            w.wait(timeout=30)

        # the stale worker is gone; only the harmless lock file is left: healthy again
        proc = doctor(sim.port, state)
        assert proc.returncode == 0, proc.stdout
        assert "stale" in proc.stdout and "verdict: healthy" in proc.stdout


def test_gateway_side_close_wait_needs_attention(tmp_path: Path) -> None:
    """The Gateway's own zombie (ib_insync#386): a client went away, the Gateway never closed its
    end. Here the "Gateway" is a bare listener in this process that accepts and then ignores."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        conn, _ = server.accept()
        with conn:
            client.close()  # FIN to the "Gateway", which never closes its side
            me = os.getpid()
            wait_until(
                lambda: any(
                    c.status == "CLOSE_WAIT" and c.laddr.port == port
                    for c in psutil.Process(me).net_connections(kind="tcp")
                ),
                10,
                "the server side to reach CLOSE_WAIT",
            )
            proc = doctor(port, tmp_path / "state")
    assert proc.returncode == 1, proc.stdout
    assert any(ln.startswith("FIX") and "Gateway-side CLOSE_WAIT" in ln for ln in proc.stdout.splitlines()), (
        proc.stdout
    )
