"""Connect failures reported as what they are, at once (issue 11 items 8 and 9): a Gateway too old
for ib_async, a host name that does not resolve, and peers that are not Gateways at all — one of
which used to pin the worker at 100 % CPU and ~370 MiB for the whole 30 s handshake."""

from __future__ import annotations

import psutil
from support.peers import Peer
from support.worker_process import WorkerProcess

from worker.protocol import Code

FAST = 10.0  # s the test waits for an answer that must not take the 30 s handshake deadline
RSS_GROWTH_LIMIT = 48 << 20  # bytes a failed connect may add to the worker's resident memory
STREAM_LIMIT = 64 << 20  # bytes a peer can push into a worker that has stopped reading


def status(w: WorkerProcess) -> dict[str, object]:
    data = w.call("status").data
    assert data is not None
    return data


def test_gateway_too_old_is_its_own_reason_at_once(too_old_peer: Peer) -> None:
    with WorkerProcess(label="test-too-old") as w:
        w.wait_ready()
        resp = w.connect(too_old_peer.port, 41, timeout=30.0, wait=FAST)
        assert resp.error is not None and resp.error.code == Code.SERVER_VERSION_TOO_OLD, resp
        assert "100" in resp.error.message and "157" in resp.error.message
        st = status(w)
        assert st["phase"] == "failed" and st["socket_open"] is True  # left to process exit
        w.close_stdin()
        assert w.wait_exit(15) == 0


def test_dns_failure_is_not_refused(lazy_gateway_peer: Peer) -> None:
    with WorkerProcess(label="test-dns") as w:
        w.wait_ready()
        resp = w.connect(0 + lazy_gateway_peer.port, 42, host="no-such-host.invalid", wait=FAST)
        assert resp.error is not None and resp.error.code == Code.DNS_FAILURE, resp
        assert status(w)["socket_open"] is False
        assert w.connect(lazy_gateway_peer.port, 42).ok  # nothing was opened: the worker is reusable


def test_a_streaming_peer_fails_fast_and_the_worker_stays_small(streaming_peer: Peer) -> None:
    with WorkerProcess(label="test-stream") as w:
        w.wait_ready()
        proc = psutil.Process(w.pid)
        rss_before = proc.memory_info().rss
        resp = w.connect(streaming_peer.port, 43, timeout=30.0, wait=FAST)
        assert resp.error is not None and resp.error.code == Code.NOT_A_GATEWAY, resp
        # the worker stopped reading: the peer's sends block on a full socket, its bytes stay bounded
        assert streaming_peer.blocked.wait(FAST)
        sent = streaming_peer.sent
        assert sent < STREAM_LIMIT
        assert proc.memory_info().rss - rss_before < RSS_GROWTH_LIMIT
        st = status(w)
        assert st["phase"] == "failed" and st["socket_open"] is True  # never closed by us
        spent = w.connect(streaming_peer.port, 44, wait=FAST)
        assert spent.error is not None and spent.error.code == Code.WORKER_SPENT
        assert streaming_peer.sent - sent < STREAM_LIMIT
        w.close_stdin()
        assert w.wait_exit(15) == 0


def test_a_session_that_stops_being_a_gateway_is_lost_not_buffered(broken_peer: Peer) -> None:
    """After the handshake a frame over IB's 16 MiB limit ends the session (reading stops, the
    socket stays open): the request in flight answers session_lost, and so does a probe."""
    with WorkerProcess(label="test-broken") as w:
        w.wait_ready()
        assert w.connect(broken_peer.port, 45).ok
        probing = w.submit("probe", window=60.0, timeout=30.0)  # answered from the handshake's bytes
        assert w.wait_response(probing, FAST).ok
        ping = w.call("ping", timeout=30.0, wait=FAST)
        assert ping.error is not None and ping.error.code == Code.SESSION_LOST, ping
        lost = w.wait_event("session_lost", FAST)
        assert lost.data["code"] == Code.NOT_A_GATEWAY and "16777215" in lost.data["message"]
        after = w.call("probe", window=0.0, timeout=1.0)
        assert after.error is not None and after.error.code == Code.NOT_CONNECTED
        st = status(w)
        assert st["phase"] == "lost" and st["socket_open"] is True and st["suppressed_disconnects"] == 0
        w.close_stdin()
        assert w.wait_exit(15) == 0
