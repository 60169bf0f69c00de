"""Shared helpers for the manager tests (no tests here): settings, waits, invariants, timings."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil

from fsm.core import State
from fsm.lockfile import LockRecord, lock_path
from fsm.manager import ConnectionManager
from fsm.pids import ProcessId, pid_alive, worker_label
from fsm.settings import Settings
from fsm.status import read_status, status_path
from gatewaysim import GatewaySim

FAST_CLOSE_WINDOW = 0.25  # the sim's red_on_fast_close window; settings.min_session is longer
RECOVERIES: list[tuple[str, str, float]] = []  # (test, what, seconds), printed at the end


FAKE_PORT = 4002  # the fake worker never opens it

# Speaks the worker protocol from a script. FAKE_CONNECT_ERROR makes connect fail with that code;
# FAKE_PROBE_ERROR makes every liveness probe fail. On stdin EOF it sends the events a dying session would
# (session_lost, 1100): they come from a retiring worker and must be dropped. `lost` and `huge`
# answer as a lost session and as an over-long line would.
FAKE_WORKER = r"""
import json, os, sys
def out(obj):
    sys.stdout.write(obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()
def ok(rid, data):
    out({"id": rid, "status": "success", "data": data})
def err(rid, code, msg, ib_code=None):
    e = {"code": code, "message": msg}
    if ib_code is not None:
        e["ib_code"] = ib_code
    out({"id": rid, "status": "error", "error": e})
out("this is not json\n")
out({"id": 987654, "status": "success", "data": {}})
out({"event": "ready", "data": {"pid": os.getpid(), "ib_async": "fake", "protocol": 1}})
for line in sys.stdin:
    req = json.loads(line)
    cmd, rid, p = req["command"], req.get("id"), req.get("params", {})
    if cmd == "connect":
        code = os.environ.get("FAKE_CONNECT_ERROR")
        if code:
            err(rid, code, "fake connect failure")
        else:
            ok(rid, {"connected": True, "accounts": ["DU1"], "client_id": p["client_id"],
                     "server_version": 178, "already_connected": False, "elapsed_ms": 1.0})
            out({"event": "ib_error", "data": {"code": 2104, "req_id": -1,
                                               "message": "Market data farm connection is OK"}})
    elif cmd == "ping":
        ok(rid, {"gateway_time": 1.0, "latency_ms": 0.1})
    elif cmd == "probe":
        if os.environ.get("FAKE_PROBE_ERROR"):
            err(rid, "gateway_silent", "probe: no bytes from the Gateway")
        else:
            ok(rid, {"age_ms": 1.0, "sent": False, "waited_ms": 0.0, "user_backlog": 0})
    elif cmd == "positions":
        err(rid, "gateway_error", "positions: Gateway error 321", ib_code=321)
    elif cmd == "accounts":
        err(rid, "bad_request", "accounts: params.account: expected str")
    elif cmd == "account_summary":
        pass  # never answered
    elif cmd == "status":
        ok(rid, {"connected": True, "params": p})
    elif cmd == "lost":  # what a real worker answers when the session ends under a request
        err(rid, "session_lost", "lost: the Gateway closed the session")
    elif cmd == "huge":  # an answer line over the 1 MiB bound, then an event line as long
        out({"id": rid, "status": "success", "data": {"blob": "x" * (2 << 20)}})
        out({"event": "ib_error", "data": {"code": 2104, "req_id": -1, "message": "y" * (2 << 20)}})
    else:
        err(rid, "unknown_command", f"unknown command {cmd!r}")
out({"event": "session_lost", "data": {}})
out({"event": "ib_error", "data": {"code": 1100, "req_id": -1, "message": "lost"}})
"""


def quick(tmp_path: Path, **kw: Any) -> Settings:
    """Fake-worker settings: no Gateway, so no fast-close window to respect."""
    base: dict[str, Any] = {
        "min_session": 0.05,
        "probe_interval": 0.2,
        "probe_timeout": 0.1,
        "retire_grace": 0.3,
        "kill_grace": 0.3,
    }
    base.update(kw)
    return fast_settings(tmp_path / "state", FAKE_PORT, 7, **base)


def fast_settings(state_dir: Path, port: int, client_id: int = 7, **overrides: Any) -> Settings:
    """Short timers so faults recover in about a second; handshake stays at the 30 s floor.

    The default min_session (0.4 s) is longer than FAST_CLOSE_WINDOW: a manager that kept its
    own rule can never turn the simulator RED. No maintenance windows: tests run at any hour
    (23:44-23:55 local is the Gateway-restart window by default); window tests pass their own."""
    values: dict[str, Any] = {
        "port": port,
        "client_id": client_id,
        "probe_interval": 0.4,
        "probe_timeout": 0.3,
        "backoff_initial": 0.2,
        "backoff_multiplier": 1.6,
        "backoff_jitter": 0.2,
        "backoff_max": 1.0,
        "stable_period": 3.0,
        "min_session": 0.4,
        "retire_grace": 0.4,
        "kill_grace": 0.4,
        "spawn_timeout": 15.0,
        "request_timeout": 5.0,
        "state_dir": state_dir,
        "maintenance": "off",
    }
    values.update(overrides)
    return Settings(**values)


async def poll_until(pred: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    """Wait for a condition on in-process objects, checked every 10 ms, failing at a deadline."""
    with anyio.fail_after(timeout):
        while not pred():
            await anyio.sleep(0.01)
    assert pred(), what


def connected_at_ns(m: ConnectionManager, after_ns: int) -> int:
    """When the first transition into CONNECTED after `after_ns` happened (core clock)."""
    for t in m.history:
        if t.dest == State.CONNECTED and t.at_ns >= after_ns:
            return t.at_ns
    raise AssertionError(f"no CONNECTED after {after_ns}: {list(m.history)[-8:]}")


def record(name: str, what: str, start_ns: int, end_ns: int) -> float:
    seconds = (end_ns - start_ns) / 1e9
    RECOVERIES.append((name, what, seconds))
    return seconds


async def await_recovery(
    m: ConnectionManager, name: str, what: str, start_ns: int, timeout: float = 20.0
) -> float:
    """Wait until CONNECTED again after a fault injected at start_ns; record how long it took."""
    await poll_until(
        lambda: any(t.dest == State.CONNECTED and t.at_ns >= start_ns for t in m.history),
        timeout,
        f"recovery from {what}",
    )
    await m.wait_connected(timeout)
    return record(name, what, start_ns, connected_at_ns(m, start_ns))


async def session_older_than_window(m: ConnectionManager) -> None:
    """Wait for the current session to be probed once: it is then probe_interval old, longer than
    the sim's fast-close window, so a test-made crash cannot count as a fast close."""
    await m.wait_connected(20)
    since = [t.at_ns for t in m.history if t.dest == State.CONNECTED][-1]
    base = m.metrics()["probes_sent"]
    await poll_until(lambda: m.metrics()["probes_sent"] > base, 10, "a probe in this session")
    assert (time.monotonic_ns() - since) / 1e9 > FAST_CLOSE_WINDOW


def our_worker_children() -> list[psutil.Process]:
    """Worker processes that are children of this test process (a leak if any after shutdown)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if any(a.startswith("ibgw-fsm:") for a in cmd):
            out.append(p)
    return out


async def assert_session_invariants(m: ConnectionManager, sim: GatewaySim, client_id: int) -> None:
    """CONNECTED with the one client id, and the sim sees exactly our worker holding it."""
    await m.wait_connected(20)
    assert m.state == State.CONNECTED
    assert m.client_id == client_id
    await sim.wait_until(lambda s: [x.client_id for x in s.sessions if x.handshaken] == [client_id], 10)
    (session,) = [x for x in sim.sessions if x.handshaken]
    await poll_until(lambda: session.pid() is not None, 5, "sim knows the session's pid")
    assert session.pid() == m.worker_pid
    assert sim.client_ids_seen == {client_id}


async def assert_clean_exit(
    m: ConnectionManager, sim: GatewaySim | None, *, fast_close_expected: bool = False
) -> None:
    """After shutdown: IDLE, no worker left, lock released, status stopped; the sim saw no
    close by a live process (no disconnect) and, unless told otherwise, no fast close."""
    s = m.settings
    assert m.state == State.IDLE
    assert m.worker_pid is None
    assert our_worker_children() == []
    assert not lock_path(s.state_dir, s.host, s.port, s.client_id).exists()
    snap = read_status(status_path(s.state_dir, s.host, s.port, s.client_id))
    assert snap is not None and snap["stopped"] is True and snap["state"] == "IDLE"
    assert snap["manager_alive"] is False
    if sim is None:
        return
    await sim.wait_until(lambda x: len(x.client_closes) >= x.counters.client_closes, 10)
    live = [c for c in sim.client_closes if c.peer_alive is True]
    assert live == [], f"a live process closed its socket (a disconnect): {live}"
    if not fast_close_expected:
        assert sim.counters.fast_closes == 0, sim.client_closes
        assert sim.green


# A manager in miniature: starts a real worker the way ConnectionManager does (its own session,
# IBGW_MANAGER naming this process), hands it its own stdin/stdout, writes its marker, and dies.
ORPHAN_MAKER = r"""
import os, subprocess, sys
import psutil
marker_path, label = sys.argv[1], sys.argv[2]
me = psutil.Process()
marker = f"{me.pid}:{me.create_time()!r}"
env = dict(os.environ, IBGW_MANAGER=marker)
subprocess.Popen([sys.executable, "-m", "worker", "--label", label], env=env, start_new_session=True)
with open(marker_path, "w") as f:
    f.write(marker)
"""


@dataclass
class Orphan:
    """A real worker whose manager has died (as after a SIGKILL); talk to it over ``pipes``."""

    pid: int
    create_time: float
    manager: ProcessId
    pipes: anyio.abc.Process  # the dead manager's handle: its stdin/stdout are the worker's

    @property
    def ident(self) -> ProcessId:
        return ProcessId(self.pid, self.create_time)

    async def wait_gone(self, timeout: float = 10) -> None:
        await poll_until(lambda: not pid_alive(self.pid, self.create_time), timeout, f"pid {self.pid} gone")

    async def aclose(self) -> None:
        if pid_alive(self.pid, self.create_time):
            psutil.Process(self.pid).kill()
        await self.pipes.aclose()


async def start_orphan_worker(tmp: Path, host: str, port: int, client_id: int) -> Orphan:
    """A real `python -m worker` with our label, left behind by a manager that has died."""
    marker = tmp / f"orphan-{time.monotonic_ns()}.marker"
    label = worker_label(host, port, client_id)
    proc = await anyio.open_process(
        [sys.executable, "-c", ORPHAN_MAKER, str(marker), label], stderr=subprocess.DEVNULL
    )
    ready = json.loads(await _read_line(proc))
    assert ready["event"] == "ready"
    assert await proc.wait() == 0
    manager = ProcessId.from_marker(marker.read_text())
    assert manager is not None and not pid_alive(manager.pid, manager.create_time)
    pid = ready["data"]["pid"]
    return Orphan(pid, psutil.Process(pid).create_time(), manager, proc)


async def _read_line(proc: anyio.abc.Process) -> bytes:
    assert proc.stdout is not None
    buf = b""
    with anyio.fail_after(20):
        while not buf.endswith(b"\n"):
            buf += await proc.stdout.receive(1)
    return buf


async def orphan_connect(orphan: Orphan, host: str, port: int, client_id: int) -> dict[str, Any]:
    proc = orphan.pipes
    assert proc.stdin is not None
    msg = {
        "id": 1,
        "command": "connect",
        "params": {"host": host, "port": port, "client_id": client_id, "timeout": 30},
    }
    await proc.stdin.send(json.dumps(msg).encode() + b"\n")
    while True:
        out = json.loads(await _read_line(proc))
        if out.get("id") == 1:
            return out


def write_dead_manager_lock(state_dir: Path, host: str, port: int, client_id: int, orphan: Orphan) -> Path:
    """The lock file exactly as the orphan's manager, killed with SIGKILL, leaves it (no flock)."""
    path = lock_path(state_dir, host, port, client_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    rec = LockRecord(
        manager_pid=orphan.manager.pid,
        manager_create_time=orphan.manager.create_time,
        worker_pid=orphan.pid,
        worker_create_time=orphan.create_time,
        host=host,
        addresses=(host,),
        port=port,
        client_id=client_id,
    )
    path.write_bytes(rec.dumps())
    return path
