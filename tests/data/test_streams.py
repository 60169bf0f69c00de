"""fsm.streams, pure: consumer buffers (conflation, drop-oldest, counts, gaps kept and merged)
and the registry (routing by generation and sub, one Gap per interruption, nothing duplicated or
out of order after resuming, what to re-subscribe when)."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.errors import GatewayError
from fsm.streams import (
    Bar,
    Buffer,
    Gap,
    Quote,
    Registry,
    StreamState,
    Subscribe,
    Trade,
    Unsubscribe,
    item_from_event,
)
from worker.market_protocol import ContractIdentity

T0 = dt.datetime(2026, 11, 25, 16, 0, tzinfo=dt.UTC)
AAPL = ContractIdentity(265598, "AAPL", "AAPL", "STK", "USD", "SMART", "NASDAQ", "NMS")


def at(s: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=s)


def quote(s: float, last: float = 100.0) -> Quote:
    return Quote(at(s), last - 0.01, last + 0.01, last, 100, 100, 100, 1000, False)


def bar(s: float) -> Bar:
    return Bar(at(s), 1, 2, 0.5, 1.5, 100, 1.2, 10)


def drain(b: Buffer | StreamState) -> list[Any]:
    buf = b.buffer if isinstance(b, StreamState) else b
    out = []
    while (e := buf.pop()) is not None:
        out.append(e)
    return out


# ---- buffers


def test_quotes_conflate_latest_wins_with_a_count() -> None:
    b = Buffer(1)
    for n in range(5):
        b.push(quote(n, 100 + n))
    assert drain(b) == [quote(4, 104)] and b.dropped == 4


def test_bars_drop_the_oldest_past_the_bound_and_gaps_are_never_dropped() -> None:
    b = Buffer(3)
    b.push(bar(0))
    b.push(bar(5), Gap(at(0), at(5), "worker_exited"))
    for s in (10, 15, 20):
        b.push(bar(s))
    assert drain(b) == [Gap(at(0), at(5), "worker_exited"), bar(10), bar(15), bar(20)]
    assert b.dropped == 2


def test_gaps_left_adjacent_by_drops_merge() -> None:
    b = Buffer(1)
    b.push(bar(0))
    b.push(bar(5), Gap(at(0), at(5), "peer_closed"))
    b.push(bar(9), Gap(at(5), at(9), "connectivity_lost"))
    assert drain(b) == [Gap(at(0), at(9), "peer_closed"), bar(9)] and b.dropped == 2


pushes = st.lists(st.tuples(st.booleans(), st.booleans()), max_size=60)  # (gap before?, pop after?)


@settings(max_examples=300, deadline=None)
@given(ops=pushes, capacity=st.integers(1, 6))
def test_buffer_keeps_order_bounds_and_counts(ops: list[tuple[bool, bool]], capacity: int) -> None:
    b = Buffer(capacity)
    out: list[Any] = []
    for n, (with_gap, pop) in enumerate(ops):
        b.push(bar(n), Gap(at(n - 0.5), at(n), "x") if with_gap else None)
        entries = list(b._entries)
        assert sum(1 for e in entries if not isinstance(e, Gap)) <= capacity
        assert not any(isinstance(x, Gap) and isinstance(y, Gap) for x, y in itertools.pairwise(entries))
        if pop and (e := b.pop()) is not None:
            out.append(e)
    out += drain(b)
    items = [e for e in out if not isinstance(e, Gap)]
    assert [i.time for i in items] == sorted({i.time for i in items})  # in order, never twice
    assert len(items) + b.dropped == len(ops)
    gaps = [e for e in out if isinstance(e, Gap)]
    assert len(gaps) <= sum(g for g, _ in ops)
    if any(g for g, _ in ops):
        assert gaps, "a gap is never lost"
    if ops:
        assert items[-1] == bar(len(ops) - 1)  # the newest is always delivered


# ---- events


def test_item_from_event_decodes_each_kind_and_refuses_the_rest() -> None:
    sub, q = item_from_event(
        "quote",
        {"sub": 3, "time": "2026-11-25T16:00:00+00:00", "bid": 1.0, "ask": 1.1, "last": None,
         "bid_size": 5.0, "ask_size": 6.0, "last_size": None, "volume": 10.0, "delayed": True},
    )  # fmt: skip
    assert sub == 3 and q == Quote(T0, 1.0, 1.1, None, 5.0, 6.0, None, 10.0, True)
    _, t = item_from_event(
        "trade", {"sub": 1, "time": "2026-11-25T16:00:00+00:00", "price": 1.5, "size": 100.0, "exchange": "X"}
    )
    assert t == Trade(T0, 1.5, 100.0, "X")
    for name, data in (
        ("quote", {"sub": 1}),
        ("bar", {"sub": 1, "time": "2026-11-25T16:00:00", "open": 1, "high": 1, "low": 1, "close": 1,
                 "volume": 1, "wap": 1, "count": 1}),
        ("ib_error", {}),
    ):  # fmt: skip
        with pytest.raises(ValueError):
            item_from_event(name, data)


# ---- registry


def subscribed(reg: Registry, gen: int, cmds: list[Any], subs: dict[int, int], next_sub: list[int]) -> None:
    """Play the worker: answer each Subscribe with a new sub id."""
    for c in cmds:
        if isinstance(c, Subscribe):
            next_sub[0] += 1
            subs[c.state.id] = next_sub[0]
            assert reg.on_subscribed(gen, c.state, next_sub[0], AAPL, False) == []


def test_resubscribe_after_a_new_session_after_1101_and_not_after_1102() -> None:
    reg = Registry()
    s = reg.open("bars_5s", {"symbol": "AAPL"})
    cmd = reg.subscribe_now(s, gen=1)
    assert cmd.params == {"stream": "bars_5s", "symbol": "AAPL"}
    reg.on_subscribed(1, s, 1, AAPL, False)
    assert reg.on_item(1, 1, bar(0)) and reg.on_item(1, 1, bar(5))
    reg.on_break(at(7), "connectivity_lost")  # 1100
    same = reg.resubscribe_plan(1, same_session=True)  # 1101: the old sub first
    assert [type(c) for c in same] == [Unsubscribe, Subscribe] and same[0] == Unsubscribe(1)
    assert not reg.on_item(1, 1, bar(10))  # the old sub feeds nothing any more
    reg.on_subscribed(1, s, 2, AAPL, False)
    assert reg.on_item(1, 2, bar(5)) is False  # replayed: at the last delivered time, discarded
    assert reg.on_item(1, 2, bar(15))
    reg.on_break(at(16), "worker_exited")
    fresh = reg.resubscribe_plan(2, same_session=False)  # a new worker: no unsubscribe to send
    assert [type(c) for c in fresh] == [Subscribe]
    assert not reg.on_item(1, 2, bar(20))  # the old generation is gone
    reg.on_subscribed(2, s, 1, AAPL, False)
    assert reg.on_item(2, 1, bar(25))
    assert drain(s) == [
        bar(0), bar(5), Gap(at(5), at(15), "connectivity_lost"), bar(15), Gap(at(15), at(25), "worker_exited"), bar(25)
    ]  # fmt: skip
    assert (s.gaps, s.restored, s.discarded, s.longest_gap) == (2, 2, 1, dt.timedelta(seconds=10))


def test_totals_never_go_down_when_a_stream_is_left() -> None:
    reg = Registry()
    s = reg.open("bars_5s", {"symbol": "AAPL"})
    reg.subscribe_now(s, gen=1)
    reg.on_subscribed(1, s, 1, AAPL, False)
    reg.on_item(1, 1, bar(0))
    reg.on_break(at(3), "worker_exited")
    reg.resubscribe_plan(2, same_session=False)
    reg.on_subscribed(2, s, 1, AAPL, False)
    reg.on_item(2, 1, bar(10))
    before = reg.totals()
    assert before == {
        "streams_open": 1, "streams_restored": 1, "stream_gaps": 1, "stream_items_dropped": 0, "longest_gap_s": 10.0
    }  # fmt: skip
    reg.close(s)
    assert reg.totals() == {**before, "streams_open": 0}  # Prometheus counters: never lower


def test_after_1102_the_same_sub_resumes_with_one_gap_and_nothing_is_resent() -> None:
    reg = Registry()
    s = reg.open("quotes", {"symbol": "AAPL"})
    reg.subscribe_now(s, 1)
    reg.on_subscribed(1, s, 1, AAPL, False)
    reg.on_item(1, 1, quote(0))
    drain(s)
    reg.on_break(at(1), "connectivity_lost")
    reg.on_break(at(2), "connectivity_lost")  # one interruption, however often it is reported
    reg.on_item(1, 1, quote(9))
    assert drain(s) == [Gap(at(0), at(9), "connectivity_lost"), quote(9)]


def test_items_before_the_subscribe_answer_are_kept_for_it_and_stale_answers_ignored() -> None:
    reg = Registry()
    s = reg.open("trades", {"symbol": "AAPL"})
    reg.subscribe_now(s, 1)
    t = Trade(at(1), 1.0, 100, "NASDAQ")
    assert not reg.on_item(1, 7, t)  # its answer is still being read
    reg.on_subscribed(1, s, 7, AAPL, False)
    assert drain(s) == [t]
    reg.on_break(at(2), "worker_exited")
    plan = reg.resubscribe_plan(2, same_session=False)
    assert plan == [Subscribe(s, {"stream": "trades", "symbol": "AAPL"})]
    assert reg.on_subscribed(1, s, 8, AAPL, False) == []  # a late answer from the dead worker
    assert s.pending == 2 and s.sub is None
    assert reg.resubscribe_plan(2, same_session=True) == []  # one subscribe in flight is enough


def test_refusals_end_the_stream_and_closing_unsubscribes() -> None:
    reg = Registry()
    s = reg.open("quotes", {"symbol": "MSFT"})
    reg.subscribe_now(s, 1)
    reg.on_subscribe_failed(1, s, GatewayError("no_market_data_permission", "no"), permanent=True)
    assert isinstance(s.error, GatewayError) and reg.resubscribe_plan(2, same_session=False) == []
    t = reg.open("quotes", {"symbol": "AAPL"})
    reg.subscribe_now(t, 2)
    reg.on_subscribed(2, t, 3, AAPL, True)
    assert t.delayed and t.contract == AAPL
    reg.on_stream_error(2, 3, GatewayError(10197, "competing session"), ends=True)
    assert isinstance(t.error, GatewayError) and t.sub is None
    u = reg.open("quotes", {"symbol": "AAPL"})
    reg.subscribe_now(u, 2)
    assert reg.close(u) == []  # nothing subscribed yet: its answer's sub is unsubscribed
    assert reg.on_subscribed(2, u, 4, AAPL, False) == [Unsubscribe(4)]
    v = reg.open("quotes", {"symbol": "AAPL"})
    reg.subscribe_now(v, 2)
    reg.on_subscribed(2, v, 5, AAPL, False)
    assert reg.close(v) == [Unsubscribe(5)] and not reg.on_item(2, 5, quote(1))


# One scenario: items, interruptions (with the kind of resumption) and re-sent old items.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("item"), st.floats(0.1, 5)),  # the next item, this much later
        st.tuples(st.just("break"), st.sampled_from(["new_session", "1101", "1102"])),
        st.tuples(st.just("replay"), st.integers(1, 4)),  # after resuming: re-send the last n
    ),
    max_size=50,
)


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(["quotes", "bars_5s", "trades"]), scenario=steps)
def test_one_gap_per_interruption_and_nothing_duplicated_or_reordered(kind: str, scenario: list[Any]) -> None:
    reg = Registry()
    s = reg.open(kind, {"symbol": "AAPL"}, capacity=10_000)  # nothing dropped: check everything
    gen, subs, next_sub = 1, {}, [0]
    subscribed(reg, gen, [reg.subscribe_now(s, gen)], subs, next_sub)
    now, sent, delivered_times = 0.0, [], []
    breaks_pending, expected_gaps, new_sub = False, 0, False
    for op, arg in scenario:
        if op == "item":
            now += arg
            item = Bar(at(now), 1, 1, 1, 1, 1, 1, 1) if kind != "quotes" else quote(now)
            sent.append(item)
            new_sub = False
            if reg.on_item(gen, subs[s.id], item):
                delivered_times.append(item.time)
                if breaks_pending:
                    expected_gaps += 1
                    breaks_pending = False
        elif op == "break":
            reg.on_break(at(now), "x")
            breaks_pending = breaks_pending or bool(delivered_times) or s.flowing
            if arg == "new_session":
                gen += 1
                subscribed(reg, gen, reg.resubscribe_plan(gen, same_session=False), subs, next_sub)
                new_sub = True
            elif arg == "1101":
                subscribed(reg, gen, reg.resubscribe_plan(gen, same_session=True), subs, next_sub)
                new_sub = True
        elif new_sub:  # a new sub's first items may repeat what was delivered: never twice
            for old in sent[-arg:]:
                assert not reg.on_item(gen, subs[s.id], old)
    out = drain(s)
    items = [e for e in out if not isinstance(e, Gap)]
    times = [i.time for i in items]
    assert times == sorted(set(times))
    gaps = [e for e in out if isinstance(e, Gap)]
    assert len(gaps) == s.gaps == expected_gaps
    for i, e in enumerate(out):
        if isinstance(e, Gap):
            assert i + 1 < len(out) and out[i + 1].time == e.until  # right before the item that ends it
            assert e.since <= e.until
            assert i == 0 or out[i - 1].time == e.since  # from the last item before it
