"""The data commands through a real `python -m worker`, real ib_async and real TCP to gatewaysim.

Every value is predicted from the simulator's seeded price process or its account book: the
contract identities, the bars of a qualified stock, the quotes and trades of a subscription, the
snapshot. The errors are the ones a trader meets: unknown and ambiguous symbols, no permission,
delayed data, the line budget, IB's historical pacing (refused at once, or kept so that a burst
never provokes a 162), and a fill landing between the snapshot's two reads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from typing import Any

import pytest
from ib_async import Contract, LimitOrder
from support.data import AAPL, ACCOUNT, CLIENT_ID, MSFT, DataSim, event_fields, start_worker
from support.market import never_disconnecting_ib
from support.worker_process import WorkerProcess

from gatewaysim import registry as sim_registry
from gatewaysim import wire
from gatewaysim.market import Market
from gatewaysim.prices import NS
from worker.market_protocol import DataCode
from worker.protocol import Code, Event, Response

IDENTITY_AAPL = {
    "con_id": AAPL,
    "symbol": "AAPL",
    "local_symbol": "AAPL",
    "sec_type": "STK",
    "currency": "USD",
    "exchange": "SMART",
    "primary_exchange": "NASDAQ",
    "trading_class": "NMS",
}


def error_of(resp: Response) -> tuple[str, int | None, str]:
    assert not resp.ok and resp.error is not None, resp
    return resp.error.code, resp.error.ib_code, resp.error.message


def collect(w: WorkerProcess, name: str, sub: int, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first n events `name` for `sub`, in the order the worker wrote them."""
    seen: set[int] = set()
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout

    def new(e: Event) -> bool:
        return e.event == name and e.data.get("sub") == sub and id(e) not in seen

    while len(out) < n:
        e = w.wait_event_where(new, max(0.0, deadline - time.monotonic()))
        seen.add(id(e))
        out.append(e.data)
    return out


def when(iso: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(iso)
    assert t.tzinfo is not None, iso
    return t


# ---- qualify


def test_qualify_answers_the_identity_and_caches_it(dsim: DataSim, worker: WorkerProcess) -> None:
    r = worker.call("qualify", symbol="AAPL")
    assert r.ok and r.data == IDENTITY_AAPL
    asked = dsim.market_snapshot()["counters"]["contract_details"]
    again = worker.call("qualify", symbol="aapl")  # the selector is case-blind, like IB
    assert again.ok and again.data == IDENTITY_AAPL
    assert dsim.market_snapshot()["counters"]["contract_details"] == asked  # from the cache
    by_id = worker.call("qualify", con_id=AAPL)
    assert by_id.ok and by_id.data == IDENTITY_AAPL


def test_unknown_symbol_is_no_security_definition(worker: WorkerProcess) -> None:
    code, ib_code, message = error_of(worker.call("qualify", symbol="NOPE"))
    assert (code, ib_code) == (DataCode.NO_SECURITY_DEFINITION, 200) and "NOPE" in message
    code, _, _ = error_of(worker.call("historical_bars", symbol="NOPE"))
    assert code == DataCode.NO_SECURITY_DEFINITION


def test_ambiguous_symbol_names_each_candidate_and_the_primary_exchange_settles_it(
    worker: WorkerProcess,
) -> None:
    code, _, message = error_of(worker.call("qualify", symbol="DUAL"))
    assert code == DataCode.AMBIGUOUS_CONTRACT
    assert "con_id 900001 (NYSE)" in message and "con_id 900002 (NASDAQ)" in message
    r = worker.call("qualify", symbol="DUAL", primary_exchange="NASDAQ")
    assert r.ok and (r.data["con_id"], r.data["primary_exchange"]) == (900002, "NASDAQ")


def test_malformed_selectors_are_bad_requests_before_any_gateway_traffic(
    dsim: DataSim, worker: WorkerProcess
) -> None:
    asked = dsim.market_snapshot()["counters"]["contract_details"]
    for params in (
        {},
        {"symbol": "AAPL", "con_id": AAPL},
        {"symbol": "AA\x00PL"},
        {"symbol": "AAPL", "bar_size": "7 mins"},
        {"symbol": "AAPL", "duration": "2 days"},
        {"symbol": "AAPL", "end": "2026-11-25T16:00:00"},  # no offset
    ):
        code, _, message = error_of(worker.call("historical_bars", **params))
        assert code == Code.BAD_REQUEST and message.startswith("historical_bars: params"), params
    assert dsim.market_snapshot()["counters"]["contract_details"] == asked


# ---- the original system's two commands, typed by hand


def by_hand(lines: list[str]) -> list[dict[str, Any]]:
    """Type each line into `python -m worker` after the answer to the one before (no shell);
    the answers, then the worker exits 0 at EOF."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    answers = []
    try:
        for line in lines:
            proc.stdin.write(line.encode() + b"\n")
            proc.stdin.flush()
            while True:
                msg = json.loads(proc.stdout.readline())
                if "event" not in msg:
                    answers.append(msg)
                    break
        proc.stdin.close()
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        for pipe in (proc.stdout, proc.stderr):
            pipe.close()  # type: ignore[union-attr]
    return answers


def connect_line(port: int) -> str:
    return (
        '{"id": 1, "command": "connect", "params": {"host": "127.0.0.1", "port": %d, '
        '"client_id": 31, "readonly": true, "timeout": 30}}' % port
    )


def test_historical_bars_of_a_qualified_stock_by_hand(dsim: DataSim) -> None:
    connected, answer = by_hand(
        [connect_line(dsim.port), '{"id": 2, "command": "historical_bars", "params": {"symbol": "AAPL"}}']
    )
    assert connected["status"] == "success"
    assert answer["id"] == 2 and answer["status"] == "success", answer
    data = answer["data"]
    assert data["contract"] == IDENTITY_AAPL
    bars = data["bars"]
    starts = [when(b["time"]) for b in bars]
    assert starts == sorted(set(starts)) and len(bars) > 78  # yesterday's session and today's so far
    assert {s.astimezone(dt.UTC).time() for s in starts[:78]} >= {dt.time(14, 30), dt.time(20, 55)}
    for b, start in zip(bars[:-1], starts, strict=False):  # the last bar is still running
        t = int(start.timestamp()) * NS
        expected = dsim.prices.bar(AAPL, t, t + 300 * NS)
        assert expected is not None
        got = (b["open"], b["high"], b["low"], b["close"], b["volume"], b["wap"], b["count"])
        assert got == (expected.open, expected.high, expected.low, expected.close, expected.volume,
                       expected.wap, expected.count), b  # fmt: skip
    assert when(data["broker_time"]) >= starts[-1]


def test_broker_snapshot_by_hand(dsim: DataSim) -> None:
    _, answer = by_hand(
        [connect_line(dsim.port), '{"id": 2, "command": "snapshot", "params": {"account": "%s"}}' % ACCOUNT]
    )
    assert answer["status"] == "success", answer
    data = answer["data"]
    assert [(p["symbol"], p["position"], p["avg_cost"]) for p in data["positions"]] == [
        ("AAPL", 100.0, 150.25),
        ("MSFT", 50.0, 310.1),
    ]
    tags = {b["tag"]: b["value"] for b in data["balances"]}
    assert tags["NetLiquidation"] == "100000.00" and all(b["account"] == ACCOUNT for b in data["balances"])
    [fill] = data["executions"]  # the day's earlier fill at the broker, with its commission
    assert (fill["symbol"], fill["side"], fill["shares"], fill["commission"]) == ("AAPL", "BOT", 10.0, 1.0)
    assert data["open_orders"] == [] and data["completed_orders"] == []
    assert when(data["broker_time_before"]) <= when(data["broker_time_after"])


def test_a_fill_between_the_two_reads_makes_the_snapshot_inconsistent(
    dsim: DataSim, worker: WorkerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order of another client fills at the broker right after the first read's
    reqExecutions was answered: the second read differs, and the snapshot says so."""

    asyncio.run(place_working_order(dsim.port, "between-reads"))
    table = sim_registry.table()
    answer_executions = table[wire.REQ_EXECUTIONS]
    fills: list[int] = []

    def executions_then_a_fill(s: Any, f: list[str]) -> None:
        answer_executions(s, f)
        if s.client_id == CLIENT_ID and not fills:
            fills.append(1)
            s.gateway.fill_order("between-reads")

    monkeypatch.setitem(table, wire.REQ_EXECUTIONS, executions_then_a_fill)  # type: ignore[arg-type]
    code, _, message = error_of(worker.call("snapshot"))
    assert code == DataCode.INCONSISTENT_SNAPSHOT and fills == [1]
    for what in ("positions", "open_orders", "completed_orders", "executions"):
        assert what in message
    after = worker.call("snapshot")  # nothing moves now: consistent, and the fill is in it
    assert after.ok and after.data is not None
    [done] = after.data["completed_orders"]
    assert (done["order_ref"], done["status"], done["filled"]) == ("between-reads", "Filled", 10.0)
    assert [x["order_ref"] for x in after.data["executions"]] == ["", "between-reads"]
    assert all(x["commission"] is not None for x in after.data["executions"])


async def place_working_order(port: int, ref: str) -> None:
    """Another client (id 99) leaves a BUY limit far below the market working at the broker."""
    ib = never_disconnecting_ib()
    await ib.connectAsync("127.0.0.1", port, clientId=99, timeout=10)
    contract = Contract(conId=AAPL, symbol="AAPL", secType="STK", exchange="SMART", currency="USD")
    trade = ib.placeOrder(contract, LimitOrder("BUY", 10, 90.0, orderRef=ref, account=ACCOUNT))
    async with asyncio.timeout(10):
        while trade.orderStatus.status != "Submitted":
            await ib.updateEvent


# ---- pacing


def test_a_request_that_pacing_would_refuse_fails_at_once_saying_when(
    dsim: DataSim, worker: WorkerProcess
) -> None:
    """Six requests for one contract within 2 s break IB's rule: the sixth cannot run within its
    1 s timeout, so it is refused at once with the time it could run; the Gateway saw five."""
    ids = [
        worker.submit(
            "historical_bars", symbol="AAPL", bar_size="5 secs", duration=f"{60 * (n + 1)} S", timeout=1.0
        )
        for n in range(6)
    ]
    answers = [worker.wait_response(rid, 10) for rid in ids]
    assert [a.ok for a in answers] == [True] * 5 + [False]
    code, _, message = error_of(answers[-1])
    assert code == DataCode.PACING_LIMIT
    assert "lets it run at" in message and "at most 5 requests for one contract" in message
    pacing = dsim.market_snapshot()["pacing"]
    assert pacing["requests"] == 5 and dsim.errors_sent(162) == 0


def test_twenty_historical_requests_in_a_burst_get_zero_162s(dsim: DataSim, worker: WorkerProcess) -> None:
    ids = [
        worker.submit(
            "historical_bars", symbol=sym, bar_size="5 secs", duration=f"{60 * (n + 1)} S", timeout=30.0
        )
        for n in range(10)
        for sym in ("AAPL", "MSFT")
    ]
    answers = [worker.wait_response(rid, 40) for rid in ids]
    assert all(a.ok for a in answers), [a.error for a in answers if not a.ok]
    assert all(len(a.data["bars"]) > 0 for a in answers if a.data is not None)
    pacing = dsim.market_snapshot()["pacing"]
    assert pacing["requests"] == 20
    assert (pacing["identical"], pacing["same_contract"], pacing["too_many"]) == (0, 0, 0)
    assert dsim.errors_sent(162) == 0


# ---- streams


def test_a_quote_subscription_receives_the_sims_predicted_quotes(
    dsim: DataSim, worker: WorkerProcess
) -> None:
    first = dsim.now_tick()
    r = worker.call("subscribe", stream="quotes", symbol="AAPL")
    assert r.ok and r.data is not None
    assert (r.data["contract"], r.data["delayed"]) == (IDENTITY_AAPL, False)
    quotes = collect(worker, "quote", r.data["sub"], 12)
    table = dsim.quotes_by_fields(AAPL, first, dsim.now_tick())
    ticks = [table.get(event_fields(q)) for q in quotes]
    assert None not in ticks, [q for q, t in zip(quotes, ticks, strict=True) if t is None]
    assert ticks == sorted(set(ticks))  # each a newer tick: conflated, never repeated or reordered
    times = [when(q["time"]) for q in quotes]
    assert times == sorted(times) and not any(q["delayed"] for q in quotes)


@pytest.mark.parametrize("sim_speed", [5.0])  # a 5 s bar in one real second
def test_trades_and_five_second_bars_are_the_sims(dsim: DataSim, worker: WorkerProcess) -> None:
    first = dsim.now_tick()
    trades = worker.call("subscribe", stream="trades", symbol="AAPL")
    bars = worker.call("subscribe", stream="bars_5s", symbol="MSFT")
    assert trades.ok and bars.ok and trades.data is not None and bars.data is not None
    got = collect(worker, "trade", trades.data["sub"], 10)
    expected = [dsim.prices.trade(AAPL, t) for t in range(first, dsim.now_tick() + 1)]
    seq = [(x.price, float(x.size)) for x in expected]
    pairs = [(g["price"], g["size"]) for g in got]
    assert any(seq[i : i + len(pairs)] == pairs for i in range(len(seq))), (pairs, seq)  # consecutive ticks
    assert all(g["exchange"] == "NASDAQ" for g in got)
    [bar] = collect(worker, "bar", bars.data["sub"], 1, timeout=12)
    t = int(when(bar["time"]).timestamp()) * NS
    b = dsim.prices.bar(MSFT, t, t + 5 * NS)
    assert b is not None
    assert (bar["open"], bar["high"], bar["low"], bar["close"], bar["volume"], bar["count"]) == (
        b.open, b.high, b.low, b.close, b.volume, b.count,
    )  # fmt: skip


def test_delayed_data_is_flagged_on_the_answer_and_on_every_quote(
    dsim: DataSim, worker: WorkerProcess
) -> None:
    dsim.market(lambda m: m.market_data_permission("AAPL", "delayed"))
    first = dsim.now_tick(delay_s=15 * 60)
    r = worker.call("subscribe", stream="quotes", symbol="AAPL")
    assert r.ok and r.data is not None and r.data["delayed"] is True
    quotes = collect(worker, "quote", r.data["sub"], 5)
    assert all(q["delayed"] for q in quotes)
    table = dsim.quotes_by_fields(AAPL, first, dsim.now_tick(delay_s=15 * 60))  # 15 minutes old
    assert all(table.get(event_fields(q)) is not None for q in quotes)


def test_no_permission_is_a_typed_error_never_an_empty_stream(dsim: DataSim, worker: WorkerProcess) -> None:
    dsim.market(lambda m: m.market_data_permission("MSFT", "none"))
    code, ib_code, message = error_of(worker.call("subscribe", stream="quotes", symbol="MSFT"))
    assert code == DataCode.NO_MARKET_DATA_PERMISSION and ib_code in (354, 10168) and "MSFT" in message
    assert dsim.market_snapshot()["lines"]["in_use"] == 0
    ok = worker.call("subscribe", stream="quotes", symbol="AAPL")  # the worker goes on
    assert ok.ok


def test_the_line_budget_refuses_a_subscription_past_it(dsim: DataSim) -> None:
    with start_worker(dsim, env={"IBGW_MARKET_DATA_LINES": "2"}) as w:
        a = w.call("subscribe", stream="quotes", symbol="AAPL")
        m = w.call("subscribe", stream="quotes", symbol="MSFT")
        shared = w.call("subscribe", stream="quotes", symbol="AAPL")  # the same line, shared
        assert a.ok and m.ok and shared.ok and m.data is not None
        code, _, message = error_of(w.call("subscribe", stream="quotes", symbol="SPY"))
        assert code == DataCode.MARKET_DATA_LINES and "all 2 market-data lines" in message
        assert dsim.market_snapshot()["lines"]["in_use"] == 2 and dsim.errors_sent(101) == 0
        assert w.call("unsubscribe", sub=m.data["sub"]).ok
        assert w.call("subscribe", stream="quotes", symbol="SPY").ok


def test_unsubscribe_ends_the_events_and_an_unknown_sub_is_refused(
    dsim: DataSim, worker: WorkerProcess
) -> None:
    r = worker.call("subscribe", stream="quotes", symbol="AAPL")
    assert r.ok and r.data is not None
    sub = r.data["sub"]
    collect(worker, "quote", sub, 2)
    assert worker.call("unsubscribe", sub=sub).ok
    dsim.sim.wait_until(lambda gw: not gw.component(Market).streams, 5)  # the Gateway cancelled it
    code, _, _ = error_of(worker.call("unsubscribe", sub=sub))
    assert code == DataCode.UNKNOWN_SUBSCRIPTION


def test_after_1101_a_new_subscription_streams_again(dsim: DataSim, worker: WorkerProcess) -> None:
    r = worker.call("subscribe", stream="quotes", symbol="AAPL")
    assert r.ok and r.data is not None
    collect(worker, "quote", r.data["sub"], 2)
    dsim.sim.connectivity_lost()
    dsim.sim.connectivity_restored(True)  # 1101: IB dropped every subscription
    worker.wait_event_where(lambda e: e.event == "ib_error" and e.data.get("code") == 1101)
    assert worker.call("unsubscribe", sub=r.data["sub"]).ok  # no cancel for a feed IB dropped
    again = worker.call("subscribe", stream="quotes", symbol="AAPL")
    assert again.ok and again.data is not None and again.data["sub"] != r.data["sub"]
    collect(worker, "quote", again.data["sub"], 3)
    assert dsim.errors_sent(300) == 0
