"""The worker against gatewaysim: real `python -m worker`, real ib_async, real TCP.

What the original report checked by hand, plus the failure modes it could not reproduce: a RED
or stalled Gateway (handshake_timeout at the deadline, socket left to process exit), 326 (answered
at once), session loss, and a clean exit that the Gateway sees as one session ending by process
exit.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.worker_process import WorkerProcess

from gatewaysim.faults import Faults
from gatewaysim.threaded import ThreadedSim, running_in_thread
from worker.protocol import Code, ConnectResult, PingResult, Response, data_as, decode_incoming

ACCOUNTS = ("DU1234567",)
DEADLINE_MARGIN = 2.0  # s over the 30 s handshake budget that the answer may take


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread(accounts=ACCOUNTS) as s:
        yield s


def closes(sim: ThreadedSim) -> list[dict[str, Any]]:
    return sim.snapshot()["client_closes"]


def sessions_of(sim: ThreadedSim, client_id: int) -> list[dict[str, Any]]:
    return [s for s in sim.snapshot()["sessions"] if s["client_id"] == client_id]


def connect(
    w: WorkerProcess, port: int, client_id: int, timeout: float = 30.0, wait: float = 40.0
) -> Response:
    return w.call(
        "connect", host="127.0.0.1", port=port, client_id=client_id, readonly=True, timeout=timeout, wait=wait
    )


def exit_and_check_close(w: WorkerProcess, sim: ThreadedSim, client_id: int) -> dict[str, Any]:
    """Close stdin; the worker exits 0; the sim records one close, made by process exit."""
    before = len(closes(sim))
    w.close_stdin()
    assert w.wait_exit(15) == 0, w.stderr_text()
    sim.wait_until(lambda s: len(s.client_closes) > before, 10)
    (rec,) = [c for c in closes(sim)[before:] if c["client_id"] == client_id]
    assert rec["peer_alive"] is False, rec  # the process was gone: not a disconnect()
    assert rec["pid"] == w.pid
    return rec


# ---- the report's by-hand check, verbatim


def test_report_by_hand_check_verbatim(sim: ThreadedSim) -> None:
    """echo '{"command": "connect", "params": {...}}' | python -m worker  (no shell)."""
    line = (
        '{"command": "connect", "params": {"host": "127.0.0.1", "port": %d, '
        '"client_id": 888, "readonly": true, "timeout": 30.0}}\n' % sim.port
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "worker"], input=line.encode(), capture_output=True, timeout=60
    )
    wall = time.perf_counter() - t0
    assert out.returncode == 0, out.stderr.decode()
    msgs = [decode_incoming(raw) for raw in out.stdout.splitlines()]
    responses = [m for m in msgs if isinstance(m, Response)]
    assert len(responses) == 1
    (resp,) = responses
    assert resp.status == "success" and resp.id is None
    assert resp.data is not None
    assert resp.data["connected"] is True
    assert resp.data["accounts"] == list(ACCOUNTS)
    assert resp.data["client_id"] == 888
    result = data_as(resp, ConnectResult)
    assert result.already_connected is False and result.server_version == 178
    # the Gateway saw exactly one session, ended by process exit, not quickly after its handshake
    sim.wait_until(lambda s: len(s.client_closes) == 1, 10)
    snap = sim.snapshot()
    assert snap["counters"]["handshakes"] == 1 and snap["client_ids_seen"] == [888]
    (rec,) = snap["client_closes"]
    assert rec["peer_alive"] is False and rec["age"] >= 1.0  # linger: no fast close
    print(
        f"\none-shot connect: {result.elapsed_ms:.1f} ms inside the worker, "
        f"{wall * 1000:.0f} ms wall incl. start and the 1 s linger"
    )


def test_one_shot_keeps_a_fast_close_sensitive_gateway_green() -> None:
    """With red_on_fast_close the by-hand check would have turned the Gateway RED: not any more."""
    with running_in_thread(accounts=ACCOUNTS, faults=Faults(red_on_fast_close=0.5)) as sim:
        line = (
            '{"command": "connect", "params": {"host": "127.0.0.1", "port": %d, '
            '"client_id": 5, "readonly": true, "timeout": 30.0}}\n' % sim.port
        )
        out = subprocess.run(
            [sys.executable, "-m", "worker"], input=line.encode(), capture_output=True, timeout=60
        )
        assert out.returncode == 0
        sim.wait_until(lambda s: len(s.client_closes) == 1, 10)
        snap = sim.snapshot()
        assert snap["green"] is True and snap["counters"]["fast_closes"] == 0


# ---- a session through the worker


def test_session_commands_and_second_connect(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-session") as w:
        w.wait_ready()
        t0 = time.perf_counter()
        resp = connect(w, sim.port, 11)
        connect_ms = (time.perf_counter() - t0) * 1000
        assert resp.ok, resp
        first = data_as(resp, ConnectResult)
        assert first.client_id == 11 and first.accounts == list(ACCOUNTS)
        # farm notices arrived as ib_error events
        codes = {e.data["code"] for e in w.events if e.event == "ib_error"}
        assert {2104, 2106, 2158} <= codes

        again = connect(w, sim.port, 11)
        assert again.ok and again.data is not None
        assert again.data["already_connected"] is True and again.data["client_id"] == 11
        assert len(sessions_of(sim, 11)) == 1 and sim.snapshot()["counters"]["handshakes"] == 1

        latencies = []
        for _ in range(20):  # 20 pings stay under ib_async's 45 msg/s pacing
            t = time.perf_counter()
            ping = w.call("ping", timeout=5.0)
            latencies.append((time.perf_counter() - t) * 1000)
            assert ping.ok, ping
            p = data_as(ping, PingResult)
            assert abs(p.gateway_time - time.time()) < 5 and p.latency_ms >= 0
        latencies.sort()

        accts = w.call("accounts")
        assert accts.ok and accts.data == {"accounts": list(ACCOUNTS)}
        pos = w.call("positions")
        assert pos.ok and pos.data is not None
        symbols = {(r["account"], r["symbol"], r["sec_type"]) for r in pos.data["positions"]}
        assert ("DU1234567", "AAPL", "STK") in symbols
        summary = w.call("account_summary")
        assert summary.ok and summary.data is not None
        tags = {r["tag"] for r in summary.data["rows"]}
        assert "NetLiquidation" in tags
        assert w.call("account_summary", account="nope").data == {"rows": []}

        status = w.call("status").data
        assert status is not None
        assert status["connected"] is True and status["phase"] == "connected"
        assert status["client_id"] == 11 and status["socket_open"] is True
        assert status["suppressed_disconnects"] == 0
        assert status["counters"]["connect_attempts"] == 1

        refused = w.call("disconnect")
        assert refused.error is not None and refused.error.code == Code.DISCONNECT_FORBIDDEN
        assert closes(sim) == [] and len(sessions_of(sim, 11)) == 1

        print(
            f"\nconnect through the worker: {first.elapsed_ms:.1f} ms in ib_async, "
            f"{connect_ms:.1f} ms request->response; ping round trip via worker: median "
            f"{latencies[len(latencies) // 2]:.2f} ms, max {latencies[-1]:.2f} ms "
            f"(ib_async-measured {p.latency_ms:.2f} ms)"
        )
        exit_and_check_close(w, sim, 11)
    snap = sim.snapshot()
    assert snap["counters"]["handshakes"] == 1 and snap["client_ids_seen"] == [11]


def test_slow_connect_does_not_block_status(sim: ThreadedSim) -> None:
    """Requests run concurrently: status answers while connect waits; a 2nd connect is refused."""
    sim.handshake_delay(1.0)
    with WorkerProcess(label="test-concurrent") as w:
        w.wait_ready()
        cid = w.submit("connect", host="127.0.0.1", port=sim.port, client_id=12, timeout=30.0)
        sid = w.submit("status")
        status = w.wait_response(sid, 5)
        assert status.data is not None and status.data["phase"] == "connecting"
        dup = w.call("connect", host="127.0.0.1", port=sim.port, client_id=12)
        assert dup.error is not None and dup.error.code == Code.ALREADY_CONNECTING
        assert w.wait_response(cid, 10).ok
        exit_and_check_close(w, sim, 12)


def test_eof_answers_what_was_read_one_session_for_the_life_of_the_worker(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-eof") as w:
        w.wait_ready()
        assert connect(w, sim.port, 13).ok
        ids = [w.submit("ping", timeout=5.0), w.submit("positions"), w.submit("status")]
        w.close_stdin()  # EOF right behind the requests
        answers = [w.wait_response(i, 10) for i in ids]
        assert all(a.ok for a in answers), answers
        assert w.wait_exit(15) == 0
        sim.wait_until(lambda s: len(s.client_closes) == 1, 10)
        snap = sim.snapshot()
        assert snap["counters"]["connections_accepted"] == 1
        assert snap["counters"]["handshakes"] == 1
        (rec,) = snap["client_closes"]
        assert rec["client_id"] == 13 and rec["peer_alive"] is False and rec["pid"] == w.pid


def test_session_lost_and_ping_on_red(sim: ThreadedSim) -> None:
    """RED while connected: ping times out per params.timeout; a Gateway drop ends the requests
    in flight with session_lost (what the manager maps to SessionLost), probes included."""
    with WorkerProcess(label="test-lost") as w:
        w.wait_ready()
        assert connect(w, sim.port, 14).ok
        sim.go_red()
        t0 = time.perf_counter()
        ping = w.call("ping", timeout=1.0)
        took = time.perf_counter() - t0
        assert ping.error is not None and ping.error.code == Code.REQUEST_TIMEOUT, ping
        assert 0.9 <= took < 1.0 + DEADLINE_MARGIN
        pending = w.submit("ping", timeout=20.0)  # will be cut off by the drop
        probing = w.submit("probe", window=0.0, timeout=20.0)  # so will a probe
        # status is read after both, so their tasks have run (sent their requests) first
        in_flight = w.call("status").data
        assert in_flight is not None and in_flight["in_flight"] == 2
        sim.drop_all()
        lost = w.wait_event("session_lost", 10)
        assert lost.data["code"] == Code.PEER_CLOSED
        for rid in (pending, probing):
            cut = w.wait_response(rid, 10)
            assert cut.error is not None and cut.error.code == Code.SESSION_LOST, cut
        after = w.call("ping", timeout=1.0)
        assert after.error is not None and after.error.code == Code.NOT_CONNECTED
        status = w.call("status").data
        assert status is not None
        assert status["phase"] == "lost" and status["connected"] is False
        assert status["counters"]["sessions_lost"] == 1
        assert status["suppressed_disconnects"] == 0
        assert closes(sim) == []  # the Gateway closed it, not us
        w.close_stdin()
        assert w.wait_exit(15) == 0


def test_connectivity_notices_are_ib_error_events(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-notices") as w:
        w.wait_ready()
        assert connect(w, sim.port, 15).ok
        sim.connectivity_lost()
        ev = w.wait_event_where(lambda e: e.event == "ib_error" and e.data["code"] == 1100)
        assert ev.data["req_id"] == -1 and "lost" in ev.data["message"]
        sim.connectivity_restored(True)
        w.wait_event_where(lambda e: e.event == "ib_error" and e.data["code"] == 1101)
        exit_and_check_close(w, sim, 15)


# ---- failures: 326, refused, RED, stall


def test_client_id_in_use_is_answered_at_once(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-holder") as holder, WorkerProcess(label="test-326") as second:
        holder.wait_ready()
        second.wait_ready()
        assert connect(holder, sim.port, 7).ok
        t0 = time.perf_counter()
        resp = connect(second, sim.port, 7, timeout=30.0)
        took = time.perf_counter() - t0
        assert resp.error is not None and resp.error.code == Code.CLIENT_ID_IN_USE, resp
        assert resp.error.ib_code == 326
        assert took < 3.0, f"326 took {took:.2f} s: waited for the timeout instead"
        assert any(e.event == "ib_error" and e.data["code"] == 326 for e in second.events)
        # the holder is untouched; nobody closed a socket from a live process
        assert holder.call("ping", timeout=5.0).ok
        assert all(c["peer_alive"] is not True for c in closes(sim))
        # the Gateway closed the 326 socket (the answer waits for that close, briefly), so the
        # same worker may connect afresh, here with another id
        st = second.call("status").data
        assert st is not None and st["phase"] == "failed" and st["socket_open"] is False
        assert st["last_failure"]["code"] == Code.CLIENT_ID_IN_USE
        fresh = connect(second, sim.port, 8)
        assert fresh.ok, fresh
        print(f"\n326 answered in {took * 1000:.0f} ms")
        exit_and_check_close(second, sim, 8)
        exit_and_check_close(holder, sim, 7)


def test_gateway_closing_during_the_handshake_is_peer_closed_at_once(sim: ThreadedSim) -> None:
    sim.handshake_delay(20.0)
    with WorkerProcess(label="test-peer-closed") as w:
        w.wait_ready()
        rid = w.submit("connect", host="127.0.0.1", port=sim.port, client_id=17, timeout=30.0)
        sim.wait_until(lambda s: len(s.sessions) == 1, 10)
        t0 = time.perf_counter()
        sim.drop_all()
        resp = w.wait_response(rid, 10)
        assert resp.error is not None and resp.error.code == Code.PEER_CLOSED, resp
        assert time.perf_counter() - t0 < 3.0
        st = w.call("status").data
        assert st is not None and st["socket_open"] is False and st["phase"] == "failed"
        w.close_stdin()
        assert w.wait_exit(15) == 0


def test_refused_then_connect_in_the_same_worker(sim: ThreadedSim) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    with WorkerProcess(label="test-refused") as w:
        w.wait_ready()
        refused = connect(w, dead_port, 16)
        assert refused.error is not None and refused.error.code == Code.CONNECTION_REFUSED
        ok = connect(w, sim.port, 16)  # no socket was left behind: a fresh IB() is fine
        assert ok.ok, ok
        exit_and_check_close(w, sim, 16)


def _timeout_case(sim: ThreadedSim, client_id: int, out: dict[str, Any]) -> None:
    """One worker, connect with the full 30 s budget against a Gateway that will not finish."""
    with WorkerProcess(label=f"test-timeout-{client_id}") as w:
        w.wait_ready()
        t0 = time.perf_counter()
        resp = connect(w, sim.port, client_id, timeout=30.0, wait=30.0 + DEADLINE_MARGIN + 5)
        out["took"] = time.perf_counter() - t0
        out["resp"] = resp
        out["closes_while_alive"] = closes(sim)
        out["sessions_while_alive"] = sessions_of(sim, client_id) or sim.snapshot()["sessions"]
        out["status"] = w.call("status").data
        out["retry"] = connect(w, sim.port, client_id, timeout=30.0)
        before = len(closes(sim))
        w.close_stdin()
        out["rc"] = w.wait_exit(15)
        sim.wait_until(lambda s: len(s.client_closes) > before, 10)
        out["close_at_exit"] = closes(sim)[before:]
        out["pid"] = w.pid


@pytest.mark.slow
def test_handshake_timeout_on_red_and_on_stalled_sync() -> None:
    """Both real 30 s cases at once: a silent (RED) Gateway and one that stalls `positions`.

    Each connect answers handshake_timeout at the 30 s deadline (not later: ib_async's own
    timeouts would stack to ~2x30 s), the sim sees no close while the worker lives, the guard
    counted the suppressed disconnect(s), a retry in that worker is refused (worker_spent), and
    the socket closes only when the process exits.
    """
    results: dict[str, dict[str, Any]] = {"red": {}, "stall": {}}
    with (
        running_in_thread(accounts=ACCOUNTS, faults=Faults(silent=True)) as red,
        running_in_thread(accounts=ACCOUNTS, faults=Faults(stall_sync="positions")) as stall,
    ):
        threads = [
            threading.Thread(target=_timeout_case, args=(red, 21, results["red"])),
            threading.Thread(target=_timeout_case, args=(stall, 22, results["stall"])),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        red_snap, stall_snap = red.snapshot(), stall.snapshot()

    expected_paths = {
        # RED: the handshake never completes; Client.connectAsync and IB.connectAsync both try
        "red": {"Client.disconnect": 1, "IB.disconnect": 1},
        # stall: the handshake completed, the start-up sync is cut off; only IB.connectAsync tries
        "stall": {"IB.disconnect": 1},
    }
    for name, r in results.items():
        assert "rc" in r, f"{name}: the case did not finish: {r}"
        resp = r["resp"]
        assert resp.error is not None and resp.error.code == Code.HANDSHAKE_TIMEOUT, (name, resp)
        assert 30.0 <= r["took"] <= 30.0 + DEADLINE_MARGIN, (name, r["took"])
        assert r["closes_while_alive"] == [], (name, r["closes_while_alive"])
        assert len(r["sessions_while_alive"]) == 1, (name, r["sessions_while_alive"])
        status = r["status"]
        assert status["suppressed_by_path"] == expected_paths[name], (name, status)
        assert status["suppressed_disconnects"] == sum(expected_paths[name].values())
        assert status["socket_open"] is True and status["phase"] == "failed"
        retry = r["retry"]
        assert retry.error is not None and retry.error.code == Code.WORKER_SPENT, (name, retry)
        assert r["rc"] == 0
        (rec,) = r["close_at_exit"]
        assert rec["peer_alive"] is False and rec["pid"] == r["pid"], (name, rec)
        print(f"\n{name}: handshake_timeout after {r['took']:.3f} s")
    assert red_snap["counters"]["handshakes"] == 0 and red_snap["counters"]["connections_accepted"] == 1
    assert stall_snap["counters"]["handshakes"] == 1 and stall_snap["counters"]["requests_stalled"] == 1
