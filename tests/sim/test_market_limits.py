"""IB's limits (pacing, budgets), historical bar shaping and version-dependent contract details,
as pure units. The contractDetails rows are decoded by ib_async's own Decoder at each version."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ib_async.decoder import Decoder

from gatewaysim import history, wire
from gatewaysim.handlers_market import contract_details
from gatewaysim.instruments import by_con_id
from gatewaysim.pacing import Budget, HistoricalPacing, Limits
from gatewaysim.prices import NS, PriceProcess
from gatewaysim.refusals import Refused

NY = ZoneInfo("US/Eastern")
AAPL = by_con_id(265598)
EUR = by_con_id(12087792)


def ny_ns(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=NY).timestamp()) * NS


# ------------------------------------------------------------------------------------------ pacing


def test_identical_requests_within_15_s_violate() -> None:
    p = HistoricalPacing()
    assert p.check(0.0, "req", "aapl", 5) is None
    assert p.check(14.9, "req", "aapl", 5) == "identical request within 15 s"
    assert p.check(15.0, "req", "aapl", 5) is None
    assert (p.counters.requests, p.counters.identical) == (2, 1)


def test_six_for_one_contract_within_2_s_violate_and_bid_ask_counts_twice() -> None:
    p = HistoricalPacing()
    assert [p.check(0.1 * i, i, "aapl", 30) for i in range(5)] == [None] * 5
    assert p.check(0.5, 5, "aapl", 30) == "6 requests for one contract within 2 s"
    assert p.check(0.5, 6, "msft", 30) is None  # another contract is fine
    assert p.check(2.01, 7, "aapl", 30) is None  # the first has left the 2 s window
    q = HistoricalPacing()
    assert [q.check(0.0, i, "spy", 5, weight=2) for i in range(2)] == [None, None]
    assert q.check(0.1, 9, "spy", 5, weight=2) == "6 requests for one contract within 2 s"


def test_more_than_60_in_ten_minutes_violate() -> None:
    p = HistoricalPacing()
    assert all(p.check(3.0 * i, i, i, 1) is None for i in range(60))
    assert p.check(179.0, 60, 60, 1) == "more than 60 requests in 600 s"
    assert p.check(600.0, 61, 61, 1) is None  # the first one aged out
    assert p.counters.too_many == 1


def test_bars_above_30_s_and_disabled_limits_are_exempt_but_forced_violations_are_not() -> None:
    p = HistoricalPacing()
    assert all(p.check(0.0, "same", "aapl", 60) is None for _ in range(10))
    assert p.counters.exempt == 10 and p.counters.requests == 0
    off = HistoricalPacing(Limits(enabled=False))
    assert all(off.check(0.0, "same", "aapl", 1) is None for _ in range(10))
    off.forced_violations = 1
    assert off.check(0.0, "x", "y", 3600) == "forced"
    assert off.check(0.0, "x", "y", 3600) is None and off.snapshot()["forced"] == 1


def test_budget_and_limits() -> None:
    assert (Limits().market_data_lines, Limits().max_open_historical, Limits().window_max) == (100, 50, 60)
    with pytest.raises(ValueError, match="market_data_lines"):
        Limits(market_data_lines=0)
    b = Budget(2)
    assert b.acquire("a") and b.acquire("b") and b.acquire("a")  # holding twice is one line
    assert not b.acquire("c") and b.snapshot() == {"limit": 2, "in_use": 2, "refused": 1}
    b.release("a")
    assert b.acquire("c")
    assert Budget(1, enabled=False).acquire("x") and Budget(0, enabled=False).acquire("y")


# ------------------------------------------------------------------------------------------ history


def test_bar_sizes_and_durations() -> None:
    assert history.bar_seconds("1 secs") == 1 and history.bar_seconds("1 month") > history.bar_seconds(
        "1 week"
    )
    with pytest.raises(Refused, match="Legal ones are: 1 secs, 5 secs") as e:
        history.bar_seconds("1 sec")
    assert e.value.code == 321
    wed = ny_ns(2026, 11, 25, 11, 0)
    assert history.start_of(AAPL, "3600 S", wed, False) == wed - 3600 * NS
    assert history.start_of(AAPL, "1 D", wed, True) == ny_ns(2026, 11, 25)
    mon = ny_ns(2026, 11, 30, 9, 0)  # before the open: the last session was Friday's
    assert history.start_of(AAPL, "1 D", mon, True) == ny_ns(2026, 11, 27)
    assert history.start_of(AAPL, "2 D", mon, False) == ny_ns(2026, 11, 27)  # 04:00 had begun
    assert history.start_of(AAPL, "1 W", wed, True) == wed - 7 * 86400 * NS
    assert history.start_of(AAPL, "1 M", ny_ns(2026, 3, 31, 12, 0), True) == ny_ns(2026, 2, 28, 12, 0)
    assert history.start_of(AAPL, "2 Y", wed, True) == ny_ns(2024, 11, 25, 11, 0)
    for bad in ("1", "0 D", "1 X", "D 1"):
        with pytest.raises(Refused, match="duration"):
            history.start_of(AAPL, bad, wed, True)


def test_end_date_time_forms() -> None:
    now = ny_ns(2026, 11, 25, 11, 0)
    assert history.parse_end("", NY, now) == now
    assert history.parse_end("20261125 16:00:00 UTC", NY, now) == ny_ns(2026, 11, 25, 11, 0)
    assert history.parse_end("20261125-16:00:00", NY, now) == ny_ns(2026, 11, 25, 11, 0)
    assert history.parse_end("20261125 11:00:00", NY, now) == now  # no zone: the exchange's
    assert history.parse_end("20261125 11:00:00 US/Eastern", NY, now) == now
    assert history.parse_end("20261124", NY, now) == ny_ns(2026, 11, 24, 23, 59, 59)
    for bad in ("yesterday", "20261125 11:00:00 Mars/Base", "20261345 11:00:00"):
        with pytest.raises(Refused, match="End date"):
            history.parse_end(bad, NY, now)


def test_sessions_skip_weekends_except_for_always_open_instruments() -> None:
    fri, mon = dt.date(2026, 11, 27), dt.date(2026, 11, 30)
    days = [d for d, _, _ in history.sessions(AAPL, True, fri, mon)]
    assert days == [fri, mon]
    [(_, s0, s1)] = history.sessions(AAPL, True, fri, fri)
    assert (s0, s1) == (ny_ns(2026, 11, 27, 9, 30), ny_ns(2026, 11, 27, 16, 0))
    assert len(list(history.sessions(EUR, True, fri, mon))) == 4
    assert history.trading_hours(AAPL, False, fri) == (
        "20261127:0400-20261127:2000;20261128:CLOSED;20261129:CLOSED"
    )
    assert history.trading_hours(EUR, True, fri, days=1) == "20261127:0000-20261128:0000"


def test_intraday_bars_are_clipped_to_the_session_and_dated_in_the_exchange_zone() -> None:
    pp = PriceProcess(seed=1, tick_rate=2)
    end = ny_ns(2026, 11, 25, 11, 15)
    q = history.Query(AAPL, end, history.start_of(AAPL, "1 D", end, True), 3600, "TRADES", True, 1)
    bars = history.bars(pp, q)
    assert [history.format_bar_date(q, b.start_ns) for b in bars] == [
        "20261125 09:30:00 US/Eastern",
        "20261125 10:00:00 US/Eastern",
        "20261125 11:00:00 US/Eastern",
    ]
    assert bars[0] == pp.bar(265598, ny_ns(2026, 11, 25, 9, 30), ny_ns(2026, 11, 25, 10, 0))
    assert bars[-1].count == 15 * 60 * 2  # the open bar runs up to the end
    fmt2 = history.Query(AAPL, end, q.start_ns, 3600, "TRADES", True, 2)
    assert history.format_bar_date(fmt2, bars[0].start_ns) == str(ny_ns(2026, 11, 25, 9, 30) // NS)


def test_daily_weekly_and_monthly_bars_aggregate_their_sessions() -> None:
    pp = PriceProcess(seed=1, tick_rate=0.5)
    end = ny_ns(2026, 11, 25, 11, 0)
    start = history.start_of(AAPL, "1 M", end, True)
    daily = history.bars(pp, history.Query(AAPL, end, start, 86400, "TRADES", True, 1))
    weekly = history.bars(pp, history.Query(AAPL, end, start, 7 * 86400, "TRADES", True, 1))
    monthly = history.bars(pp, history.Query(AAPL, end, start, 31 * 86400, "TRADES", True, 2))
    assert sum(b.volume for b in daily) == sum(b.volume for b in weekly) == sum(b.volume for b in monthly)
    assert max(b.high for b in daily) == max(b.high for b in weekly) == max(b.high for b in monthly)
    assert daily[0].open == weekly[0].open == monthly[0].open and daily[-1].close == monthly[-1].close
    q = history.Query(AAPL, end, start, 86400, "TRADES", True, 2)
    assert history.format_bar_date(q, daily[-1].start_ns) == "20261125"  # dates for daily bars, either format
    assert [dt.datetime.fromtimestamp(b.start_ns // NS, NY).weekday() for b in weekly[1:]] == [0] * (
        len(weekly) - 1
    )
    assert len(monthly) == 2  # late October and November


# ------------------------------------------------------------------------------------------ versions


class _Capture:
    def __init__(self) -> None:
        self.details: list[object] = []

    def contractDetails(self, req_id: int, cd: object) -> None:
        self.details.append(cd)


@pytest.mark.parametrize("version", [157, 163, 164, 178])
def test_contract_details_follow_the_negotiated_version(version: int) -> None:
    """ib_async decodes the row at every version it can negotiate, nothing shifted."""
    frame = contract_details(version, 7, AAPL, "SMART", dt.date(2026, 11, 25))
    fields = wire.decode_fields(frame[4:])
    # 42 at 164+ (appendix 3); below: + version + mdSizeMultiplier - the three size rules (+1 at 163)
    assert len(fields) == {157: 41, 163: 42, 164: 42, 178: 42}[version]
    capture = _Capture()
    decoder = Decoder(capture, version)  # type: ignore[arg-type]
    decoder.interpret(fields)
    [cd] = capture.details
    assert (cd.contract.conId, cd.contract.primaryExchange, cd.longName) == (265598, "NASDAQ", "APPLE INC")  # type: ignore[attr-defined]
    assert cd.stockType == "COMMON" and cd.timeZoneId == "US/Eastern"  # type: ignore[attr-defined]
    assert cd.suggestedSizeIncrement == (100 if version >= 163 else 0)  # type: ignore[attr-defined]
    assert cd.minSize == (0.0001 if version >= 164 else 0)  # type: ignore[attr-defined]
