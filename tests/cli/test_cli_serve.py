"""`ibgw run --serve`: health and metrics over real HTTP from the `ibgw run` process, against the
simulator; the address is checked (and bound) before any worker exists."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.cli import CLIENT_ID, Run, ibgw
from support.http import Reply, http_get
from support.peers import running, too_old_gateway

from gatewaysim import ThreadedSim


def get(port: int, path: str) -> Reply:
    return anyio.run(http_get, port, path)


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the exposition, parsed by prometheus_client's own parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def only(rows: dict[tuple[tuple[str, str], ...], float], **labels: str) -> float:
    (value,) = [v for k, v in rows.items() if set(labels.items()) <= set(k)]
    return value


def assert_nothing_started(sim: ThreadedSim, state_dir: Path) -> None:
    """No worker ever ran: the Gateway saw no connection, and no manager wrote a snapshot."""
    assert sim.snapshot()["counters"]["connections_accepted"] == 0
    assert ibgw("status", state_dir=state_dir).returncode == 4


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_serve_answers_livez_readyz_and_metrics_while_connected(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run], backend: str
) -> None:
    run = Run(sim.port, tmp_path, "--serve", "127.0.0.1:0", "--backend", backend)
    runs.append(run)
    port = run.health_port()
    run.wait_connected()

    live = get(port, "/livez")
    assert live.status == 200 and live.json()["alive"] is True
    assert live.json()["pid"] == run.proc.pid  # the `ibgw run` process answers, not a stand-in
    ready = get(port, "/readyz")
    assert ready.status == 200, ready.text
    assert ready.json()["state"] == "CONNECTED" and ready.json()["client_id"] == CLIENT_ID

    metrics = get(port, "/metrics")
    assert metrics.status == 200
    found = samples(metrics.text)
    assert only(found["ibgw_state"], state="CONNECTED", client_id=str(CLIENT_ID)) == 1
    assert only(found["ibgw_state"], state="DEGRADED_RED") == 0
    assert only(found["ibgw_sessions_total"], port=str(sim.port)) == 1
    assert only(found["ibgw_worker_up"]) == 1

    assert run.stop(signal.SIGTERM) == 0
    out = run.out.rest()
    assert "--shutdown--> IDLE" in out and "stopped: state IDLE" in out
    with pytest.raises(OSError):  # the port is closed once `ibgw run` has ended
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_readyz_is_503_with_the_state_and_reason_while_the_gateway_refuses(
    tmp_path: Path, runs: list[Run]
) -> None:
    with running(too_old_gateway) as peer:
        run = Run(peer.port, tmp_path, "--serve", "127.0.0.1:0")
        runs.append(run)
        port = run.health_port()
        run.out.wait_for(lambda line: "--handshake_failed--> DEGRADED_RED" in line, timeout=20)
        assert get(port, "/livez").status == 200  # alive, just not ready
        ready = get(port, "/readyz")
        assert ready.status == 503, ready.text
        body = ready.json()
        assert (body["status"], body["ready"]) == ("not_ready", False)
        assert (body["state"], body["reason"]) == ("DEGRADED_RED", "gateway_too_old")
        assert body["expected"] is False  # outside any maintenance window: an alarm
        assert run.stop() == 0


def test_serve_on_a_non_loopback_address_is_refused_before_any_worker(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(sim.port, tmp_path, "--serve", "0.0.0.0:0")
    runs.append(run)
    assert run.proc.wait(timeout=60) == 2
    err = run.err.rest()
    assert len(err.strip().splitlines()) == 1, err
    assert "not a loopback address" in err and "--serve-remote" in err
    assert "--> " not in run.out.rest()  # the manager never started: not one state change
    assert_nothing_started(sim, tmp_path)


def test_serve_remote_binds_a_non_loopback_address(sim: ThreadedSim, tmp_path: Path, runs: list[Run]) -> None:
    run = Run(sim.port, tmp_path, "--serve", "0.0.0.0:0", "--serve-remote")
    runs.append(run)
    port = run.health_port()
    run.wait_connected()
    assert get(port, "/readyz").status == 200  # every interface, loopback among them
    assert run.stop() == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("nope", "the port must be a number"),
        ("::1:9108", "IPv6 address in brackets"),
        ("127.0.0.1:65536", "not a TCP port number"),
    ],
)
def test_a_bad_serve_address_is_one_line_and_exit_2(tmp_path: Path, value: str, says: str) -> None:
    proc = ibgw("run", "--port", "1", "--serve", value, state_dir=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "--serve" in proc.stderr and says in proc.stderr
    assert ibgw("status", state_dir=tmp_path).returncode == 4  # no manager ever wrote a snapshot


def test_serve_on_a_port_in_use_is_one_line_and_exit_2_before_any_worker(
    sim: ThreadedSim, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = ibgw("run", "--port", str(sim.port), "--serve", f"127.0.0.1:{port}", state_dir=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert_nothing_started(sim, tmp_path)


def test_serve_remote_without_serve_is_a_usage_error(tmp_path: Path) -> None:
    proc = ibgw("run", "--port", "1", "--serve-remote", state_dir=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "ibgw run: error: --serve-remote: only meaningful with --serve HOST:PORT"
