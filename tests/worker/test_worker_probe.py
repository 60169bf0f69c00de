"""The liveness probe through a real worker: answered from the session's own traffic, or by a
round trip that never waits behind user requests; failed within its timeout when the Gateway is
silent."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.peers import Peer
from support.worker_process import WorkerProcess

from gatewaysim.threaded import ThreadedSim, running_in_thread
from worker.liveness import PROBE_MESSAGES_PER_S, USER_MESSAGES_PER_S
from worker.protocol import Code, ProbeResult, Response, data_as, decode_incoming

MARGIN = 2.0  # s an answer may take beyond the probe's own timeout on a loaded machine


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread(accounts=("DU1234567",)) as s:
        yield s


def probe(w: WorkerProcess, window: float, timeout: float) -> ProbeResult:
    resp = w.call("probe", window=window, timeout=timeout, wait=timeout + MARGIN)
    assert resp.ok, resp
    return data_as(resp, ProbeResult)


def test_probe_answers_from_traffic_else_by_a_round_trip(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-probe") as w:
        w.wait_ready()
        early = w.call("probe")
        assert early.error is not None and early.error.code == Code.NOT_CONNECTED
        assert w.connect(sim.port, 21).ok
        recent = probe(w, window=60.0, timeout=5.0)  # the handshake's bytes are evidence enough
        assert recent.sent is False and recent.waited_ms == 0.0 and recent.age_ms < 60_000
        quiet = probe(w, window=0.0, timeout=5.0)  # nothing is young enough: a round trip
        assert quiet.sent is True and quiet.age_ms <= quiet.waited_ms
        ping = w.call("ping", timeout=5.0)  # the probe's reply was not handed to anyone else
        assert ping.ok, ping
        status = w.call("status").data
        assert status is not None and status["probes_sent"] == 1
        assert status["pacing"]["max_requests"] == USER_MESSAGES_PER_S


def test_probe_is_not_starved_by_300_pings_and_paced_requests(sim: ThreadedSim) -> None:
    """300 pings (serialised on ib_async's one currentTime key) and 20 account summaries in flight
    (~7 s of messages at the 45 msg/s pacing); probes that demand fresh bytes all succeed in time, and every
    user request still gets exactly one answer."""
    with WorkerProcess(label="test-probe-load") as w:
        w.wait_ready()
        connect_id = w.submit("connect", host="127.0.0.1", port=sim.port, client_id=22, timeout=30.0)
        assert w.wait_response(connect_id, 40.0).ok
        users = [w.submit("ping", timeout=30.0) for _ in range(300)]
        users += [w.submit("account_summary", timeout=30.0) for _ in range(20)]
        probes = [w.submit("probe", window=0.0, timeout=2.0) for _ in range(5)]
        for rid in probes:
            resp = w.wait_response(rid, 2.0 + MARGIN)
            assert resp.ok, resp
        answers = [w.wait_response(rid, 40.0) for rid in users]
        assert all(a.ok for a in answers), [a for a in answers if not a.ok][:3]
        status_id = w.submit("status")
        status = w.wait_response(status_id).data
        assert status is not None and status["counters"]["throttle_starts"] >= 1  # pacing was hit
        assert status["in_flight"] == 0
        ids = [m.id for m in map(decode_incoming, w.raw_lines) if isinstance(m, Response)]
        assert sorted(ids) == sorted([connect_id, *users, *probes, status_id])  # exactly one answer each


def test_probe_goes_past_the_pacing_queue(lazy_gateway_peer: Peer) -> None:
    """A Gateway that answers only the handshake and the time: 200 account summaries fill the
    pacing queue for ~3.4 s and nothing answers them; a probe with a 1 s timeout can only succeed
    if its reqCurrentTime went out ahead of them."""
    with WorkerProcess(label="test-probe-bypass") as w:
        w.wait_ready()
        assert w.connect(lazy_gateway_peer.port, 23).ok
        users = [w.submit("account_summary", timeout=4.0) for _ in range(200)]
        assert w.call("status").ok  # read after the 200: all of them have been handed to ib_async
        result = probe(w, window=0.0, timeout=1.0)
        assert result.sent is True
        assert result.user_backlog >= 200 - USER_MESSAGES_PER_S - 20  # still queued behind pacing
        answers = [w.wait_response(rid, 4.0 + MARGIN) for rid in users]
        assert {a.error.code for a in answers if a.error} == {Code.REQUEST_TIMEOUT}
        assert all(not a.ok for a in answers)


def test_probe_fails_within_its_timeout_on_a_silent_gateway(sim: ThreadedSim) -> None:
    with WorkerProcess(label="test-probe-silent") as w:
        w.wait_ready()
        assert w.connect(sim.port, 24).ok
        sim.go_red()
        t0 = time.monotonic()
        resp = w.call("probe", window=0.0, timeout=1.0, wait=1.0 + MARGIN)
        took = time.monotonic() - t0
        assert resp.error is not None and resp.error.code == Code.GATEWAY_SILENT, resp
        assert took >= 1.0  # it did wait its timeout for bytes that never came
        again = w.call("probe", window=0.5, timeout=0.5, wait=0.5 + MARGIN)
        assert again.error is not None and again.error.code == Code.GATEWAY_SILENT
        status = w.call("status").data
        assert status is not None and 1 <= status["probes_sent"] <= 2
        assert status["phase"] == "connected"  # a silent probe reports; it never ends the session
        assert PROBE_MESSAGES_PER_S + USER_MESSAGES_PER_S < 50
