"""/livez, /readyz and /metrics over real HTTP from a real manager (real worker, real ib_async,
real TCP to gatewaysim) driven through faults, on asyncio and trio."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import socket
import time
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import anyio
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.http import HttpConnection, http_get
from support.manager import assert_clean_exit, fast_settings, poll_until
from support.orders import limit, on_sim_order, trading

from fsm import Execution, Gap, Stream
from fsm.core import State
from fsm.errors import IbgwError, RemoteBindRefused, RequestTimeout, ServeError
from fsm.health import run_health, serve_health
from fsm.maintenance import Window
from fsm.manager import ConnectionManager
from gatewaysim import GatewaySim

pytestmark = pytest.mark.anyio

CID = 7
HOST = "127.0.0.1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(port: int) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    reply = await http_get(port, "/metrics")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    out: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    hits = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


async def readyz(port: int) -> tuple[int, dict[str, object]]:
    reply = await http_get(port, "/readyz")
    assert reply.headers["content-type"] == "application/json"
    return reply.status, reply.json()


async def test_probes_follow_the_manager_through_faults(tmp_path: Path) -> None:
    async with GatewaySim() as sim:
        settings = fast_settings(tmp_path, sim.port, CID)
        async with ConnectionManager(settings) as m, serve_health(m, HOST, 0) as server:
            assert server.port != 0 and server.url == f"http://{HOST}:{server.port}"
            live = await http_get(server.port, "/livez")
            assert live.status == 200 and live.json()["alive"] is True

            await m.wait_connected(20)
            status, body = await readyz(server.port)
            assert status == 200
            assert body["status"] == "ready" and body["state"] == "CONNECTED" and body["reason"] is None
            assert body["client_id"] == CID and body["expected"] is False and body["maintenance"] is None
            await m.request("ping")
            samples = await scrape(server.port)
            identity = {"host": HOST, "port": str(sim.port), "client_id": str(CID)}
            assert value(samples, "ibgw_state", state="CONNECTED", **identity) == 1
            assert value(samples, "ibgw_state", state="DEGRADED_RED") == 0
            assert value(samples, "ibgw_sessions_total") == 1
            assert value(samples, "ibgw_requests_total", outcome="ok") == 1
            assert value(samples, "ibgw_transitions_total", source="HANDSHAKING", dest="CONNECTED") == 1
            assert value(samples, "ibgw_time_in_state_seconds_total", state="SPAWNING") > 0

            # 1100: IB's servers are unreachable. The session is kept, but not ready until 1101.
            sim.connectivity_lost()
            await m.wait_for(State.DEGRADED_RED, 10)
            status, body = await readyz(server.port)
            assert status == 503
            assert body["status"] == "not_ready" and body["ready"] is False
            assert body["state"] == "DEGRADED_RED" and body["reason"] == "connectivity_lost"
            assert body["expected"] is False
            assert (await http_get(server.port, "/livez")).status == 200
            samples = await scrape(server.port)
            assert value(samples, "ibgw_state", state="DEGRADED_RED") == 1
            assert value(samples, "ibgw_state", state="CONNECTED") == 0
            assert value(samples, "ibgw_red_episodes_total") == 1
            assert value(samples, "ibgw_red_by_reason_total", reason="connectivity_lost") == 1
            red = {"source": "CONNECTED", "dest": "DEGRADED_RED"}
            assert value(samples, "ibgw_transitions_total", reason="connectivity_lost", **red) == 1
            sim.connectivity_restored(data_lost=True)
            await m.wait_connected(10)
            assert (await readyz(server.port))[0] == 200

            # API layer dead: the probe fails, and new sessions hang until the Gateway restarts.
            sim.go_red()
            await m.wait_for(State.DEGRADED_RED, 10)
            status, body = await readyz(server.port)
            assert status == 503 and body["state"] != "CONNECTED"
            sim.restart()
            await m.wait_connected(30)
            status, body = await readyz(server.port)
            assert status == 200 and body["state"] == "CONNECTED"
            samples = await scrape(server.port)
            assert value(samples, "ibgw_sessions_total") == 2
            assert value(samples, "ibgw_retries_total") >= 1
            assert value(samples, "ibgw_red_episodes_total") >= 2
            assert value(samples, "ibgw_red_by_reason_total", reason="probe_failed") == 1
            assert value(samples, "ibgw_transitions_total", reason="probe_failed", **red) == 1
            assert value(samples, "ibgw_notices_total", kind="data_lost") == 1
            assert value(samples, "ibgw_time_in_state_seconds_total", state="DEGRADED_RED") > 0
            assert value(samples, "ibgw_worker_up") == 1

            # The manager stopped while the server still answers: neither alive nor ready.
            await m.shutdown()
            live = await http_get(server.port, "/livez")
            assert live.status == 503 and live.json() == {
                "alive": False,
                "state": "IDLE",
                "pid": live.json()["pid"],
            }
            status, body = await readyz(server.port)
            assert status == 503 and body["state"] == "IDLE"
        await assert_clean_exit(m, sim)
    # a per-manager registry: nothing of ours in prometheus_client's global one
    assert b"ibgw_" not in generate_latest(REGISTRY)


async def test_inside_a_window_readyz_says_maintenance_and_when_to_retry(tmp_path: Path) -> None:
    """A window around now: connected, ready and named; IB unreachable (1100), 503 "maintenance",
    expected, with Retry-After until the window's end; back when IB is."""
    now = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    hour = dt.timedelta(hours=1)
    window = Window("test-window", (now - hour).time(), (now + hour).time(), ZoneInfo("UTC"))
    ends = (now + hour).timestamp()
    async with GatewaySim() as sim:
        settings = fast_settings(tmp_path, sim.port, CID, maintenance=(window,))
        async with ConnectionManager(settings) as m, serve_health(m, HOST, 0) as server:
            await m.wait_connected(20)
            status, body = await readyz(server.port)
            assert status == 200 and body["status"] == "ready" and body["expected"] is False
            assert body["maintenance"] == {"window": "test-window", "ends": ends}

            sim.connectivity_lost()
            await m.wait_for(State.DEGRADED_RED, 10)
            reply = await http_get(server.port, "/readyz")
            left = ends - time.time()
            body = reply.json()
            assert reply.status == 503 and body["status"] == "maintenance" and body["expected"] is True
            assert body["state"] == "DEGRADED_RED" and body["reason"] == "connectivity_lost"
            assert body["maintenance"] == {"window": "test-window", "ends": ends}
            assert left - 2 <= int(reply.headers["retry-after"]) <= left + 1
            samples = await scrape(server.port)
            assert value(samples, "ibgw_maintenance") == 1
            red = {"source": "CONNECTED", "dest": "DEGRADED_RED", "reason": "connectivity_lost"}
            assert value(samples, "ibgw_transitions_total", expected="true", **red) == 1

            sim.connectivity_restored(data_lost=False)
            await m.wait_connected(10)
            reply = await http_get(server.port, "/readyz")
            assert reply.status == 200 and "retry-after" not in reply.headers
        await assert_clean_exit(m, sim)


class Reader:
    """Reads a stream into `items` in a task of its own."""

    def __init__(self, s: Stream) -> None:
        self.s = s
        self.items: list[object] = []

    async def run(self) -> None:
        async for e in self.s:
            self.items.append(e)

    def gaps(self) -> list[Gap]:
        return [e for e in self.items if isinstance(e, Gap)]

    def resumed(self, gaps: int) -> bool:
        """The n-th Gap has come, and 3 items after it."""
        last = max((i for i, e in enumerate(self.items) if isinstance(e, Gap)), default=len(self.items))
        return len(self.gaps()) == gaps and len(self.items) - last > 3


async def test_metrics_count_a_streams_gaps_and_the_orders(tmp_path: Path) -> None:
    """A quote stream open while an order's worker is SIGKILLed the moment the simulator takes
    it (resolved by the next session's reconciliation: one gap) and while the Gateway is down
    and the order fills (found by reconciliation: a second gap); /metrics says so."""
    async with (
        trading(tmp_path, client_id=CID) as (sim, m),
        serve_health(m, HOST, 0) as server,
        anyio.create_task_group() as tg,
    ):
        fills: list[Execution] = []

        async def collect() -> None:
            async for x in m.executions():
                fills.append(x)

        tg.start_soon(collect)
        async with m.stream("quotes", symbol="AAPL") as s:
            r = Reader(s)
            tg.start_soon(r.run)
            await poll_until(lambda: len(r.items) >= 3, 20, "first quotes")
            pid = m.worker_pid
            assert pid is not None
            on_sim_order(sim, "met-1", lambda: os.kill(pid, signal.SIGKILL))
            placed = await m.place_order(**limit("met-1"), timeout=20)
            assert placed.status == "Submitted" and m.worker_pid != pid
            await poll_until(lambda: r.resumed(1), 20, "the stream after the SIGKILL")

            sim.down_for(0.5)
            await sim.wait_until(lambda gw: not gw.sessions, 10)
            sim.fill_order("met-1")  # while no session is up: found by the next reconciliation
            await poll_until(lambda: len(fills) == 1 and r.resumed(2), 20, "the fill and the stream")

            samples = await scrape(server.port)
            now = m.metrics()
            assert [g.reason for g in r.gaps()] == ["worker_exited", "peer_closed"]
            assert value(samples, "ibgw_stream_gaps_total") == 2 == now["stream_gaps"]
            assert value(samples, "ibgw_streams_restored_total") == 2 == now["streams_restored"]
            assert value(samples, "ibgw_streams_open") == 1
            assert value(samples, "ibgw_stream_items_dropped_total") == now["stream_items_dropped"]
            longest = max((g.until - g.since).total_seconds() for g in r.gaps())
            assert longest > 0 and value(samples, "ibgw_stream_longest_gap_seconds") == pytest.approx(longest)
            assert value(samples, "ibgw_orders_resolved_total") == 1 == now["orders_resolved"]
            assert value(samples, "ibgw_orders_in_doubt") == 0 == now["orders_in_doubt"]
            assert value(samples, "ibgw_fills_recovered_total") == 1 == now["fills_recovered"]
            assert value(samples, "ibgw_reconciliations_total") == now["reconciliations"] >= 3
            assert value(samples, "ibgw_sessions_total") == 3
            assert value(samples, "ibgw_requests_total", outcome="ok") == now["requests_ok"] > 0
        samples = await scrape(server.port)
        assert value(samples, "ibgw_streams_open") == 0
        tg.cancel_scope.cancel()


async def test_other_paths_and_methods_are_answered_not_guessed(tmp_path: Path) -> None:
    async with (
        GatewaySim() as sim,
        ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m,
        serve_health(m, HOST, 0) as server,
    ):
        missing = await http_get(server.port, "/healthz")
        assert missing.status == 404 and missing.json()["paths"] == ["/livez", "/readyz", "/metrics"]
        refused = await http_get(server.port, "/readyz", method="POST")
        assert refused.status == 405 and refused.headers["allow"] == "GET"
        assert refused.json() == {"error": "POST is not allowed; use GET"}


async def test_server_stops_cleanly_with_a_client_still_connected(tmp_path: Path) -> None:
    """Leaving the block stops the server through hypercorn's shutdown_trigger, even with an idle
    keep-alive connection open; afterwards nothing listens on the port."""
    async with GatewaySim() as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            # Not while a worker is being spawned: on trio that happens in a thread, and a child
            # between fork and exec briefly holds a copy of every fd, the listener included.
            await m.wait_connected(20)
            with anyio.fail_after(10):  # a hang detector, not a speed claim
                async with serve_health(m, HOST, 0) as server:
                    idle = await HttpConnection.open(server.port)
                    assert (await idle.request("/livez")).status == 200  # kept alive
                await idle.wait_closed_by_server()
            await idle.aclose()
            with pytest.raises(OSError):
                await anyio.connect_tcp(HOST, server.port)
        await assert_clean_exit(m, sim)


async def test_run_health_as_a_task_stops_when_cancelled(tmp_path: Path) -> None:
    async with GatewaySim() as sim:
        async with ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m:
            async with anyio.create_task_group() as tg:
                server = await tg.start(partial(run_health, m, HOST, 0))
                await m.wait_connected(20)
                assert (await http_get(server.port, "/readyz")).status == 200
                tg.cancel_scope.cancel()
            with pytest.raises(OSError):
                await anyio.connect_tcp(HOST, server.port)
        await assert_clean_exit(m, sim)


async def test_non_loopback_bind_is_refused_without_the_flag(tmp_path: Path) -> None:
    m = ConnectionManager(fast_settings(tmp_path, 4002, CID))  # never started: refused before use
    for host in ("0.0.0.0", "", "::"):
        with pytest.raises(RemoteBindRefused, match="not a loopback address.*allow_remote=True") as info:
            async with serve_health(m, host, 0):
                pass
        assert isinstance(info.value, IbgwError)
    for host in ("localhost", "::1"):
        try:
            async with serve_health(m, host, 0) as server:
                assert server.port != 0
        except ServeError as exc:  # a machine without IPv6 loopback may not bind ::1
            assert "cannot listen" in str(exc) and host == "::1"


async def test_explicit_flag_allows_all_interfaces(tmp_path: Path) -> None:
    async with GatewaySim() as sim:
        async with (
            ConnectionManager(fast_settings(tmp_path, sim.port, CID)) as m,
            serve_health(m, "0.0.0.0", 0, allow_remote=True) as server,
        ):
            assert (await http_get(server.port, "/livez")).status == 200
        await assert_clean_exit(m, sim)


async def test_bad_addresses_are_typed_errors(tmp_path: Path) -> None:
    m = ConnectionManager(fast_settings(tmp_path, 4002, CID))
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ServeError, match=f"cannot listen on {HOST}:{port}"):
            async with serve_health(m, HOST, port):
                pass
    for port in (-1, 65536):
        with pytest.raises(ServeError, match="not a TCP port"):
            async with serve_health(m, HOST, port):
                pass
    with pytest.raises(ServeError, match="cannot resolve"):
        async with serve_health(m, "no-such-host.invalid", 0):
            pass


async def test_the_blocks_own_error_comes_out_as_it_is(tmp_path: Path) -> None:
    m = ConnectionManager(fast_settings(tmp_path, 4002, CID))  # answers from a stopped manager
    with pytest.raises(RequestTimeout, match="the trader's own"):
        async with serve_health(m, HOST, 0) as server:
            assert (await http_get(server.port, "/livez")).status == 503
            raise RequestTimeout("the trader's own error")
    with pytest.raises(OSError):
        await anyio.connect_tcp(HOST, server.port)


async def test_access_log_only_when_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    m = ConnectionManager(fast_settings(tmp_path, 4002, CID))
    caplog.set_level(logging.DEBUG)
    async with serve_health(m, HOST, 0) as server:
        for _ in range(3):
            await http_get(server.port, "/readyz")
    assert [r for r in caplog.records if "GET /readyz" in r.getMessage()] == []
    async with serve_health(m, HOST, 0, access_log=True) as server:
        await http_get(server.port, "/readyz")
    (line,) = [r for r in caplog.records if "GET /readyz" in r.getMessage()]
    assert line.name == "fsm.health.access" and "503" in line.getMessage()
