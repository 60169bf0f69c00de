"""Every Gateway wait in the worker is bounded (issue 13 groundwork): against a Gateway that stops
answering once the session is up, every command that takes a timeout answers within it, also
when it first waits behind a same-key request. New commands are picked up from the registry."""

from __future__ import annotations

import time
from typing import Any

from support.peers import Peer
from support.worker_process import WorkerProcess

from worker.handlers import registry
from worker.protocol import Code

TIMEOUT = 0.5
MARGIN = 2.0  # s an answer may take beyond its timeout on a loaded machine
# params a command needs besides timeout (commands with required fields must be listed here)
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "probe": {"window": 0.0},
    "qualify": {"symbol": "AAPL"},
    "historical_bars": {"symbol": "AAPL"},
    "subscribe": {"stream": "quotes", "symbol": "AAPL"},
}
TIMED_OUT = {Code.REQUEST_TIMEOUT, Code.GATEWAY_SILENT}


def commands_with_a_timeout() -> list[str]:
    params = registry.params_map()
    return [
        name for name in sorted(params) if name != "connect" and "timeout" in params[name].__struct_fields__
    ]


def test_every_command_with_a_timeout_answers_within_it_on_a_mute_gateway(lazy_gateway_peer: Peer) -> None:
    names = commands_with_a_timeout()
    assert {"ping", "probe", "positions", "account_summary"} <= set(names)
    with WorkerProcess(label="test-bounded") as w:
        w.wait_ready()
        assert w.connect(lazy_gateway_peer.port, 51).ok
        lazy_gateway_peer.mute.set()
        t0 = time.monotonic()
        # each command twice: the second of a same-key pair waits for the first's turn
        sent = [(n, w.submit(n, timeout=TIMEOUT, **EXAMPLE_PARAMS.get(n, {}))) for n in names * 2]
        for name, rid in sent:
            resp = w.wait_response(rid, max(0.0, t0 + TIMEOUT + MARGIN - time.monotonic()))
            if not resp.ok:  # `accounts` needs no round trip: it may answer at once
                assert resp.error is not None and resp.error.code in TIMED_OUT, (name, resp)
        status = w.call("status").data
        assert status is not None and status["connected"] is True and status["in_flight"] == 0
