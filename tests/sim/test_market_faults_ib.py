"""Connectivity and farm faults of the simulated market against the real ib_async 2.1.0.

1101 ("restored - data lost") ends every subscription as a real Gateway does: the client hears
nothing more on it until it requests again (trading-surface.md C.2); 1102 keeps them flowing. A
session that connects while the market data farm is down hears 2103 at its handshake.
"""

from __future__ import annotations

import logging

import pytest
from conftest import received
from ib_async import IB, Stock
from support.market import T, dropped_messages, market_rig, never_disconnecting_ib

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

AAPL = Stock("AAPL", "SMART", "USD", conId=265598)
SPY = Stock("SPY", "SMART", "USD", conId=756733)


async def test_1101_loses_every_subscription_and_a_request_again_flows(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        ib = rig.ib
        ticker = ib.reqMktData(AAPL)
        updates: list[float] = []
        ticker.updateEvent += lambda t: updates.append(t.last)
        await rig.until(lambda: len(updates) >= 3)
        [old] = rig.market.streams.values()
        rig.sim.connectivity_lost()
        await rig.until(lambda: 1100 in rig.codes())
        rig.sim.connectivity_restored(data_lost=True)
        await rig.until(lambda: 1101 in rig.codes())
        assert rig.market.streams == {} and rig.market.lines.snapshot()["in_use"] == 0
        n = len(updates)
        # a new subscription flows while the old one stays silent
        spy = ib.reqMktData(SPY)
        spy_updates: list[float] = []
        spy.updateEvent += lambda t: spy_updates.append(t.last)
        await rig.until(lambda: len(spy_updates) >= 5)
        await ib.reqCurrentTimeAsync()  # whatever was sent before this answer has been read
        assert len(updates) == n
        # ib_async's way to request again within the session: cancel (accepted quietly,
        # no 300), then reqMktData under a new reqId into the same Ticker
        ib.cancelMktData(AAPL)
        assert ib.reqMktData(AAPL) is ticker
        await rig.until(lambda: len(updates) >= n + 3)
        new = next(st for st in rig.market.streams.values() if st.ins.symbol == "AAPL")
        assert new.req_id != old.req_id and new.sent > 0
        assert rig.codes() == [1100, 1101]
        assert dropped_messages(log_records) == []


async def test_1102_keeps_the_subscriptions_flowing(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        rig.ib.reqMktData(AAPL)
        await rig.wait(lambda: any(st.sent > 0 for st in rig.market.streams.values()))
        [stream] = rig.market.streams.values()
        rig.sim.connectivity_lost()
        await rig.until(lambda: 1100 in rig.codes())
        sent = stream.sent
        await rig.pumps(3)
        assert stream.sent == sent  # nothing flows while IB's servers are unreachable
        rig.sim.connectivity_restored(data_lost=False)
        await rig.wait(lambda: stream.sent > sent)
        assert list(rig.market.streams.values()) == [stream] and rig.codes() == [1100, 1102]
        assert dropped_messages(log_records) == []


async def test_a_session_connecting_during_a_farm_outage_hears_2103(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig() as rig:
        rig.market.farm_outage()
        await rig.until(lambda: 2103 in rig.codes())

        async def connect(client_id: int) -> tuple[IB, list[int]]:
            ib, codes = never_disconnecting_ib(), []
            ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
            await ib.connectAsync("127.0.0.1", rig.sim.port, clientId=client_id, timeout=T)
            await received(ib, lambda: len(codes) >= 3)
            return ib, codes

        late, codes = await connect(2)
        assert codes == [2103, 2106, 2158]
        rig.market.farm_restored()
        await received(late, lambda: len(codes) == 4)
        assert codes[-1] == 2104
        _, after = await connect(3)
        assert after == [2104, 2106, 2158]
        assert dropped_messages(log_records) == []


async def test_a_red_gateway_pushes_nothing_to_its_live_sessions(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    # RED means the API layer answers nothing, market data pushes included: a client whose
    # stream kept ticking could never tell a RED Gateway from a healthy one.
    async with market_rig(tick_rate=20) as rig:
        ticker = rig.ib.reqMktData(AAPL)
        updates: list[float] = []
        ticker.updateEvent += lambda t: updates.append(t.last)
        await rig.until(lambda: len(updates) >= 3)
        rig.sim.go_red()
        await rig.pumps(1)  # a pump already under way when RED began may still be in flight
        n = len(updates)
        await rig.pumps(5)
        assert len(updates) == n
        assert dropped_messages(log_records) == []
