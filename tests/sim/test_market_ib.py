"""The simulator's market against the real, unmodified ib_async 2.1.0 over real TCP.

Every value the client receives is predicted independently from (seed, tick rate) with a fresh
PriceProcess; the simulator's clock is pinned to a Wednesday 11:00 New York time (and runs 10x
where a test waits on 5-second bars). Every test ends by checking that ib_async dropped or
misread no message (its decoder and wrapper log those as ERROR).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from zoneinfo import ZoneInfo

import pytest
from ib_async import IB, Contract, Stock, Ticker
from support.market import MarketRig, T, dropped_messages, market_rig

from gatewaysim.market import DELAY_NS
from gatewaysim.pacing import Limits
from gatewaysim.prices import NS, PriceProcess, Quote

pytestmark = [pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"])]

SEED = 7
CON_IDS = {"AAPL": 265598, "MSFT": 272093, "SPY": 756733}
NY = ZoneInfo("US/Eastern")


def stock(symbol: str) -> Stock:
    """A qualified stock, as a trader holds it after qualifyContracts (a fresh object each time)."""
    return Stock(symbol, "SMART", "USD", conId=CON_IDS[symbol])


def ticker_matches(t: Ticker, q: Quote, delayed: bool = False) -> None:
    assert (t.bid, t.bidSize, t.ask, t.askSize) == (q.bid, q.bid_size, q.ask, q.ask_size)
    assert (t.last, t.lastSize, t.volume) == (q.last, q.last_size, q.volume)
    assert t.marketDataType == (3 if delayed else 1)


async def frozen(rig: MarketRig) -> None:
    """Stop the farm (2103) and wait until the client has read the notice: every tick sent
    before it is then in the ticker, and nothing follows."""
    n = rig.codes().count(2103)
    rig.market.farm_outage()
    await rig.until(lambda: rig.codes().count(2103) > n)


async def test_qualify_a_stock_unknown_gets_200_and_ambiguity_needs_the_primary_exchange(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig() as rig:
        ib = rig.ib
        aapl, nope, dual, dual_nyse = (
            Stock("AAPL", "SMART", "USD"),
            Stock("NOPE", "SMART", "USD"),
            Stock("DUAL", "SMART", "USD"),
            Stock("DUAL", "SMART", "USD", primaryExchange="NYSE"),
        )
        assert await ib.qualifyContractsAsync(aapl, nope, dual, dual_nyse) == [aapl, None, None, dual_nyse]
        assert (aapl.conId, aapl.primaryExchange, aapl.localSymbol, aapl.tradingClass) == (
            265598,
            "NASDAQ",
            "AAPL",
            "NMS",
        )
        assert (dual_nyse.conId, dual_nyse.tradingClass) == (900001, "DUAL")
        assert [code for _, code, _ in rig.errors] == [200]
        both = await ib.reqContractDetailsAsync(Stock("DUAL", "SMART", "USD"))
        assert sorted(d.contract.primaryExchange for d in both) == ["NASDAQ", "NYSE"]
        [cd] = await ib.reqContractDetailsAsync(Stock("AAPL", "SMART", "USD"))
        assert (cd.longName, cd.minTick, cd.timeZoneId, cd.stockType) == (
            "APPLE INC",
            0.01,
            "US/Eastern",
            "COMMON",
        )
        assert cd.tradingHours.startswith("20261125:0400-20261125:2000;")
        assert cd.liquidHours.startswith("20261125:0930-20261125:1600;")
        assert [(t.tag, t.value) for t in cd.secIdList] == [("ISIN", "US0378331005")]
        assert (cd.minSize, cd.sizeIncrement, cd.suggestedSizeIncrement) == (0.0001, 0.0001, 100)
        assert "SMART" in cd.validExchanges.split(",") and cd.contract.exchange == "SMART"
        assert rig.market.counters.contract_details == 6
        # market data for an ambiguous contract is refused as IB does, with 200
        dual_unqualified = Contract(secType="STK", symbol="DUAL", exchange="SMART", currency="USD")
        ib.client.reqMktData(9999, dual_unqualified, "", False, False, [])  # IB.reqMktData wants a conId
        await rig.until(lambda: rig.codes().count(200) == 2)
        assert "ambiguous" in rig.errors[-1][2]
        assert dropped_messages(log_records) == []


async def test_ten_thousand_bars_in_one_request_with_format_date_2(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=4) as rig:
        bars = await rig.ib.reqHistoricalDataAsync(
            stock("AAPL"), "", "10000 S", "1 secs", "TRADES", useRTH=False, formatDate=2, timeout=T
        )
        assert len(bars) == 10_000
        end = int(rig.clock())
        # formatDate 2: epoch seconds, parsed to UTC datetimes, one per second up to now
        assert bars[-1].date == dt.datetime.fromtimestamp(end, dt.UTC)
        assert all(b.date.tzinfo is dt.UTC for b in bars)
        start = bars[0].date.timestamp()
        assert [int(b.date.timestamp()) for b in bars] == list(range(int(start), int(start) + 10_000))
        pp = PriceProcess(seed=SEED, tick_rate=4)
        predicted = pp.bars(265598, int(start) * NS, (end + 1) * NS, 1)
        for got, want in zip(bars[:-1], predicted[:-1], strict=True):  # the last one is still open
            assert (got.open, got.high, got.low, got.close) == (want.open, want.high, want.low, want.close)
            assert (got.volume, got.average, got.barCount) == (want.volume, want.wap, want.count)
        assert rig.market.counters.historical_bars == 10_000
        assert dropped_messages(log_records) == []


async def test_format_date_1_intraday_in_the_exchange_zone_and_daily_bars_as_dates(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=4) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=4)
        bars = await rig.ib.reqHistoricalDataAsync(
            stock("AAPL"), "", "1 D", "30 mins", "TRADES", useRTH=True, formatDate=1, timeout=T
        )
        day = dt.date(2026, 11, 25)
        assert [b.date for b in bars] == [
            dt.datetime.combine(day, dt.time(h, m), NY) for h, m in ((9, 30), (10, 0), (10, 30), (11, 0))
        ]
        assert all(b.date.tzinfo == NY for b in bars)
        first = pp.bar(265598, int(bars[0].date.timestamp()) * NS, int(bars[1].date.timestamp()) * NS)
        assert first is not None and (bars[0].open, bars[0].high, bars[0].low, bars[0].close) == (
            first.open,
            first.high,
            first.low,
            first.close,
        )
        assert bars[0].barCount == 30 * 60 * 4  # every tick of the half hour is a trade
        daily = await rig.ib.reqHistoricalDataAsync(
            stock("AAPL"), "", "1 M", "1 day", "MIDPOINT", useRTH=True, formatDate=2, timeout=T
        )
        assert all(type(b.date) is dt.date and b.date.weekday() < 5 for b in daily)
        assert daily[-1].date == day and len(daily) in (21, 22, 23)
        yesterday = daily[-2]
        rth = pp.bar(
            265598,
            int(dt.datetime.combine(yesterday.date, dt.time(9, 30), NY).timestamp()) * NS,
            int(dt.datetime.combine(yesterday.date, dt.time(16, 0), NY).timestamp()) * NS,
            "MIDPOINT",
        )
        assert rth is not None and (yesterday.open, yesterday.close, yesterday.volume) == (
            rth.open,
            rth.close,
            -1,
        )
        assert dropped_messages(log_records) == []


async def test_streaming_quotes_are_the_predicted_ones_and_a_farm_outage_stops_them(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=20)
        ticker = rig.ib.reqMktData(stock("AAPL"), "233")
        await rig.wait(lambda: (s := rig.market.snapshot()["subscriptions"]) != [] and s[0]["sent"] > 40)
        await frozen(rig)
        [stream] = rig.market.streams.values()
        sent = stream.sent
        q = pp.quote(265598, stream.last_tick * pp.tick_ns)  # type: ignore[attr-defined]
        ticker_matches(ticker, q)
        assert ticker.minTick == 0.01 and ticker.rtVolume == q.volume
        assert ticker.lastTimestamp == dt.datetime.fromtimestamp(q.time_ns // NS, dt.UTC)
        day = pp.bar(265598, int(dt.datetime(2026, 11, 25, tzinfo=NY).timestamp()) * NS, q.time_ns + 1)
        assert day is not None and (ticker.open, ticker.high, ticker.low) == (day.open, day.high, day.low)
        # the farm is down: the pump keeps running but sends nothing
        await rig.pumps(5)
        assert stream.sent == sent and rig.market.snapshot()["farm_down"] is True
        rig.market.farm_restored()
        await rig.wait(lambda: stream.sent > sent)
        assert rig.codes()[-2:] == [2103, 2104]
        # cancel: the line comes back, nothing more is sent
        rig.ib.cancelMktData(ticker.contract)
        await rig.wait(lambda: rig.market.streams == {})
        assert rig.market.lines.snapshot()["in_use"] == 0
        assert rig.market.snapshot()["subscriptions"] == []  # and the pump timer is off
        assert dropped_messages(log_records, cancelled=(stream.req_id,)) == []


async def test_a_snapshot_completes_with_tick_snapshot_end(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=20)
        before = pp.tick_index(round(rig.clock() * NS))
        [t] = await asyncio.wait_for(rig.ib.reqTickersAsync(stock("MSFT")), T)
        after = pp.tick_index(round(rig.clock() * NS))
        assert any(
            (t.bid, t.ask, t.last, t.volume) == (q.bid, q.ask, q.last, q.volume)
            for q in (pp.quote(272093, i * pp.tick_ns) for i in range(before, after + 1))
        )
        assert t.close > 0 and rig.market.counters.snapshots == 1
        assert rig.market.streams == {} and rig.market.lines.snapshot()["in_use"] == 0
        assert dropped_messages(log_records) == []


async def test_real_time_bars_every_five_seconds(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=4, speed=10) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=4)
        bars = rig.ib.reqRealTimeBars(stock("AAPL"), 5, "TRADES", False)
        mids = rig.ib.reqRealTimeBars(stock("SPY"), 5, "MIDPOINT", False)
        await rig.until(lambda: len(bars) >= 3 and len(mids) >= 3)
        times = [int(b.time.timestamp()) for b in bars]
        assert all(t % 5 == 0 for t in times) and times == list(range(times[0], times[0] + 5 * len(times), 5))
        for b in bars:
            want = pp.bar(265598, int(b.time.timestamp()) * NS, (int(b.time.timestamp()) + 5) * NS)
            assert want is not None
            assert (b.open_, b.high, b.low, b.close, b.volume, b.wap, b.count) == (
                want.open,
                want.high,
                want.low,
                want.close,
                want.volume,
                want.wap,
                want.count,
            )
        m = mids[0]
        want = pp.bar(756733, int(m.time.timestamp()) * NS, (int(m.time.timestamp()) + 5) * NS, "MIDPOINT")
        assert want is not None and (m.open_, m.close, m.volume) == (want.open, want.close, -1)
        rig.ib.cancelRealTimeBars(bars)
        await rig.wait(lambda: len(rig.market.streams) == 1)
        assert dropped_messages(log_records) == []


async def test_tick_by_tick_trades_follow_the_price_process(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=20)
        start = round(rig.clock() * NS)
        ticker = rig.ib.reqTickByTickData(stock("SPY"), "AllLast")
        got: list[tuple[float, float, str]] = []
        ticker.updateEvent += lambda t: got.extend((x.price, x.size, x.exchange) for x in t.tickByTicks)
        await rig.until(lambda: len(got) >= 30)
        trades = [
            (tr.price, float(tr.size), "ARCA") for tr in pp.trades(756733, start, round(rig.clock() * NS))
        ]
        assert any(trades[i : i + len(got)] == got for i in range(len(trades)))  # a contiguous run
        assert rig.market.tick_by_tick_slots.snapshot()["in_use"] == 1
        rig.ib.cancelTickByTickData(ticker.contract, "AllLast")
        await rig.wait(lambda: rig.market.streams == {})
        assert dropped_messages(log_records, cancelled=(ticker_req_id(rig.ib, ticker),)) == []


def ticker_req_id(ib: IB, ticker: Ticker) -> int:
    return next((r for r, t in ib.wrapper.reqId2Ticker.items() if t is ticker), -1)


async def test_keep_up_to_date_appends_and_replaces_the_open_bar(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=4, speed=10) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=4)
        bars = await rig.ib.reqHistoricalDataAsync(
            stock("AAPL"),
            "",
            "60 S",
            "5 secs",
            "TRADES",
            useRTH=False,
            formatDate=2,
            keepUpToDate=True,
            timeout=T,
        )
        n0 = len(bars)
        updates: list[bool] = []
        bars.updateEvent += lambda b, has_new_bar: updates.append(has_new_bar)
        await rig.until(lambda: updates.count(True) >= 2 and False in updates)
        assert len(bars) >= n0 + 2
        for b in bars[:-1]:  # every closed bar equals the prediction, updates included
            t = int(b.date.timestamp())
            want = pp.bar(265598, t * NS, (t + 5) * NS)
            assert want is not None and (b.open, b.high, b.low, b.close, b.volume) == (
                want.open,
                want.high,
                want.low,
                want.close,
                want.volume,
            )
        rig.ib.cancelHistoricalData(bars)
        await rig.wait(lambda: rig.market.streams == {})
        assert dropped_messages(log_records) == []


async def test_pacing_violations_get_162_and_are_counted(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=4) as rig:
        ib, c = rig.ib, stock("AAPL")

        async def small(duration: str) -> int:
            return len(await ib.reqHistoricalDataAsync(c, "", duration, "5 secs", "TRADES", False, timeout=T))

        assert await small("60 S") == 12
        assert await small("60 S") == 0  # identical within 15 s
        assert [await small(f"{n}0 S") for n in range(2, 6)] == [4, 6, 8, 10]
        assert await small("70 S") == 0  # the sixth for one contract within 2 s
        assert rig.codes() == [162, 162]
        assert "pacing violation" in rig.errors[-1][2]
        p = rig.market.snapshot()["pacing"]
        assert (p["requests"], p["identical"], p["same_contract"]) == (5, 1, 1)
        # daily bars are not paced, unless a violation is injected
        assert len(await ib.reqHistoricalDataAsync(c, "", "1 W", "1 day", "TRADES", True, timeout=T)) == 5
        rig.market.pacing_violation()
        assert len(await ib.reqHistoricalDataAsync(c, "", "1 W", "1 day", "TRADES", True, timeout=T)) == 0
        assert rig.codes()[-1] == 162 and rig.market.snapshot()["pacing"]["forced"] == 1
        assert dropped_messages(log_records) == []


async def test_market_data_line_budget(anyio_backend: str, log_records: list[logging.LogRecord]) -> None:
    async with market_rig(tick_rate=2) as rig:
        assert rig.market.limits.market_data_lines == 100  # IB's default
        rig.market.set_limits(Limits(market_data_lines=2))
        a, m = rig.ib.reqMktData(stock("AAPL")), rig.ib.reqMktData(stock("MSFT"))
        rig.ib.reqMktData(stock("SPY"))
        await rig.until(lambda: 101 in rig.codes())
        assert len(rig.market.streams) == 2 and rig.market.lines.snapshot() == {
            "limit": 2,
            "in_use": 2,
            "refused": 1,
        }
        await rig.until(lambda: a.last == a.last and m.last == m.last)  # both streams flow (not NaN)
        rig.ib.cancelMktData(a.contract)
        await rig.wait(lambda: len(rig.market.streams) == 1)
        spy = rig.ib.reqMktData(stock("SPY"))  # a freed line is usable again
        await rig.until(lambda: spy.last == spy.last)
        assert rig.codes() == [101]
        assert dropped_messages(log_records, cancelled=(ticker_req_id(rig.ib, a),)) == []


async def test_no_permission_is_354_and_delayed_data_is_10167_fifteen_minutes_old(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig(tick_rate=20) as rig:
        pp = PriceProcess(seed=SEED, tick_rate=20)
        rig.market.market_data_permission("MSFT", "none")
        rig.market.market_data_permission("AAPL", "delayed")
        [msft] = await asyncio.wait_for(rig.ib.reqTickersAsync(stock("MSFT")), T)  # 354 ends the snapshot
        assert msft.bid != msft.bid and rig.codes() == [354]
        rig.ib.reqMktData(stock("AAPL"))  # live requested, only delayed permitted
        await rig.until(lambda: rig.codes() == [354, 354])
        assert "Delayed market data is available" in rig.errors[-1][2]
        assert rig.market.streams == {} and rig.market.lines.snapshot()["in_use"] == 0
        rig.ib.reqMarketDataType(3)
        ticker = rig.ib.reqMktData(stock("AAPL"))
        await rig.until(lambda: 10167 in rig.codes())
        [stream] = rig.market.streams.values()
        await rig.wait(lambda: stream.sent > 20)
        await frozen(rig)
        q = pp.quote(265598, stream.last_tick * pp.tick_ns)  # type: ignore[attr-defined]
        ticker_matches(ticker, q, delayed=True)
        assert abs(q.time_ns - (round(rig.clock() * NS) - DELAY_NS)) < 5 * NS
        assert dropped_messages(log_records) == []


async def test_bad_requests_and_unknown_cancels_are_answered(
    anyio_backend: str, log_records: list[logging.LogRecord]
) -> None:
    async with market_rig() as rig:
        rig.ib.client.cancelMktData(4242)
        rig.ib.client.cancelHistoricalData(4343)
        rig.ib.client.reqMktData(4444, stock("AAPL"), "233,999", False, False, [])
        ok = rig.ib.reqMktData(stock("MSFT"), "100,165,236")  # accepted by IB; 236 is served
        await rig.until(lambda: len(rig.errors) == 3 and ok.shortable == 3.0)
        assert [(r, c) for r, c, _ in rig.errors] == [(4242, 300), (4343, 366), (4444, 321)]
        assert "Incorrect generic tick list of 999" in rig.errors[-1][2]
        assert [st.ins.symbol for st in rig.market.streams.values()] == ["MSFT"]  # 4444 never opened
        assert dropped_messages(log_records) == []
