"""GatewaySim against the real, unmodified ib_async 2.1.0 over real TCP.

ib_async needs asyncio, so these run the simulator on the asyncio backend in the test's loop,
except the threaded test, which serves from trio in another thread. Nothing here calls
disconnect(): each IB's disconnect paths are made inert (ib_async itself calls them on a failed
connect), and sessions end when the simulator closes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from ib_async import IB, Forex
from support.market import dropped_messages

from gatewaysim import Faults, GatewaySim, running_in_thread, wire
from gatewaysim.accounts import Position, start_positions
from gatewaysim.instruments import MAX_HOLDINGS, synthetic_holding

pytestmark = pytest.mark.anyio
asyncio_only = pytest.mark.parametrize("anyio_backend", ["asyncio"])

T = 3.0
N_POSITIONS = 9_000  # a large answer without thousands of accounts


def new_ib() -> IB:
    """An IB that never disconnects: sessions here end when the simulator closes them."""
    ib = IB()
    ib.disconnect = lambda *a, **k: None  # type: ignore[method-assign]
    ib.client.disconnect = lambda *a, **k: None  # type: ignore[method-assign]
    return ib


async def handshake_and_close(port: int, client_id: int) -> None:
    """A raw client that completes the handshake and closes its socket at once."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(wire.client_hello() + wire.start_api(client_id))
    buf = b""
    async with asyncio.timeout(T):
        while b"secdefnj" not in buf:  # the last farm notice after the handshake
            chunk = await reader.read(4096)
            assert chunk, "server closed during the handshake"
            buf += chunk
    writer.close()
    await writer.wait_closed()


def error_codes(ib: IB) -> asyncio.Queue[int]:
    q: asyncio.Queue[int] = asyncio.Queue()
    ib.errorEvent += lambda req_id, code, msg, contract: q.put_nowait(code)
    return q


async def next_codes(q: asyncio.Queue[int], n: int, timeout: float = T) -> list[int]:
    async with asyncio.timeout(timeout):
        return [await q.get() for _ in range(n)]


@asyncio_only
async def test_connect_default_and_readonly_return_the_accounts(anyio_backend: str) -> None:
    async with GatewaySim(accounts=("DU111", "DU222")) as sim:
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
        assert ib.isConnected() and ib.managedAccounts() == ["DU111", "DU222"]
        assert ib.client.serverVersion() == 178
        ro = new_ib()
        await ro.connectAsync("127.0.0.1", sim.port, clientId=2, timeout=T, readonly=True)
        assert ro.managedAccounts() == ["DU111", "DU222"]
        assert sim.counters.handshakes == 2 and sim.client_ids_seen == {1, 2}
        assert sorted(s.client_id for s in sim.sessions) == [1, 2]


@asyncio_only
async def test_requests_return_the_sims_data(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
        # the start-up sync filled these with realistic rows
        assert {p.symbol for p in (i.contract for i in ib.portfolio())} == {"AAPL", "MSFT"}
        assert any(v.tag == "NetLiquidation" for v in ib.accountValues())
        assert [f.execution.side for f in ib.fills()] == ["BOT"]

        now = await ib.reqCurrentTimeAsync()
        assert abs(now.timestamp() - time.time()) < 5
        positions = await ib.reqPositionsAsync()
        assert {(p.account, p.contract.symbol, p.position, p.avgCost) for p in positions} == {
            ("DU1234567", "AAPL", 100.0, 150.25),
            ("DU1234567", "MSFT", 50.0, 310.10),
        }
        summary = {v.tag: v.value for v in await ib.accountSummaryAsync()}
        assert summary["NetLiquidation"] == "100000.00"
        assert summary["AccountType"] == "INDIVIDUAL"
        bars = await ib.reqHistoricalDataAsync(  # what ib_async's Watchdog probes with
            Forex("EURUSD"), "", "30 S", "5 secs", "MIDPOINT", False
        )
        assert len(bars) == 6
        assert sim.counters.requests_served >= 10


@asyncio_only
async def test_same_client_id_gets_326_and_the_first_keeps_working(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        first = new_ib()
        await first.connectAsync("127.0.0.1", sim.port, clientId=5, timeout=T)
        second = new_ib()
        codes = error_codes(second)
        with pytest.raises(TimeoutError):
            await second.connectAsync("127.0.0.1", sim.port, clientId=5, timeout=1)
        assert await next_codes(codes, 1) == [326]
        assert sim.counters.sent_326 == 1
        assert await first.reqCurrentTimeAsync()
        assert first.isConnected()


@asyncio_only
async def test_client_id_hold_rejects_until_expiry(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(client_id_hold=0.6)) as sim:
        await handshake_and_close(sim.port, 9)
        await sim.wait_until(lambda s: 9 in s.held_client_ids, T)
        rejected = new_ib()
        codes = error_codes(rejected)
        with pytest.raises(TimeoutError):
            await rejected.connectAsync("127.0.0.1", sim.port, clientId=9, timeout=0.3)
        assert await next_codes(codes, 1) == [326]
        await sim.wait_until(lambda s: 9 not in s.held_client_ids, T)
        later = new_ib()
        await later.connectAsync("127.0.0.1", sim.port, clientId=9, timeout=T)
        assert later.isConnected()


@asyncio_only
async def test_fast_close_turns_red_and_restart_clears_it(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(red_on_fast_close=2.0)) as sim:
        await handshake_and_close(sim.port, 1)  # closed well within the window
        await sim.wait_until(lambda s: not s.green, T)
        assert sim.counters.fast_closes == 1

        blocked = new_ib()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await blocked.connectAsync("127.0.0.1", sim.port, clientId=2, timeout=1)
        assert 1.0 <= time.monotonic() - t0 < 2.0  # TCP accepted, the handshake hung

        sim.restart()
        ok = new_ib()
        await ok.connectAsync("127.0.0.1", sim.port, clientId=2, timeout=T)
        assert ok.isConnected() and sim.green


async def timed_connect(port: int, client_id: int, **kw: Any) -> float:
    ib = new_ib()
    t0 = time.monotonic()
    await ib.connectAsync("127.0.0.1", port, clientId=client_id, **kw)
    assert ib.isConnected()
    return time.monotonic() - t0


@asyncio_only
async def test_handshake_delay_and_stall_sync_stretch_the_connect(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(handshake_delay=0.4)) as sim:
        delayed = await timed_connect(sim.port, 1, timeout=T)
        assert 0.4 <= delayed < 0.4 + 1.0
        sim.handshake_delay(0)
        sim.stall_sync("executions")  # ib_async waits one timeout for it, then goes on
        stalled = await timed_connect(sim.port, 2, timeout=0.5)
        assert 0.5 <= stalled < 0.5 + 1.0
        sim.stall_sync("positions")  # requested in the first phase: +1 timeout there
        stalled = await timed_connect(sim.port, 3, timeout=0.5)
        assert 0.5 <= stalled < 0.5 + 1.0
        assert sim.counters.requests_stalled == 2


@asyncio_only
async def test_connectivity_codes_reach_error_event(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
        codes = error_codes(ib)
        sim.connectivity_lost()
        assert await next_codes(codes, 1) == [1100]
        sim.connectivity_restored(data_lost=False)
        assert await next_codes(codes, 1) == [1102]
        sim.connectivity_restored(data_lost=True)
        sim.farm_flap()
        assert await next_codes(codes, 3) == [1101, 2103, 2104]


@asyncio_only
async def test_older_server_version_still_delivers_errors(anyio_backend: str) -> None:
    async with GatewaySim(server_version=165) as sim:
        ib = new_ib()
        codes = error_codes(ib)
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
        assert ib.client.serverVersion() == 165
        assert await next_codes(codes, 3) == [2104, 2106, 2158]


def test_sim_serves_from_trio_in_a_thread() -> None:
    with running_in_thread(backend="trio", accounts=("DU9",)) as sim:

        async def client() -> None:
            ib = new_ib()
            await ib.connectAsync("127.0.0.1", sim.port, clientId=4, timeout=T)
            assert ib.managedAccounts() == ["DU9"]
            assert await ib.reqCurrentTimeAsync()

        asyncio.run(client())
        snap = sim.snapshot()
        assert snap["green"] and snap["counters"]["handshakes"] == 1
        assert [s["client_id"] for s in snap["sessions"]] == [4]
        sim.go_red()
        sim.wait_until(lambda s: not s.green, T)
        assert sim.call("green") is False
        sim.restart()
        assert sim.snapshot()["green"]


@asyncio_only
async def test_positions_books_n_rows_in_the_first_account(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with GatewaySim(accounts=("DU1", "DU2"), positions=N_POSITIONS) as sim:
        ib = new_ib()
        await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T, account="DU1")
        rows = await asyncio.wait_for(ib.reqPositionsAsync(), T)
        mine = [p for p in rows if p.account == "DU1"]
        assert len(mine) == N_POSITIONS and len(rows) == N_POSITIONS + 2  # DU2: AAPL and MSFT
        assert [p.contract.symbol for p in mine[:3]] == ["AAPL", "MSFT", "H00001"]
        assert len({p.contract.conId for p in mine}) == N_POSITIONS
        last = synthetic_holding(N_POSITIONS - 2)
        p = mine[-1]
        assert (p.contract.conId, p.contract.symbol, p.contract.secType, p.contract.tradingClass) == (
            last.con_id,
            "H08998",
            "STK",
            "H08998",
        )
        assert p.position == 100.0 * (1 + (N_POSITIONS - 2) % 9)
        assert p.avgCost == round(last.base_price * 0.95, 4)
        assert len(ib.portfolio("DU1")) == N_POSITIONS  # the start-up sync's account updates too
        assert sim.snapshot()["positions"] == {"DU1": N_POSITIONS, "DU2": 2}
        assert dropped_messages(log_records) == []


def test_positions_counts_are_checked_and_small_counts_keep_the_standard_rows_first() -> None:
    assert [p.ins.symbol for p in start_positions(None)] == ["AAPL", "MSFT"]
    assert [p.ins.symbol for p in start_positions(0)] == []
    assert [p.ins.symbol for p in start_positions(1)] == ["AAPL"]
    assert [p.ins.symbol for p in start_positions(4)] == ["AAPL", "MSFT", "H00001", "H00002"]
    assert start_positions(3)[2] == Position(synthetic_holding(1), 200.0, 84.7305)  # 95% of 89.19
    for bad in (-1, MAX_HOLDINGS + 1, True, 2.0):
        with pytest.raises(ValueError, match="positions must be a count"):
            GatewaySim(positions=bad)  # type: ignore[arg-type]
