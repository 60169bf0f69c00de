"""The trading surface's figures (issues 13 and 14), each against in-process ib_async in the same
run: a quote's added latency from the simulator to the trader's `async for`, the highest tick
rate carried without loss, a 10,000-bar history, and place -> acknowledged.

They run on simulators of their own (bench.simhost): a trading-day clock (quotes, bars and
resting orders look the same at any hour) and a send log, the simulator's stamp of each push
(SendLog), so a latency runs from the moment the simulator pushed the tick. The trading-day
simulator, its trading manager and the in-process ib_async child are shared by the groups here
and closed at the end of the run (Context.stack).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from fsm.manager import ConnectionManager
from fsm.streaming import Stream
from fsm.streams import Quote, Trade
from gatewaysim.accounts import AAPL
from gatewaysim.prices import PriceProcess

from . import baselines
from .harness import HOST, Context, SimHost, settings_for
from .lineclient import LineClient
from .report import Figure
from .stats import abba_order, interleave, summarize

SYMBOL = "AAPL"
CON_ID = AAPL.con_id
LOW = round(AAPL.base_price * 0.5, 2)  # a BUY limit the market never reaches: the order rests
QUOTE_TICK_RATE = 100.0  # ticks/s of the trading-day simulator: its quote pump runs at 100/s
HISTORY = {"duration": "11 D", "bar_size": "1 min", "use_rth": False}  # ~10,000 bars
QUOTE_SETTLE_NS = 50_000_000  # pushes this close to a round's start or end are not paired
TRADES_SETTLE_S = 0.2  # a new tick-by-tick stream opens with the latest 1000 ticks at once
TRADES_GRACE_S = 0.1  # every tick of a window must have reached its reader this soon after it
SIM_SHORT = 0.95  # a simulator pushing less than this share of its tick rate cannot push it
ORDER_PERIOD_S = 0.05  # a round of two orders, well under ib_async's 45 msg/s in each client


# --------------------------------------------------------------------------------------------
# What the groups share: the trading-day simulator, one manager on it, the in-process ib_async


async def _ib_data(ib: LineClient, command: str, **params: Any) -> dict[str, Any]:
    reply = await ib.call({"command": command, "params": params}, timeout=60)
    if reply.get("status") != "success":
        raise RuntimeError(f"in-process ib_async baseline: {command} failed: {reply}")
    data: dict[str, Any] = reply["data"]
    return data


async def _simulator(stack: contextlib.AsyncExitStack, **options: Any) -> SimHost:
    """A simulator process on a trading-day clock with a send log, closed with `stack`; fast
    closes do not turn it RED (bench managers stop quickly)."""
    sim = await stack.enter_async_context(SimHost(trading_day=True, record_sends=True, **options))
    await sim.call("red_on_fast_close", None)
    return sim


@dataclass
class Trading:
    sim: SimHost
    m: ConnectionManager
    ib: LineClient
    ib_client_id: int
    conn: str = "trading"


async def inproc(ctx: Context) -> LineClient:
    """The in-process ib_async child (bench/ib_child.py), started once per run."""
    if "inproc" not in ctx.shared:
        ctx.shared["inproc"] = await ctx.stack.enter_async_context(baselines.ib_child())
    ib: LineClient = ctx.shared["inproc"]
    return ib


async def trading(ctx: Context) -> Trading:
    """The trading-day simulator, a manager on it and an in-process ib_async client connected
    read-write to it, started once per run."""
    if "trading" not in ctx.shared:
        sim = await _simulator(ctx.stack, tick_rate=QUOTE_TICK_RATE)
        ib = await inproc(ctx)
        cid = ctx.client_id()
        await _ib_data(ib, "connect", host=HOST, port=sim.port, client_id=cid, name="trading", readonly=False)
        # Read-only off and no maintenance windows: the bench places orders, at any hour.
        s = settings_for(ctx, ctx.client_id(), port=sim.port, readonly=False, maintenance="off")
        m = await ctx.stack.enter_async_context(ConnectionManager(s))
        await m.wait_connected(timeout=60)
        ctx.shared["trading"] = Trading(sim, m, ib, cid)
    t: Trading = ctx.shared["trading"]
    return t


async def _read_into(s: Stream, into: list[tuple[Any, ...]]) -> None:
    """The trader's `async for`: stamp each item as it is handed over."""
    async for item in s:
        now = time.monotonic_ns()
        if isinstance(item, Quote):
            into.append((now, item.volume))
        elif isinstance(item, Trade):
            into.append((now, item.price, item.size))


# --------------------------------------------------------------------------------------------
# A quote from the simulator to the trader's `async for`


def pair_quotes(
    sends: Sequence[Sequence[Any]],
    trader: Sequence[Sequence[Any]],
    inproc: Sequence[Sequence[Any]],
    trader_cid: int,
    inproc_cid: int,
    since_ns: int,
    until_ns: int,
) -> dict[str, list[float]]:
    """Pair the ticks pushed in [since, until] that both readers got, by their quote's volume (a
    new tick every push): each one's latency from the simulator's push (ms), and the trader's
    added latency over the in-process reader for the same tick; `pushed`: how many were pushed
    to the trader. The first sight of a volume counts."""
    pushed: dict[tuple[int, int], int] = {}
    for t_ns, kind, cid, _sent, _tick, volume in sends:
        if kind == "mkt_data" and volume is not None and since_ns <= t_ns <= until_ns:
            pushed.setdefault((cid, int(volume)), t_ns)

    def first_seen(got: Sequence[Sequence[Any]]) -> dict[int, int]:
        out: dict[int, int] = {}
        for t_ns, volume in got:
            if volume is not None and not math.isnan(volume):
                out.setdefault(round(volume), t_ns)
        return out

    seen_t, seen_i = first_seen(trader), first_seen(inproc)
    out: dict[str, list[float]] = {"trader": [], "inproc": [], "added": []}
    out["pushed"] = [sum(1 for cid, _ in pushed if cid == trader_cid)]
    for volume, t_t in seen_t.items():
        t_i = seen_i.get(volume)
        p_t, p_i = pushed.get((trader_cid, volume)), pushed.get((inproc_cid, volume))
        if t_i is None or p_t is None or p_i is None:
            continue
        lat_t, lat_i = (t_t - p_t) / 1e6, (t_i - p_i) / 1e6
        out["trader"].append(lat_t)
        out["inproc"].append(lat_i)
        out["added"].append(lat_t - lat_i)
    return out


async def group_quotes(ctx: Context, figs: dict[str, Figure]) -> None:
    """One quote stream through the manager and one in-process reqMktData on the same simulator,
    live together, so both get the same pushes; rounds alternate which subscribes first (the
    simulator writes to its sessions in that order)."""
    sz = ctx.sizes
    tr = await trading(ctx)

    async def quote_round(first: str) -> dict[str, list[float]]:
        await tr.sim.sends()  # forget what came before
        got: list[tuple[Any, ...]] = []
        stream = tr.m.stream("quotes", symbol=SYMBOL)
        if first == "inproc":
            await _ib_data(tr.ib, "quotes_start", conn=tr.conn, symbol=SYMBOL)
        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(_read_into, stream, got)
            if first == "trader":
                await _ib_data(tr.ib, "quotes_start", conn=tr.conn, symbol=SYMBOL)
            live_ns = time.monotonic_ns()
            await anyio.sleep(sz.quote_seconds)
            end_ns = time.monotonic_ns() - QUOTE_SETTLE_NS  # what was pushed by then was read
            tg.cancel_scope.cancel()
        inproc = (await _ib_data(tr.ib, "quotes_stop", conn=tr.conn, symbol=SYMBOL))["got"]
        sends = await tr.sim.sends()
        return pair_quotes(
            sends, got, inproc, tr.m.client_id, tr.ib_client_id, live_ns + QUOTE_SETTLE_NS, end_ns
        )

    # No warm-up round: every round's first pushes are left out (QUOTE_SETTLE_NS).
    got = await interleave(
        {"trader first": lambda: quote_round("trader"), "in-process first": lambda: quote_round("inproc")},
        rounds=sz.quote_rounds,
        warmup=0,
    )
    if not got["added"]:
        raise RuntimeError("no tick reached both readers")
    added = summarize(got["added"])
    for key, judged in (("quote_latency", added.median), ("quote_latency_p99", added.p99)):
        fig = figs[key]
        fig.measured(got["trader"])
        fig.baseline = summarize(got["inproc"])
        fig.others = {"added per tick (trader minus in-process, same tick)": added}
        fig.judge(judged)
    fig = figs["quote_latency"]
    fig.extra["ticks paired / pushed to the trader's session"] = f"{added.n} / {sum(got['pushed']):.0f}"
    fig.notes.append(
        f"both readers subscribe to {SYMBOL} on one simulator ({QUOTE_TICK_RATE:g} ticks/s, its quote "
        "pump pushes every 10 ms) and get the same pushes; t0 = the simulator's stamp of each push "
        "(bench.simhost.SendLog: as its pump returns, just before the socket writes); t1 = the "
        "trader's `async for` (m.stream) or ib_async's Ticker.updateEvent in its own process; a "
        "tick is known by its day volume; judged: the per-tick difference of the two, its p50 "
        "here and its p99 in quote_latency_p99"
    )


# --------------------------------------------------------------------------------------------
# The highest tick rate carried without loss


@dataclass(frozen=True)
class Window:
    """One reader's window at one rate: were all the ticks pushed in it read, in order, in time?"""

    pushed: int  # ticks the simulator pushed to this reader's session in the window
    seconds: float  # the window's length
    carried: bool
    why: str  # "" when carried

    @property
    def rate(self) -> float:
        """Ticks per second the simulator actually pushed."""
        return self.pushed / self.seconds


def window_ticks(sends: Sequence[Sequence[Any]], cid: int, t0_ns: int, t1_ns: int) -> list[int]:
    """The ticks pushed to `cid`'s tick-by-tick stream by the pushes stamped in (t0, t1]: each
    push sent the ticks up to its last_tick, as many as its `sent` count moved."""
    out: list[int] = []
    prev_sent: int | None = None
    for t_ns, kind, c, sent, last_tick, _volume in sends:
        if kind != "tick_by_tick" or c != cid:
            continue
        if prev_sent is not None and t0_ns < t_ns <= t1_ns:
            out.extend(range(last_tick - (sent - prev_sent) + 1, last_tick + 1))
        prev_sent = sent
    return out


def check_window(
    prices: PriceProcess, ticks: list[int], got: Sequence[Sequence[Any]], t0_ns: int, t1_ns: int
) -> Window:
    """Carried: the window's ticks are a run of what the reader got, in order, each tick's
    price and size the simulator's, the last one read within the grace after t1. (The whole
    run must match: the price process repeats short stretches of ticks.)"""
    seconds = (t1_ns - t0_ns) / 1e9
    if not ticks:
        return Window(0, seconds, False, "the simulator pushed nothing in the window")
    want = [(round(tr.price, 6), float(tr.size)) for tr in (prices.trade(CON_ID, t) for t in ticks)]
    read = [(round(p, 6), float(s)) for _, p, s in got]
    n, best = len(want), 0
    for i in (i for i, x in enumerate(read) if x == want[0]):
        run = read[i : i + n]
        if run == want:
            late_ms = (got[i + n - 1][0] - t1_ns) / 1e6 - TRADES_GRACE_S * 1000
            if late_ms > 0:
                return Window(n, seconds, False, f"the last tick read {late_ms:.0f} ms after the grace")
            return Window(n, seconds, True, "")
        best = max(best, next(j for j, (a, b) in enumerate(itertools.zip_longest(run, want)) if a != b))
    return Window(n, seconds, False, f"{n - best:,} of {n:,} ticks missing or out of order")


async def _rate_windows(
    ctx: Context, rate: float, ib: LineClient, windows: int, first: int
) -> dict[str, list[Window]]:
    """Windows of a trader's `trades` stream and of in-process reqTickByTickData, one reader at
    a time in ABBA order, on a simulator pushing `rate` ticks/s."""
    out: dict[str, list[Window]] = {"trader": [], "inproc": []}
    async with contextlib.AsyncExitStack() as stack:
        sim = await _simulator(stack, tick_rate=rate)
        prices = PriceProcess(seed=sim.seed, tick_rate=sim.tick_rate)
        conn, ib_cid = f"rate-{rate:g}", ctx.client_id()
        await _ib_data(ib, "connect", host=HOST, port=sim.port, client_id=ib_cid, name=conn)
        m = ConnectionManager(settings_for(ctx, ctx.client_id(), port=sim.port))
        await stack.enter_async_context(m)
        await m.wait_connected(timeout=60)

        async def window(side: str) -> Window:
            await sim.sends()
            got: list[tuple[Any, ...]] = []
            if side == "trader":
                async with m.stream("trades", symbol=SYMBOL) as s, anyio.create_task_group() as tg:
                    tg.start_soon(_read_into, s, got)
                    t0, t1 = await _window_span(ctx)
                    tg.cancel_scope.cancel()
                cid = m.client_id
            else:
                await _ib_data(ib, "trades_start", conn=conn, symbol=SYMBOL)
                t0, t1 = await _window_span(ctx)
                got = (await _ib_data(ib, "trades_stop", conn=conn, symbol=SYMBOL))["got"]
                cid = ib_cid
            ticks = window_ticks(await sim.sends(), cid, t0, t1)
            return check_window(prices, ticks, got, t0, t1)

        for w in range(windows):
            for side in abba_order(["trader", "inproc"], first + w):
                out[side].append(await window(side))
    return out


async def _window_span(ctx: Context) -> tuple[int, int]:
    """Settle, then one window: its start and end (monotonic ns); returns after the grace."""
    await anyio.sleep(TRADES_SETTLE_S)
    t0 = time.monotonic_ns()
    await anyio.sleep(ctx.sizes.trade_window)
    t1 = time.monotonic_ns()
    await anyio.sleep(TRADES_GRACE_S)
    return t0, t1


def _verdict(ws: list[Window]) -> str:
    bad = [w.why for w in ws if not w.carried]
    return "carried" if not bad else bad[0]


async def group_tick_rate(ctx: Context, figs: dict[str, Figure]) -> None:
    """A `trades` stream through the manager and in-process reqTickByTickData "Last", each alone,
    on simulators pushing more and more ticks per second, until neither carries the rate or the
    simulator cannot push it."""
    sz = ctx.sizes
    best = {"trader": 0.0, "inproc": 0.0}
    prev = 0.0
    fig = figs["tick_rate"]
    ib = await inproc(ctx)
    for i, rate in enumerate(sz.tick_rates):
        got = await _rate_windows(ctx, rate, ib, sz.trade_windows, i)
        label = f"{rate:,.0f} ticks/s (trader | in-process)"
        pushed = min(w.rate for ws in got.values() for w in ws)
        if pushed < SIM_SHORT * rate:
            fig.extra[label] = f"the simulator pushed only {pushed:,.0f} ticks/s: not counted"
            break
        carried = {side: all(w.carried for w in ws) for side, ws in got.items()}
        for side, ok in carried.items():
            if ok:
                best[side] = rate
        prev = rate
        fig.extra[label] = f"{_verdict(got['trader'])} | {_verdict(got['inproc'])}"
        if not any(carried.values()):
            break
    if not best["inproc"]:
        raise RuntimeError(f"in-process ib_async carried none of the rates {sz.tick_rates}")
    fig.judge(fig.compared([best["trader"]], [best["inproc"]]))
    fig.notes.append(
        "a rate is carried when, in every window of "
        f"{sz.trade_window:g} s, each tick the simulator pushed was read, in order, with the "
        f"simulator's price and size, the last one within {TRADES_GRACE_S * 1000:.0f} ms of the "
        "window's end; a simulator per rate (one reader at a time, ABBA); the trader reads "
        "m.stream('trades') with its default buffer, the in-process client stamps each tick in "
        "Ticker.updateEvent; a rate the simulator itself could not push (below "
        f"{SIM_SHORT:.0%} of it) ends the sweep"
    )
    if best["inproc"] == prev:  # it carried the last rate counted: the sweep ended first
        fig.notes.append(
            f"in-process ib_async carried the highest rate counted ({best['inproc']:,.0f} ticks/s): "
            "its own limit may be higher, so the ratio is an upper bound"
        )


# --------------------------------------------------------------------------------------------
# A 10,000-bar history


async def group_history(ctx: Context, figs: dict[str, Figure]) -> None:
    tr = await trading(ctx)
    bars: list[float] = []

    async def manager_sample() -> float:
        t0 = time.perf_counter_ns()
        r = await tr.m.request("historical_bars", symbol=SYMBOL, what_to_show="TRADES", timeout=60, **HISTORY)
        elapsed = (time.perf_counter_ns() - t0) / 1e6
        bars.append(len(r["bars"]))
        return elapsed

    async def inproc_sample() -> float:
        r = await _ib_data(tr.ib, "history", conn=tr.conn, symbol=SYMBOL, **HISTORY)
        bars.append(r["bars"])
        return float(r["elapsed_ms"])

    got = await interleave(
        {"manager": manager_sample, "inproc": inproc_sample}, rounds=ctx.sizes.history_rounds
    )
    fig = figs["history_10k"]
    fig.judge(fig.compared(got["manager"], got["inproc"]))
    assert fig.value is not None and fig.baseline is not None
    fig.extra["bars per request"] = (
        f"{min(bars):,.0f}" if min(bars) == max(bars) else f"{min(bars):,.0f}-{max(bars):,.0f}"
    )
    fig.extra["added median (ms)"] = round(fig.value.median - fig.baseline.median, 1)
    fig.notes.append(
        f"{HISTORY['duration']} of {HISTORY['bar_size']} TRADES bars, all hours; the manager's "
        "historical_bars also qualifies the contract (cached) and asks the broker's time "
        "(reqCurrentTime), and carries the bars as chunked JSON lines; both sides include the "
        "simulator computing the bars"
    )


# --------------------------------------------------------------------------------------------
# place -> acknowledged


async def group_orders(ctx: Context, figs: dict[str, Figure]) -> None:
    tr = await trading(ctx)
    refs = itertools.count(1)
    run = f"bench{os.getpid()}"

    async def manager_sample() -> float:
        ref = f"{run}-m-{next(refs)}"
        t0 = time.perf_counter_ns()
        st = await tr.m.place_order(
            symbol=SYMBOL,
            action="BUY",
            quantity=1,
            order_type="LMT",
            limit_price=LOW,
            order_ref=ref,
            timeout=30,
        )
        elapsed = (time.perf_counter_ns() - t0) / 1e6
        if not st.perm_id:
            raise RuntimeError(f"place_order {ref}: acknowledged without a permId ({st})")
        return elapsed

    async def inproc_sample() -> float:
        r = await _ib_data(
            tr.ib, "place", conn=tr.conn, symbol=SYMBOL, action="BUY", quantity=1,
            limit_price=LOW, order_ref=f"{run}-i-{next(refs)}",
        )  # fmt: skip
        return float(r["elapsed_ms"])

    got = await interleave(
        {"manager": manager_sample, "inproc": inproc_sample},
        rounds=ctx.sizes.order_rounds,
        warmup=2,
        period=ORDER_PERIOD_S,
    )
    value, base = summarize(got["manager"]), summarize(got["inproc"])
    figs["order_ack"].extra["an fsync'd append in the state dir, median (ms)"] = round(
        fsync_ms(ctx.state_dir), 3
    )
    for key, judged in (("order_ack", value.median - base.median), ("order_ack_p99", value.p99 - base.p99)):
        fig = figs[key]
        fig.measured(got["manager"])
        fig.baseline = base
        fig.judge(judged)
    figs["order_ack"].notes.append(
        f"a BUY 1 {SYMBOL} DAY LMT at {LOW:g} (it rests) per sample, on the trading-day simulator; "
        "the manager: m.place_order until it returns the acknowledged order (its journal "
        "records the intent, fsync'd, before the send, and the ack, fsync'd off the caller's path: "
        f"state dir {ctx.state_dir}); in-process: placeOrder until its orderStatus carries a "
        f"permId; ABBA rounds paced every {ORDER_PERIOD_S * 1000:.0f} ms (ib_async's 45 msg/s "
        "throttle is on in both)"
    )


def fsync_ms(directory: Path, n: int = 20) -> float:
    """The median time of a small append and fsync in `directory`: what each journal record of
    an order costs there."""
    path = directory / "bench-fsync.tmp"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        times = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            os.write(fd, b"x" * 200 + b"\n")
            os.fsync(fd)
            times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(fd)
        path.unlink()
    return summarize(times).median


Group = Callable[[Context, dict[str, Figure]], Awaitable[None]]
GROUPS: list[tuple[str, Group, list[str]]] = [
    ("quotes", group_quotes, ["quote_latency", "quote_latency_p99"]),
    ("tick rate", group_tick_rate, ["tick_rate"]),
    ("history", group_history, ["history_10k"]),
    ("orders", group_orders, ["order_ack", "order_ack_p99"]),
]
