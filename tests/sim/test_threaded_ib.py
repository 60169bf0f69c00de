"""ThreadedSim forwards the market's operations to the simulator's own thread, as worker-level
tests drive them, and a real ib_async client hears their effect."""

from __future__ import annotations

import asyncio

from conftest import received
from ib_async import Stock
from support.market import T, never_disconnecting_ib

from gatewaysim import running_in_thread
from gatewaysim.pacing import Limits


def stock(symbol: str, con_id: int) -> Stock:
    return Stock(symbol, "SMART", "USD", conId=con_id)


def test_threaded_sim_forwards_the_market_operations() -> None:
    with running_in_thread(tick_rate=20) as sim:

        async def client() -> None:
            ib, codes = never_disconnecting_ib(), []
            ib.errorEvent += lambda req_id, code, msg, contract: codes.append(code)
            await ib.connectAsync("127.0.0.1", sim.port, clientId=1, timeout=T)
            await received(ib, lambda: len(codes) == 3)  # the farm notices
            del codes[:]

            sim.set_limits(Limits(market_data_lines=1))
            aapl = ib.reqMktData(stock("AAPL", 265598))
            ib.reqMktData(stock("MSFT", 272093))
            await received(ib, lambda: codes == [101] and aapl.last == aapl.last)

            sim.market_data_permission("SPY", "none")
            [spy] = await asyncio.wait_for(ib.reqTickersAsync(stock("SPY", 756733)), T)
            assert codes[-1] == 354 and spy.bid != spy.bid

            sim.farm_outage()
            await received(ib, lambda: codes[-1] == 2103)
            sim.farm_restored()
            await received(ib, lambda: codes[-1] == 2104)

            sim.pacing_violation()
            bars = await ib.reqHistoricalDataAsync(
                stock("AAPL", 265598), "", "1 W", "1 day", "TRADES", True, timeout=T
            )
            assert len(bars) == 0
            await received(ib, lambda: codes[-1] == 162)

            market = sim.snapshot()["market"]
            assert [s["symbol"] for s in market["subscriptions"]] == ["AAPL"]
            assert market["permissions"] == {"SPY/756733": "none"} and market["lines"]["limit"] == 1
            assert market["pacing"]["forced"] == 1
            sim.data_lost()
            assert sim.snapshot()["market"]["subscriptions"] == []
            assert codes == [101, 354, 2103, 2104, 162]

        asyncio.run(client())
