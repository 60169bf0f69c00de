"""`ibgw run` and `ibgw status` as a user runs them: real subprocesses with argument lists, the
simulator in this process (on its own thread), a private state directory.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import psutil
import pytest

from gatewaysim import ThreadedSim, running_in_thread, wire

CLIENT_ID = 31


class Lines:
    """A pipe's lines, read on a thread, so the test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in iter(pipe.readline, ""):
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line within {timeout} s; saw:\n" + "".join(self.seen)
                ) from None
            if line is None:
                raise AssertionError("the process closed its output; saw:\n" + "".join(self.seen))
            self.seen.append(line)
            if pred(line):
                return line

    def rest(self, timeout: float = 10) -> str:
        """Everything until EOF (call after the process exited)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


def _env(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "IBGW_"))}
    env["IBGW_STATE_DIR"] = str(state_dir)
    return env


def ibgw(*args: str, state_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsm.cli", *args],
        env=_env(state_dir),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread() as s:
        yield s


class Run:
    """`ibgw run` against the simulator, as a child process."""

    def __init__(self, port: int, state_dir: Path, client_id: int = CLIENT_ID) -> None:
        argv = [sys.executable, "-m", "fsm.cli", "run", "--port", str(port), "--client-id", str(client_id)]
        self.proc = subprocess.Popen(
            argv,
            env=_env(state_dir),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def wait_connected(self) -> None:
        self.out.wait_for(lambda line: "--> CONNECTED" in line, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    yield started
    for r in started:  # a failing test must not leave a manager (and its worker) behind
        r.kill()


def _closes_recorded(g: object) -> bool:
    return len(g.client_closes) >= g.counters.client_closes  # type: ignore[attr-defined]


def test_run_connects_and_sigterm_retires_the_worker_with_one_session(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(sim.port, tmp_path)
    runs.append(run)
    run.wait_connected()
    status = json.loads(ibgw("status", "--json", state_dir=tmp_path).stdout)["managers"][0]
    worker = status["worker_pid"]
    assert psutil.pid_exists(worker)

    assert run.stop(signal.SIGTERM) == 0
    out = run.out.rest()
    assert "received SIGTERM" in out and "no disconnect" in out
    assert "--shutdown--> IDLE" in out
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE

    sim.wait_until(lambda g: not g.sessions and _closes_recorded(g), 10)
    snap = sim.snapshot()
    assert snap["counters"]["connections_accepted"] == 1  # exactly one session, ever
    assert snap["counters"]["handshakes"] == 1
    assert snap["client_ids_seen"] == [CLIENT_ID]
    (close,) = snap["client_closes"]
    assert close["pid"] == worker and close["peer_alive"] is False  # process exit, not disconnect


def test_status_json_reflects_a_running_manager(sim: ThreadedSim, tmp_path: Path, runs: list[Run]) -> None:
    run = Run(sim.port, tmp_path)
    runs.append(run)
    run.wait_connected()

    proc = ibgw("status", "--json", state_dir=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (m,) = json.loads(proc.stdout)["managers"]
    assert m["state"] == "CONNECTED"
    assert m["manager_pid"] == run.proc.pid and m["manager_alive"] is True
    assert (m["host"], m["port"], m["client_id"]) == ("127.0.0.1", sim.port, CLIENT_ID)
    assert "--label" in psutil.Process(m["worker_pid"]).cmdline()
    assert m["counters"]["sessions"] == 1

    text = ibgw("status", "--client-id", str(CLIENT_ID), state_dir=tmp_path)
    assert text.returncode == 0
    assert "CONNECTED" in text.stdout and str(run.proc.pid) in text.stdout
    assert ibgw("status", "--client-id", "999", state_dir=tmp_path).returncode == 4

    assert run.stop(signal.SIGINT) == 0  # Ctrl-C: the same orderly shutdown
    proc = ibgw("status", "--json", state_dir=tmp_path)
    (m,) = json.loads(proc.stdout)["managers"]
    assert m["state"] == "IDLE" and m["stopped"] is True and m["manager_alive"] is False
    assert proc.returncode == 1  # not connected any more


def test_second_manager_for_the_same_client_id_exits_3(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run]
) -> None:
    first = Run(sim.port, tmp_path)
    runs.append(first)
    first.wait_connected()
    second = Run(sim.port, tmp_path)
    runs.append(second)
    assert second.proc.wait(timeout=60) == 3
    err = second.err.rest()
    assert len(err.strip().splitlines()) == 1, err
    assert "already manages client id" in err
    assert sim.snapshot()["counters"]["connections_accepted"] == 1  # the second never connected
    assert first.stop() == 0


class _TooOldHello(socketserver.BaseRequestHandler):
    """Reads the API hello, answers as a Gateway of server version 100 would, then waits."""

    def handle(self) -> None:
        seen = b""
        while len(seen) < 8 or len(seen) < 8 + int.from_bytes(seen[4:8], "big"):
            chunk = self.request.recv(4096)
            if not chunk:
                return
            seen += chunk
        self.request.sendall(wire.server_hello(100, "20260101 00:00:00 UTC"))
        while self.request.recv(4096):  # until the client's process exits
            pass


@contextmanager
def too_old_gateway() -> Iterator[int]:
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), _TooOldHello) as server:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()


def test_run_prints_why_a_connect_failed(tmp_path: Path, runs: list[Run]) -> None:
    """A Gateway too old for ib_async: `ibgw run` says so on stdout at once (issue 11 item 8),
    not only in the worker's log and not as a handshake timeout 30 s later."""
    with too_old_gateway() as port:
        run = Run(port, tmp_path)
        runs.append(run)
        failed = "HANDSHAKING --handshake_failed--> DEGRADED_RED  (refused)"

        def told() -> bool:
            out = "".join(run.out.seen)
            return "notice handshake_failed" in out and failed in out

        run.out.wait_for(lambda _: told(), timeout=20)
        notice = next(line for line in run.out.seen if "notice handshake_failed" in line)
        assert "server_version_too_old" in notice and "server version 100" in notice, notice
        assert run.stop() == 0
