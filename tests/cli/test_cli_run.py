"""`ibgw run` and `ibgw status` as a user runs them: real subprocesses with argument lists, the
simulator in this process (on its own thread), a private state directory.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import psutil
from support.cli import CLIENT_ID, Run, ibgw
from support.peers import running, too_old_gateway

from gatewaysim import ThreadedSim


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


def test_run_prints_why_a_connect_failed(tmp_path: Path, runs: list[Run]) -> None:
    """A Gateway too old for ib_async: `ibgw run` says so on stdout at once (issue 11 item 8),
    not only in the worker's log and not as a handshake timeout 30 s later."""
    with running(too_old_gateway) as peer:
        run = Run(peer.port, tmp_path)
        runs.append(run)
        failed = "HANDSHAKING --handshake_failed--> DEGRADED_RED  (gateway_too_old)"

        def told() -> bool:
            out = "".join(run.out.seen)
            return "notice handshake_failed" in out and failed in out

        run.out.wait_for(lambda _: told(), timeout=20)
        notice = next(line for line in run.out.seen if "notice handshake_failed" in line)
        assert "server_version_too_old" in notice and "server version 100" in notice, notice
        assert run.stop() == 0
