"""The simulated market-data farm: open subscriptions, IB's limits, faults, and the ticks, bars
and updates pushed to each subscriber on a timer.

One `Market` per Gateway (a `gateway.Component`): it outlives sessions, so limits and faults
span every client, as IB's do per account. Streams flow from the seeded price process at the
Gateway's wall clock; a pump timer (one per Market, armed while anything streams) sends what
changed since the last run. Handlers (handlers_market.py) parse requests and call in here.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

from . import history, wire
from .gateway import FARMS_OK, TEXT_2103, Component, Gateway, Notice
from .instruments import Instrument, by_con_id, lookup
from .pacing import Budget, HistoricalPacing, Limits
from .prices import NS, Bar, PriceProcess, Quote
from .scheduler import Timer
from .session import Session

log = logging.getLogger("gatewaysim")

DELAY_NS = 15 * 60 * NS  # IB's delayed data lags 15 minutes
PERMISSIONS = ("live", "delayed", "none")
TEXT_10167 = "Requested market data is not subscribed. Displaying delayed market data."
TEXT_10168 = "Requested market data is not subscribed. Delayed market data is not enabled."
TEXT_354_DELAYED = "Requested market data is not subscribed. Delayed market data is available."
TEXT_354 = "Requested market data is not subscribed."
PUMP_MIN = 0.01  # s: never pump faster, whatever the tick rate
PUMP_MAX = 0.25  # s: never slower (real-time bars and snapshots are due on time)

# Tick types (IB's tick_types page): live, delayed.
BID, ASK, LAST = (1, 66), (2, 67), (4, 68)
BID_SIZE, ASK_SIZE, LAST_SIZE, VOLUME = (0, 69), (3, 70), (5, 71), (8, 74)
HIGH, LOW, CLOSE, OPEN = (6, 72), (7, 73), (9, 75), (14, 76)
LAST_TIMESTAMP = (45, 88)
RT_VOLUME = 48
SHORTABLE, SHORTABLE_SHARES = 46, 89
# genericTickList entries IB accepts for stocks (a subset of its list), and the ones the
# simulator serves: 233 RTVolume, 236 shortable, 293 trade count. The rest add nothing.
GENERIC_TICKS = frozenset({
    "100", "101", "104", "105", "106", "107", "165", "221", "225", "232", "233", "236", "258", "293",
    "294", "295", "318", "375", "411", "456", "588",
})  # fmt: skip


# ------------------------------------------------------------------------------------------
# Server -> client frames of market data (layouts: trading-surface.md B.3, B.4, appendix 5)


def tick_price(req_id: int, tick_type: int, price: float, size: int = 0, attr_mask: int = 0) -> bytes:
    """Exactly 7 fields: ib_async unpacks tickPrice as a strict tuple."""
    return wire.encode_msg(wire.TICK_PRICE, 6, req_id, tick_type, price, size, attr_mask)


def tick_size(req_id: int, tick_type: int, size: int) -> bytes:
    return wire.encode_msg(wire.TICK_SIZE, 6, req_id, tick_type, size)


def tick_string(req_id: int, tick_type: int, value: str) -> bytes:
    return wire.encode_msg(wire.TICK_STRING, 6, req_id, tick_type, value)


def tick_generic(req_id: int, tick_type: int, value: float) -> bytes:
    return wire.encode_msg(wire.TICK_GENERIC, 6, req_id, tick_type, value)


def tick_req_params(req_id: int, min_tick: float, bbo_exchange: str, snapshot_permissions: int) -> bytes:
    """No version field."""
    return wire.encode_msg(wire.TICK_REQ_PARAMS, req_id, min_tick, bbo_exchange, snapshot_permissions)


def market_data_type(req_id: int, data_type: int) -> bytes:
    return wire.encode_msg(wire.MARKET_DATA_TYPE, 1, req_id, data_type)


def tick_snapshot_end(req_id: int) -> bytes:
    return wire.encode_msg(wire.TICK_SNAPSHOT_END, 1, req_id)


def realtime_bar(req_id: int, bar: Bar) -> bytes:
    return wire.encode_msg(
        wire.REAL_TIME_BARS, 3, req_id, bar.start_ns // NS, bar.open, bar.high, bar.low, bar.close,
        bar.volume, bar.wap, bar.count,
    )  # fmt: skip


def tick_by_tick_last(req_id: int, all_last: bool, t_s: int, price: float, size: int, exchange: str) -> bytes:
    """tickType 1 (Last) or 2 (AllLast): time, price, size, attribute mask, exchange, conditions."""
    return wire.encode_msg(wire.TICK_BY_TICK, req_id, 2 if all_last else 1, t_s, price, size, 0, exchange, "")


def tick_by_tick_bid_ask(req_id: int, t_s: int, q: Quote) -> bytes:
    return wire.encode_msg(wire.TICK_BY_TICK, req_id, 3, t_s, q.bid, q.ask, q.bid_size, q.ask_size, 0)


def tick_by_tick_midpoint(req_id: int, t_s: int, mid: float) -> bytes:
    return wire.encode_msg(wire.TICK_BY_TICK, req_id, 4, t_s, mid)


def historical_data(req_id: int, q: history.Query, bars: list[Bar]) -> bytes:
    """One message delivers every bar and ends the request (no separate end message below 196)."""
    rows: list[tuple[str, float, float, float, float, float, float, int]] = [
        (history.format_bar_date(q, b.start_ns), b.open, b.high, b.low, b.close, b.volume, b.wap, b.count)
        for b in bars
    ]
    return wire.historical_data(
        req_id, history.format_span(q.ins, q.start_ns), history.format_span(q.ins, q.end_ns), rows
    )


def historical_data_update(req_id: int, q: history.Query, b: Bar) -> bytes:
    """keepUpToDate: note the order open, close, high, low, then WAP and volume."""
    return wire.encode_msg(
        wire.HISTORICAL_DATA_UPDATE, req_id, b.count, history.format_bar_date(q, b.start_ns), b.open, b.close,
        b.high, b.low, b.wap, b.volume,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------
# Subscriptions


@dataclass(eq=False)
class Stream:
    """One open subscription of one session. `sent` counts the data messages pushed to it."""

    kind: ClassVar[str] = "stream"
    session: Session
    req_id: int
    ins: Instrument
    sent: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.session.session_id, self.req_id

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "session_id": self.session.session_id,
            "client_id": self.session.client_id,
            "req_id": self.req_id,
            "symbol": self.ins.symbol,
            "con_id": self.ins.con_id,
            "sent": self.sent,
        }


@dataclass(eq=False)
class Quotes(Stream):
    """reqMktData: streaming (holds a line) or a snapshot (answered once, then gone)."""

    kind: ClassVar[str] = "mkt_data"
    snapshot: bool = False
    delayed: bool = False
    generic: frozenset[str] = frozenset()
    last: Quote | None = None
    day: Bar | None = None  # today's session so far, for high/low/open
    last_tick: int | None = None


@dataclass(eq=False)
class RealTimeBars(Stream):
    kind: ClassVar[str] = "real_time_bars"
    what_to_show: str = "TRADES"
    next_start_ns: int = 0  # the start of the next bar to send


@dataclass(eq=False)
class TickByTick(Stream):
    kind: ClassVar[str] = "tick_by_tick"
    tick_type: str = "Last"
    last_tick: int = 0
    last: Quote | None = None


@dataclass(eq=False)
class BarUpdates(Stream):
    """reqHistoricalData with keepUpToDate: the open bar is re-sent as it changes."""

    kind: ClassVar[str] = "historical_updates"
    query: history.Query | None = None
    last_bar: Bar | None = None


@dataclass(slots=True)
class MarketCounters:
    contract_details: int = 0
    historical_requests: int = 0
    historical_bars: int = 0
    snapshots: int = 0
    pumps: int = 0  # runs of the pump timer, paused ones too (tests wait on this, not on time)
    errors: dict[int, int] = field(default_factory=dict)


class Market(Component):
    """Market-data state of one Gateway; see the module docstring."""

    name: ClassVar[str] = "market"

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(gateway)
        self.prices = PriceProcess(seed=gateway.seed, tick_rate=gateway.tick_rate)
        self.limits = Limits()
        self.pacing = HistoricalPacing(self.limits)
        self.lines = Budget(self.limits.market_data_lines, self.limits.enabled)
        self.tick_by_tick_slots = Budget(self.limits.tick_by_tick_max, self.limits.enabled)
        self.counters = MarketCounters()
        self.permissions: dict[int, str] = {}  # conId -> "delayed" | "none" (absent: live)
        self.farm_down = False
        self.data_types: dict[int, int] = {}  # session id -> reqMarketDataType
        self.streams: dict[tuple[int, int], Stream] = {}
        self.lost: set[tuple[int, int]] = set()  # streams data_lost() ended, until cancelled
        self._pump_timer: Timer | None = None
        self._farm_timer: Timer | None = None

    # -------------------------------------------------------------------- configuration & faults

    def set_limits(self, limits: Limits) -> None:
        """IB's limits (pacing.Limits); `Limits(enabled=False)` switches them all off."""
        self.limits = limits
        self.pacing.limits = limits
        self.lines.limit, self.lines.enabled = limits.market_data_lines, limits.enabled
        self.tick_by_tick_slots.limit = limits.tick_by_tick_max
        self.tick_by_tick_slots.enabled = limits.enabled
        self.gateway.emit("fault", f"market limits {limits}")

    def market_data_permission(self, instrument: str | int, level: str) -> None:
        """Per instrument (symbol or conId): "live" (default); "delayed": no live subscription,
        so live requests get 354 and delayed ones (reqMarketDataType 3/4) 10167 and data 15
        minutes old; "none": 354, and 10168 for delayed requests. Applies to new requests."""
        if level not in PERMISSIONS:
            raise ValueError(f"permission must be one of {', '.join(PERMISSIONS)}, got {level!r}")
        for ins in self._instruments(instrument):
            if level == "live":
                self.permissions.pop(ins.con_id, None)
            else:
                self.permissions[ins.con_id] = level
        self.gateway.emit("fault", f"market data permission {instrument}={level}")

    def farm_outage(self, seconds: float | None = None) -> None:
        """2103 to every session and no ticks, bars or updates until `farm_restored()` (or for
        `seconds`); snapshots asked meanwhile are answered when it is back."""
        if seconds is not None and not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        if self._farm_timer is not None:
            self._farm_timer.cancel()
            self._farm_timer = None
        if not self.farm_down:
            self.farm_down = True
            n = self.gateway.broadcast(2103, TEXT_2103)
            self.gateway.emit("farm_outage", f"2103 to {n} session(s)")
        if seconds is not None:
            self._farm_timer = self.gateway.scheduler.call_later(seconds, self.farm_restored)

    def farm_restored(self) -> None:
        """2104 to every session; streams resume from the current market."""
        if self._farm_timer is not None:
            self._farm_timer.cancel()
            self._farm_timer = None
        if not self.farm_down:
            return
        self.farm_down = False
        now = self._now_ns()
        for st in self.streams.values():
            if isinstance(st, RealTimeBars):
                st.next_start_ns = now - now % (5 * NS)
            elif isinstance(st, TickByTick):
                st.last_tick = self.prices.tick_index(now)
        n = self.gateway.broadcast(*FARMS_OK[0])  # 2104 usfarm OK
        self.gateway.emit("farm_restored", f"2104 to {n} session(s)")

    def pacing_violation(self, count: int = 1) -> None:
        """The next `count` historical requests get 162 (pacing violation), whatever they are."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        self.pacing.forced_violations += count
        self.gateway.emit("fault", f"pacing violation for the next {count} historical request(s)")

    def data_lost(self) -> None:
        """IB's 1101 (`Gateway.connectivity_restored(data_lost=True)` calls it): every
        subscription is gone and nothing more flows on it; clients must request again. A
        cancel of a lost one is accepted quietly (ib_async re-requests by cancel, then request)."""
        n = len(self.streams)
        for st in list(self.streams.values()):
            self._drop(st)
            self.lost.add(st.key)
        self.gateway.emit("market_data_lost", f"{n} subscription(s) dropped")

    def handshake_notices(self, notices: list[Notice]) -> list[Notice]:
        """While the farm is down a new session hears 2103 where it would hear 2104."""
        if not self.farm_down:
            return notices
        return [(2103, TEXT_2103) if n == FARMS_OK[0] else n for n in notices]

    def _instruments(self, instrument: str | int) -> list[Instrument]:
        if isinstance(instrument, int):
            return [by_con_id(instrument)]
        found = lookup(instrument)
        if not found:
            raise KeyError(f"no instrument {instrument!r} in the book")
        return found

    # -------------------------------------------------------------------- observables

    def snapshot(self) -> dict[str, Any]:
        return {
            "seed": self.prices.seed,
            "tick_rate": self.prices.tick_rate,
            "farm_down": self.farm_down,
            "permissions": {by_con_id(c).symbol + f"/{c}": p for c, p in self.permissions.items()},
            "subscriptions": [st.describe() for st in self.streams.values()],
            "lines": self.lines.snapshot(),
            "tick_by_tick": self.tick_by_tick_slots.snapshot(),
            "pacing": self.pacing.snapshot(),
            "counters": {
                "contract_details": self.counters.contract_details,
                "historical_requests": self.counters.historical_requests,
                "historical_bars": self.counters.historical_bars,
                "snapshots": self.counters.snapshots,
                "pumps": self.counters.pumps,
                "errors": dict(self.counters.errors),
            },
        }

    def stream(self, session: Session, req_id: int) -> Stream | None:
        return self.streams.get((session.session_id, req_id))

    # -------------------------------------------------------------------- session life

    def session_ended(self, s: Session) -> None:
        for st in [st for st in self.streams.values() if st.session is s]:
            self._drop(st)
        self.lost = {key for key in self.lost if key[0] != s.session_id}
        self.data_types.pop(s.session_id, None)

    def error(self, s: Session, req_id: int, code: int, text: str) -> None:
        self.counters.errors[code] = self.counters.errors.get(code, 0) + 1
        s.error(req_id, code, text)

    # -------------------------------------------------------------------- requests

    def open(self, st: Stream) -> bool:
        """Register a stream; False (after the error) for a duplicate id or an exhausted budget."""
        if st.key in self.streams:
            self.error(st.session, st.req_id, 102, "Duplicate ticker ID.")
            return False
        self.lost.discard(st.key)  # re-requested under its old id
        if isinstance(st, Quotes) and not st.snapshot and not self.lines.acquire(st.key):
            self.error(st.session, st.req_id, 101, "Max number of tickers has been reached.")
            return False
        if isinstance(st, TickByTick) and not self.tick_by_tick_slots.acquire(st.key):
            self.error(st.session, st.req_id, 10190, "Max number of tick-by-tick requests has been reached.")
            return False
        if isinstance(st, BarUpdates):
            open_hist = sum(1 for x in self.streams.values() if isinstance(x, BarUpdates))
            if self.limits.enabled and open_hist >= self.limits.max_open_historical:
                self.error(
                    st.session,
                    st.req_id,
                    322,
                    "Error processing request.-'bX' : cause - Only "
                    f"{self.limits.max_open_historical} simultaneous API historical data requests allowed.",
                )
                return False
        self.streams[st.key] = st
        self._arm()
        return True

    def close(self, s: Session, req_id: int, kind: type[Stream]) -> bool:
        """End one stream of this kind; False when there is none, nor one lost to data_lost()
        (the caller answers that)."""
        key = (s.session_id, req_id)
        st = self.streams.get(key)
        if not isinstance(st, kind):
            if key in self.lost:
                self.lost.discard(key)
                return True
            return False
        self._drop(st)
        return True

    def _drop(self, st: Stream) -> None:
        self.streams.pop(st.key, None)
        self.lines.release(st.key)
        self.tick_by_tick_slots.release(st.key)
        if not self.streams and self._pump_timer is not None:
            self._pump_timer.cancel()
            self._pump_timer = None

    def quotes_permission(self, s: Session, req_id: int, ins: Instrument) -> bool | None:
        """Whether a reqMktData gets delayed data (True), live (False), or was refused (None)."""
        level = self.permissions.get(ins.con_id, "live")
        wants_delayed = self.data_types.get(s.session_id, 1) in (3, 4)
        if level == "live":
            return False
        if level == "delayed" and wants_delayed:
            self.error(s, req_id, 10167, TEXT_10167)
            return True
        if wants_delayed:
            self.error(s, req_id, 10168, TEXT_10168)
        else:
            self.error(s, req_id, 354, TEXT_354_DELAYED if level == "delayed" else TEXT_354)
        return None

    def historical(
        self, s: Session, req_id: int, q: history.Query, identity: object, keep_up_to_date: bool
    ) -> None:
        """Pacing, then the bars (and the updates that follow with keepUpToDate)."""
        weight = 2 if q.what_to_show == "BID_ASK" else 1
        key = (q.ins.con_id, q.what_to_show)
        why = self.pacing.check(self.gateway.now(), identity, key, q.bar_seconds, weight)
        if why is not None:
            self.gateway.emit("pacing", f"session {s.session_id} req {req_id}: {why}")
            self.error(
                s,
                req_id,
                162,
                "Historical Market Data Service error message:Historical data request pacing violation",
            )
            return
        updates = BarUpdates(s, req_id, q.ins, query=q) if keep_up_to_date else None
        if updates is not None and not self.open(updates):
            return
        bars = history.bars(self.prices, q)
        self.counters.historical_requests += 1
        self.counters.historical_bars += len(bars)
        s.send(historical_data(req_id, q, bars))
        if updates is not None and bars:
            updates.last_bar = bars[-1]

    # -------------------------------------------------------------------- the pump

    def _now_ns(self) -> int:
        return round(self.gateway.wall() * NS)

    def _arm(self) -> None:
        if self._pump_timer is None:
            period = min(PUMP_MAX, max(PUMP_MIN, 1 / self.prices.tick_rate))
            self._pump_timer = self.gateway.scheduler.call_every(period, self.pump)
            self.gateway.scheduler.call_later(0, self.pump)  # snapshots and first ticks at once

    def pump(self) -> None:
        """Send every stream what changed since the last run (nothing while the farm is down or
        IB is unreachable)."""
        self.counters.pumps += 1
        if self.farm_down or not self.gateway.upstream_connected:
            self.gateway.changed()
            return
        now = self._now_ns()
        for st in list(self.streams.values()):
            if not st.session.live:
                continue
            if isinstance(st, Quotes):
                self._pump_quotes(st, now)
            elif isinstance(st, RealTimeBars):
                self._pump_real_time_bars(st, now)
            elif isinstance(st, TickByTick):
                self._pump_tick_by_tick(st, now)
            elif isinstance(st, BarUpdates):
                self._pump_bar_updates(st, now)
        self.gateway.changed()

    def _push(self, st: Stream, frames: list[bytes]) -> None:
        if frames:
            st.sent += len(frames)
            st.session.send(*frames)

    def _pump_quotes(self, st: Quotes, now: int) -> None:
        at = now - DELAY_NS if st.delayed else now
        tick = self.prices.tick_index(at)
        if tick == st.last_tick:
            return
        d = 1 if st.delayed else 0
        r = st.req_id
        q = self.prices.quote(st.ins.con_id, at)
        frames: list[bytes] = []
        if st.last is None:
            frames += [
                tick_req_params(r, st.ins.min_tick, st.ins.primary_exchange, 3),
                market_data_type(r, 3 if st.delayed else 1),
            ]
            prev = _previous_session_close(self.prices, st.ins, at)
            if prev is not None:
                frames.append(tick_price(r, CLOSE[d], prev))
        old = st.last
        if old is None or (old.bid, old.bid_size) != (q.bid, q.bid_size):
            frames.append(
                tick_price(r, BID[d], q.bid, q.bid_size)
                if old is None or old.bid != q.bid
                else tick_size(r, BID_SIZE[d], q.bid_size)
            )
        if old is None or (old.ask, old.ask_size) != (q.ask, q.ask_size):
            frames.append(
                tick_price(r, ASK[d], q.ask, q.ask_size)
                if old is None or old.ask != q.ask
                else tick_size(r, ASK_SIZE[d], q.ask_size)
            )
        if old is None or old.last != q.last:
            frames.append(tick_price(r, LAST[d], q.last, q.last_size))
        elif old.last_size != q.last_size:
            frames.append(tick_size(r, LAST_SIZE[d], q.last_size))
        if old is None or old.volume != q.volume:
            frames.append(tick_size(r, VOLUME[d], q.volume))
        if old is None or old.time_ns // NS != q.time_ns // NS:
            frames.append(tick_string(r, LAST_TIMESTAMP[d], str(q.time_ns // NS)))
        frames += self._day_ticks(st, q, at, d)
        if "233" in st.generic and (old is None or old.tick != q.tick):
            day = st.day
            vwap = day.wap if day is not None and day.volume > 0 else q.last
            frames.append(
                tick_string(
                    r, RT_VOLUME, f"{q.last};{q.last_size};{q.time_ns // 1_000_000};{q.volume};{vwap};true"
                )
            )
        if "236" in st.generic and old is None:
            frames += [tick_generic(r, SHORTABLE, 3.0), tick_size(r, SHORTABLE_SHARES, 10_000_000)]
        if "293" in st.generic and st.day is not None:
            frames.append(tick_generic(r, 54, float(st.day.count)))
        st.last, st.last_tick = q, tick
        if st.snapshot:
            frames.append(tick_snapshot_end(r))
            self.counters.snapshots += 1
            self._drop(st)
        self._push(st, frames)

    def _day_ticks(self, st: Quotes, q: Quote, at: int, d: int) -> list[bytes]:
        """Open, high and low of the day (since local midnight), sent as they change."""
        start = _local_midnight_ns(st.ins, at)
        old = st.day
        if old is None or old.start_ns != start:
            day = self.prices.bar(st.ins.con_id, start, at + 1)
        else:
            new = self.prices.bar(st.ins.con_id, (st.last_tick or 0) * self.prices.tick_ns + 1, at + 1)
            day = old if new is None else _merge(old, new)
        st.day = day
        if day is None:
            return []
        frames = []
        r = st.req_id
        if old is None or old.start_ns != day.start_ns:
            frames.append(tick_price(r, OPEN[d], day.open))
        if old is None or old.start_ns != day.start_ns or old.high != day.high:
            frames.append(tick_price(r, HIGH[d], day.high))
        if old is None or old.start_ns != day.start_ns or old.low != day.low:
            frames.append(tick_price(r, LOW[d], day.low))
        return frames

    def _pump_real_time_bars(self, st: RealTimeBars, now: int) -> None:
        frames = []
        while st.next_start_ns + 5 * NS <= now:
            bar = self.prices.bar(st.ins.con_id, st.next_start_ns, st.next_start_ns + 5 * NS, st.what_to_show)
            if bar is not None:
                frames.append(realtime_bar(st.req_id, bar))
            st.next_start_ns += 5 * NS
        self._push(st, frames)

    def _pump_tick_by_tick(self, st: TickByTick, now: int) -> None:
        tick = self.prices.tick_index(now)
        first = max(st.last_tick + 1, tick - 1000)  # far behind: the latest 1000 only
        frames = []
        for t in range(first, tick + 1):
            t_s = t * self.prices.tick_ns // NS
            if st.tick_type in ("Last", "AllLast"):
                tr = self.prices.trade(st.ins.con_id, t)
                frames.append(
                    tick_by_tick_last(
                        st.req_id, st.tick_type == "AllLast", t_s, tr.price, tr.size, st.ins.primary_exchange
                    )
                )
                continue
            q = self.prices.quote(st.ins.con_id, t * self.prices.tick_ns)
            old, st.last = st.last, q
            if st.tick_type == "BidAsk" and (
                old is None
                or (old.bid, old.ask, old.bid_size, old.ask_size) != (q.bid, q.ask, q.bid_size, q.ask_size)
            ):
                frames.append(tick_by_tick_bid_ask(st.req_id, t_s, q))
            elif st.tick_type == "MidPoint" and (old is None or old.bid + old.ask != q.bid + q.ask):
                frames.append(tick_by_tick_midpoint(st.req_id, t_s, round((q.bid + q.ask) / 2, 8)))
        st.last_tick = max(st.last_tick, tick)
        self._push(st, frames)

    def _pump_bar_updates(self, st: BarUpdates, now: int) -> None:
        q, last = st.query, st.last_bar
        if q is None or last is None:
            return  # no bar yet: ib_async would ignore every update anyway
        live = replace(q, start_ns=last.start_ns, end_ns=now)
        frames = []
        for bar in history.bars(self.prices, live):
            if bar.start_ns > last.start_ns or bar != last:
                frames.append(historical_data_update(st.req_id, q, bar))
                last = bar
        st.last_bar = last
        self._push(st, frames)


def _local_midnight_ns(ins: Instrument, t_ns: int) -> int:
    zone = ZoneInfo(ins.time_zone_id)
    local = dt.datetime.fromtimestamp(t_ns // NS, zone)
    return int(dt.datetime.combine(local.date(), dt.time(), zone).timestamp()) * NS


def _previous_session_close(pp: PriceProcess, ins: Instrument, t_ns: int) -> float | None:
    """The last price of the previous trading day (tick type 9, "close")."""
    zone = ZoneInfo(ins.time_zone_id)
    today = dt.datetime.fromtimestamp(t_ns // NS, zone).date()
    for day, s0, s1 in reversed(
        list(history.sessions(ins, True, today - dt.timedelta(days=7), today - dt.timedelta(days=1)))
    ):
        del day
        bar = pp.bar(ins.con_id, s0, s1)
        if bar is not None:
            return bar.close
    return None


def _merge(a: Bar, b: Bar) -> Bar:
    """Two consecutive TRADES bars as one (dated at the first)."""
    volume = a.volume + b.volume
    wap = round((a.wap * a.volume + b.wap * b.volume) / volume, 6) if volume > 0 else a.wap
    return Bar(
        a.start_ns, a.open, max(a.high, b.high), min(a.low, b.low), b.close, volume, wap, a.count + b.count
    )
