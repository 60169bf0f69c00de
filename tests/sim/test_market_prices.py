"""The instrument book and the seeded price process (pure; no wire).

Every bar is checked against the ticks it covers, one by one, so the fast range arithmetic in
gatewaysim.prices cannot drift from the path the streaming quotes follow.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaysim import instruments
from gatewaysim.prices import NS, UNIT_TICKS, PriceProcess

SEEDS = st.sampled_from([0, 1, 7])  # each seed builds its patterns once (cached)
CON_IDS = st.sampled_from([ins.con_id for ins in instruments.BOOK])
NOW_TICK = 7_184_301_460  # 2026-11-30 at 4 ticks/s
# a tick near a unit boundary, so ranges cross from one unit into the next
NEAR_BOUNDARY = st.builds(
    lambda unit, off: unit * UNIT_TICKS + off,
    st.integers(NOW_TICK // UNIT_TICKS - 50, NOW_TICK // UNIT_TICKS + 50),
    st.integers(-400, 400),
)


def test_lookup_finds_one_listing_per_unambiguous_contract() -> None:
    (aapl,) = instruments.lookup("AAPL", "STK", "USD", "SMART")
    assert (aapl.con_id, aapl.primary_exchange, aapl.trading_class, aapl.local_symbol) == (
        265598,
        "NASDAQ",
        "NMS",
        "AAPL",
    )
    assert instruments.lookup("aapl", exchange="island") == [aapl]
    assert instruments.lookup(con_id=265598) == [aapl] == [instruments.by_con_id(265598)]
    (spy,) = instruments.lookup("SPY", "STK", "USD", "SMART")
    assert spy.primary_exchange == "ARCA"


def test_lookup_ambiguity_unknowns_and_conflicts() -> None:
    both = instruments.lookup("DUAL", "STK", "USD", "SMART")
    assert sorted(i.primary_exchange for i in both) == ["NASDAQ", "NYSE"]
    (nyse,) = instruments.lookup("DUAL", "STK", "USD", "SMART", "NYSE")
    assert nyse.con_id == 900001
    assert instruments.lookup("NOPE", "STK", "USD", "SMART") == []
    assert instruments.lookup("AAPL", "STK", "EUR", "SMART") == []  # wrong currency
    assert instruments.lookup("AAPL", "STK", "USD", "LSE") == []  # not a valid exchange
    assert instruments.lookup("MSFT", con_id=265598) == []  # conId and symbol disagree
    with pytest.raises(KeyError, match="12345"):
        instruments.by_con_id(12345)


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, con_id=CON_IDS, tick=NEAR_BOUNDARY)
def test_quotes_are_a_pure_function_of_seed_conid_and_tick(seed: int, con_id: int, tick: int) -> None:
    fast, slow = PriceProcess(seed=seed, tick_rate=50), PriceProcess(seed=seed, tick_rate=4)
    # the tick rate maps time to tick indices; it never changes the path
    assert fast.last_ticks(con_id, tick) == slow.last_ticks(con_id, tick)
    assert fast.trade(con_id, tick).price == slow.trade(con_id, tick).price
    q1 = fast.quote(con_id, fast.tick_time_ns(tick) + fast.tick_ns - 1)
    q2 = PriceProcess(seed=seed, tick_rate=50).quote(con_id, fast.tick_time_ns(tick))
    assert q1 == q2 and q1.tick == tick
    ins = instruments.by_con_id(con_id)
    assert 0 < q1.bid < q1.ask and q1.bid <= q1.last <= q1.ask
    assert round(q1.ask - q1.bid, 6) == round(ins.spread_ticks * ins.min_tick, 6)
    for price in (q1.bid, q1.ask, q1.last):
        assert abs(price / ins.min_tick - round(price / ins.min_tick)) < 1e-6
    assert q1.last_size > 0 and q1.bid_size > 0 and q1.ask_size > 0 and q1.volume >= q1.last_size


def test_seeds_give_different_paths() -> None:
    a, b = PriceProcess(seed=0), PriceProcess(seed=1)
    ticks = range(NOW_TICK, NOW_TICK + 400)
    assert [a.last_ticks(265598, t) for t in ticks] != [b.last_ticks(265598, t) for t in ticks]
    # and prices actually move within a few minutes, in both directions
    path = [a.last_ticks(265598, t) for t in ticks]
    assert max(path) > path[0] or min(path) < path[0]


@settings(max_examples=60, deadline=None)
@given(seed=SEEDS, con_id=CON_IDS, tick=NEAR_BOUNDARY, length=st.integers(1, 1200))
def test_a_bar_is_exactly_the_ticks_it_covers(seed: int, con_id: int, tick: int, length: int) -> None:
    pp = PriceProcess(seed=seed, tick_rate=10)
    start, end = pp.tick_time_ns(tick), pp.tick_time_ns(tick + length)
    trades = list(pp.trades(con_id, start, end))
    assert [t.tick for t in trades] == list(range(tick, tick + length))
    bar = pp.bar(con_id, start, end, "TRADES")
    assert bar is not None
    prices = [t.price for t in trades]
    assert (bar.open, bar.high, bar.low, bar.close) == (prices[0], max(prices), min(prices), prices[-1])
    assert bar.volume == sum(t.size for t in trades) and bar.count == length
    assert bar.wap == pytest.approx(sum(t.price * t.size for t in trades) / bar.volume, abs=1e-6)
    quotes = [pp.quote(con_id, t.time_ns) for t in trades]
    for what, series in (
        ("BID", [q.bid for q in quotes]),
        ("ASK", [q.ask for q in quotes]),
        ("MIDPOINT", [(q.bid + q.ask) / 2 for q in quotes]),
    ):
        b = pp.bar(con_id, start, end, what)
        assert b is not None and (b.volume, b.wap, b.count) == (-1, -1.0, -1)
        assert (b.open, b.high, b.low, b.close) == pytest.approx(
            (series[0], max(series), min(series), series[-1]), abs=1e-6
        )
    ba = pp.bar(con_id, start, end, "BID_ASK")
    assert ba is not None
    assert ba.open == pytest.approx(sum(q.bid for q in quotes) / length, abs=1e-6)
    assert ba.close == pytest.approx(sum(q.ask for q in quotes) / length, abs=1e-6)
    assert (ba.high, ba.low) == (max(q.ask for q in quotes), min(q.bid for q in quotes))


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, con_id=CON_IDS, minute=st.integers(0, 60 * 24 * 30))
def test_bigger_bars_aggregate_the_smaller_ones(seed: int, con_id: int, minute: int) -> None:
    pp = PriceProcess(seed=seed, tick_rate=4)
    start = (1_796_000_000 // 60 * 60 + minute * 60) * NS
    (minute_bar,) = pp.bars(con_id, start, start + 60 * NS, 60)
    fives = pp.bars(con_id, start, start + 60 * NS, 5)
    assert [b.start_ns for b in fives] == [start + 5 * NS * i for i in range(12)]
    assert minute_bar.open == fives[0].open and minute_bar.close == fives[-1].close
    assert minute_bar.high == max(b.high for b in fives) and minute_bar.low == min(b.low for b in fives)
    assert minute_bar.volume == sum(b.volume for b in fives)
    assert minute_bar.count == sum(b.count for b in fives) == 240
    vwap = sum(b.wap * b.volume for b in fives) / minute_bar.volume
    assert minute_bar.wap == pytest.approx(vwap, abs=1e-5)
    # the quote's day volume grows by exactly the traded size between two ticks
    q0 = pp.quote(con_id, start)
    q1 = pp.quote(con_id, start + pp.tick_ns)
    if q1.volume > q0.volume:  # not across local midnight
        assert q1.volume - q0.volume == q1.last_size


def test_slow_tick_rates_leave_empty_bars_out() -> None:
    pp = PriceProcess(seed=3, tick_rate=0.1)  # one tick every 10 s
    start = 1_796_000_000 * NS
    bars = pp.bars(265598, start, start + 60 * NS, 5)
    assert len(bars) == 6 and all(b.count == 1 for b in bars)
    assert all(b.start_ns % (10 * NS) == 0 for b in bars)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="tick_rate"):
        PriceProcess(tick_rate=0)
    with pytest.raises(TypeError, match="seed"):
        PriceProcess(seed="1")  # type: ignore[arg-type]
    pp = PriceProcess()
    with pytest.raises(ValueError, match="what_to_show"):
        pp.bar(265598, 0, NS, "OPTION_IMPLIED_VOLATILITY")
    with pytest.raises(ValueError, match="bar_seconds"):
        pp.bars(265598, 0, NS, 0)
    with pytest.raises(KeyError, match="conId 1"):
        pp.quote(1, 0)
