"""A deterministic, seeded price process: every quote, bar and fill is a pure function of
(seed, conId, tick index), so tests can predict them.

Tick i happens at i * tick_ns nanoseconds after the Unix epoch (tick_ns = 1e9 / tick_rate); the
tick rate only maps time to tick indices, never changes the path. Each tick is one trade
(last price, last size) with a quote around it: bid = last - 1 tick, ask = bid + spread.

The path is built so that any bar, of any length, is exact and cheap: time is cut into units of
UNIT_TICKS ticks; within a unit the last price is level(unit) + sign * scale * pattern[offset],
where the pattern is one of a few seeded random-walk bridges (start and end at 0, so units join
without a jump beyond the slow level drift) and level is a smooth seeded curve. Prefix sums and
min/max trees over the patterns make open/high/low/close, volume, VWAP and trade count of any
range an O(log) computation per unit, identical to aggregating the ticks one by one.
"""

from __future__ import annotations

import datetime as dt
import functools
from array import array
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from zoneinfo import ZoneInfo

from .instruments import Instrument, by_con_id

UNIT_TICKS = 1 << 15
PATTERNS = 4
NS = 1_000_000_000
MASK64 = (1 << 64) - 1
WHAT_TO_SHOW = ("TRADES", "MIDPOINT", "BID", "ASK", "BID_ASK", "ADJUSTED_LAST")
# Slow level: (relative amplitude, period in units). Small enough that the level stays positive.
LEVEL_OCTAVES = ((0.004, 8), (0.03, 128), (0.12, 2048))


def mix(*values: int) -> int:
    """splitmix64 over a tuple of ints: the one hash every random choice here comes from."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (v & MASK64)) * 0xBF58476D1CE4E5B9 & MASK64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & MASK64
        h ^= h >> 29
    return h


@dataclass(frozen=True, slots=True)
class Quote:
    """The market at one tick. Prices in currency units, sizes in shares; volume is the day's
    traded shares up to and including this tick (day = calendar day in the instrument's zone)."""

    tick: int
    time_ns: int
    bid: float
    ask: float
    last: float
    bid_size: int
    ask_size: int
    last_size: int
    volume: int


@dataclass(frozen=True, slots=True)
class Trade:
    """One tick's trade (tick-by-tick "Last")."""

    tick: int
    time_ns: int
    price: float
    size: int


@dataclass(frozen=True, slots=True)
class Bar:
    """One bar as IB reports it. For TRADES volume is shares, wap the volume-weighted price and
    count the number of trades; quote bars (MIDPOINT, BID, ASK, BID_ASK) carry -1 there."""

    start_ns: int
    open: float
    high: float
    low: float
    close: float
    volume: int
    wap: float
    count: int


class _Pattern:
    """One seeded bridge of UNIT_TICKS steps with the tables that answer range queries."""

    def __init__(self, seed: int, k: int) -> None:
        n = UNIT_TICKS
        walk = [0] * (n + 1)
        sizes = array("q", bytes(8 * n))
        for j in range(n):
            h = mix(seed, 0x5041, k, j)
            r = h % 8
            walk[j + 1] = walk[j] + (1 if r == 0 else -1 if r == 1 else 0)
            sizes[j] = 100 * (1 + (h >> 8) % 5)
        end = walk[n]
        self.values = array("q", (walk[j] - (j * end) // n for j in range(n)))
        self.sizes = sizes
        self.sum_size = array("q", accumulate(sizes, initial=0))
        self.sum_value = array("q", accumulate(self.values, initial=0))
        self.sum_value_size = array(
            "q", accumulate((v * s for v, s in zip(self.values, sizes, strict=True)), initial=0)
        )
        self.abs_max = max(abs(v) for v in self.values)
        self._max = _tree(self.values, max)
        self._min = _tree(self.values, min)

    def extremes(self, a: int, b: int) -> tuple[int, int]:
        """(min, max) of values[a:b], b > a."""
        if a == 0 and b == UNIT_TICKS:
            return self._min[1], self._max[1]
        return _query(self._min, a, b, min), _query(self._max, a, b, max)


def _tree(values: array[int], op: Callable[[int, int], int]) -> array[int]:
    n = len(values)
    t = array("q", bytes(8 * n)) + values
    for i in range(n - 1, 0, -1):
        t[i] = op(t[2 * i], t[2 * i + 1])
    return t


def _query(t: array[int], a: int, b: int, op: Callable[[int, int], int]) -> int:
    n = len(t) // 2
    a += n
    b += n
    best = t[a]
    while a < b:
        if a & 1:
            best = op(best, t[a])
            a += 1
        if b & 1:
            b -= 1
            best = op(best, t[b])
        a >>= 1
        b >>= 1
    return best


@functools.lru_cache(maxsize=8)
def _patterns(seed: int) -> tuple[_Pattern, ...]:
    return tuple(_Pattern(seed, k) for k in range(PATTERNS))


@dataclass(frozen=True, slots=True)
class _Agg:
    """Aggregate of a tick range in integer min ticks (last prices)."""

    first: int
    last: int
    low: int
    high: int
    n: int
    volume: int
    value_volume: int  # sum(price * size), in ticks * shares
    value: int  # sum(price), in ticks

    def __add__(self, other: _Agg) -> _Agg:
        return _Agg(
            self.first,
            other.last,
            min(self.low, other.low),
            max(self.high, other.high),
            self.n + other.n,
            self.volume + other.volume,
            self.value_volume + other.value_volume,
            self.value + other.value,
        )


class PriceProcess:
    """`PriceProcess(seed=1, tick_rate=4.0)`: quotes, trades and bars for the instrument book.

    tick_rate is ticks per second (IB aggregates stock quotes every 250 ms, hence 4); it must
    divide a second into whole nanoseconds closely enough: the tick period is round(1e9/rate) ns.
    """

    def __init__(self, seed: int = 0, tick_rate: float = 4.0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TypeError(f"seed must be an int, got {seed!r}")
        if not tick_rate > 0 or tick_rate > 1e6:
            raise ValueError(f"tick_rate must be in (0, 1e6] ticks per second, got {tick_rate!r}")
        self.seed = seed
        self.tick_rate = float(tick_rate)
        self.tick_ns = round(NS / tick_rate)
        self._patterns = _patterns(seed)
        self._max_abs = max(p.abs_max for p in self._patterns)
        self._knot = functools.lru_cache(maxsize=1 << 12)(self._knot_uncached)
        self._whole_unit = functools.lru_cache(maxsize=1 << 14)(self._whole_unit_uncached)
        self._units_volume = functools.lru_cache(maxsize=1 << 10)(self._units_volume_uncached)

    # ---------------------------------------------------------------- time

    def tick_index(self, now_ns: int) -> int:
        """The last tick at or before now_ns."""
        return now_ns // self.tick_ns

    def tick_time_ns(self, tick: int) -> int:
        return tick * self.tick_ns

    def first_tick_at_or_after(self, t_ns: int) -> int:
        return -(-t_ns // self.tick_ns)

    # ---------------------------------------------------------------- the path (integer ticks)

    def _unit(self, ins: Instrument, unit: int) -> tuple[_Pattern, int, int]:
        """(pattern, signed scale, level) of one unit of one instrument."""
        h = mix(self.seed, ins.con_id, unit)
        pattern = self._pattern_of(ins.con_id, unit)
        base = round(ins.base_price / ins.min_tick)
        step = max(1, base // 15_000)
        scale = step * (1 + (h >> 8) % 2)
        x = 0.0
        for amp, period in LEVEL_OCTAVES:
            cell, offset = divmod(unit, period)
            a = self._knot(ins.con_id, period, cell)
            b = self._knot(ins.con_id, period, cell + 1)
            t = offset / period
            x += amp * (a + (b - a) * t * t * (3 - 2 * t))
        floor = 2 * step * self._max_abs + ins.spread_ticks + 1
        sign = 1 if (h >> 16) & 1 else -1
        return pattern, sign * scale, max(round(base * (1 + x)), floor)

    def _knot_uncached(self, con_id: int, period: int, cell: int) -> float:
        """The slow level's value at a lattice point, in [-1, 1]."""
        return mix(self.seed, con_id, 0x4C56, period, cell) / MASK64 * 2 - 1

    def last_ticks(self, con_id: int, tick: int) -> int:
        """The last price at a tick, in min ticks (exact integer)."""
        ins = by_con_id(con_id)
        unit, j = divmod(tick, UNIT_TICKS)
        pattern, scale, level = self._unit(ins, unit)
        return level + scale * pattern.values[j]

    def _aggregate(self, ins: Instrument, a: int, b: int) -> _Agg | None:
        """Aggregate of ticks [a, b); None when empty."""
        total: _Agg | None = None
        while a < b:
            unit, ja = divmod(a, UNIT_TICKS)
            jb = min(UNIT_TICKS, ja + (b - a))
            if ja == 0 and jb == UNIT_TICKS:
                part = self._whole_unit(ins, unit)
                total = part if total is None else total + part
                a += UNIT_TICKS
                continue
            part = self._span(ins, unit, ja, jb)
            total = part if total is None else total + part
            a += jb - ja
        return total

    def _volume(self, con_id: int, a: int, b: int) -> int:
        """Shares traded in ticks [a, b): only the patterns' sizes matter, not the prices."""
        if b <= a:
            return 0
        (ua, ja), (ub, jb) = divmod(a, UNIT_TICKS), divmod(b, UNIT_TICKS)
        if ua == ub:
            sizes = self._pattern_of(con_id, ua).sum_size
            return sizes[jb] - sizes[ja]
        head = self._pattern_of(con_id, ua).sum_size
        tail = self._pattern_of(con_id, ub).sum_size
        return head[UNIT_TICKS] - head[ja] + self._units_volume(con_id, ua + 1, ub) + tail[jb]

    def _pattern_of(self, con_id: int, unit: int) -> _Pattern:
        return self._patterns[mix(self.seed, con_id, unit) % PATTERNS]

    def _units_volume_uncached(self, con_id: int, first: int, end: int) -> int:
        return sum(self._pattern_of(con_id, u).sum_size[UNIT_TICKS] for u in range(first, end))

    def _whole_unit_uncached(self, ins: Instrument, unit: int) -> _Agg:
        return self._span(ins, unit, 0, UNIT_TICKS)

    def _span(self, ins: Instrument, unit: int, ja: int, jb: int) -> _Agg:
        """Aggregate of offsets [ja, jb) of one unit."""
        p, scale, level = self._unit(ins, unit)
        lo, hi = p.extremes(ja, jb)
        if scale < 0:
            lo, hi = hi, lo
        n = jb - ja
        vol = p.sum_size[jb] - p.sum_size[ja]
        return _Agg(
            level + scale * p.values[ja],
            level + scale * p.values[jb - 1],
            level + scale * lo,
            level + scale * hi,
            n,
            vol,
            level * vol + scale * (p.sum_value_size[jb] - p.sum_value_size[ja]),
            level * n + scale * (p.sum_value[jb] - p.sum_value[ja]),
        )

    # ---------------------------------------------------------------- public API

    def trade(self, con_id: int, tick: int) -> Trade:
        ins = by_con_id(con_id)
        unit, j = divmod(tick, UNIT_TICKS)
        pattern, scale, level = self._unit(ins, unit)
        return Trade(
            tick, tick * self.tick_ns, _price(ins, level + scale * pattern.values[j]), pattern.sizes[j]
        )

    def trades(self, con_id: int, start_ns: int, end_ns: int) -> Iterator[Trade]:
        """Every trade with start_ns <= time < end_ns, in order."""
        for tick in range(self.first_tick_at_or_after(start_ns), self.first_tick_at_or_after(end_ns)):
            yield self.trade(con_id, tick)

    def quote(self, con_id: int, now_ns: int) -> Quote:
        """The market as of now_ns (its last tick at or before now)."""
        ins = by_con_id(con_id)
        tick = self.tick_index(now_ns)
        last = self.last_ticks(con_id, tick)
        bid = last - 1
        h = mix(self.seed, ins.con_id, 0x5155, tick)
        unit, j = divmod(tick, UNIT_TICKS)
        pattern, _, _ = self._unit(ins, unit)
        day = self.first_tick_at_or_after(_day_start_ns(ins, tick * self.tick_ns))
        return Quote(
            tick=tick,
            time_ns=tick * self.tick_ns,
            bid=_price(ins, bid),
            ask=_price(ins, bid + ins.spread_ticks),
            last=_price(ins, last),
            bid_size=100 * (1 + h % 20),
            ask_size=100 * (1 + (h >> 16) % 20),
            last_size=pattern.sizes[j],
            volume=self._volume(ins.con_id, day, tick + 1),
        )

    def bar(self, con_id: int, start_ns: int, end_ns: int, what_to_show: str = "TRADES") -> Bar | None:
        """The bar over start_ns <= time < end_ns; None when no tick falls inside (IB skips those)."""
        return self.bar_over(con_id, ((start_ns, end_ns),), what_to_show)

    def bar_over(
        self, con_id: int, spans: Iterable[tuple[int, int]], what_to_show: str = "TRADES"
    ) -> Bar | None:
        """One bar over several [start, end) time spans in order (a week of sessions), dated at
        the first span's start; None when no tick falls inside any of them."""
        ins = by_con_id(con_id)
        if what_to_show not in WHAT_TO_SHOW:
            raise ValueError(f"what_to_show must be one of {', '.join(WHAT_TO_SHOW)}, got {what_to_show!r}")
        agg: _Agg | None = None
        start_ns: int | None = None
        for span_start, span_end in spans:
            if start_ns is None:
                start_ns = span_start
            part = self._aggregate(
                ins, self.first_tick_at_or_after(span_start), self.first_tick_at_or_after(span_end)
            )
            if part is not None:
                agg = part if agg is None else agg + part
        if agg is None or start_ns is None:
            return None
        px = functools.partial(_price, ins)
        if what_to_show in ("TRADES", "ADJUSTED_LAST"):
            wap = px(agg.value_volume / agg.volume)
            return Bar(
                start_ns, px(agg.first), px(agg.high), px(agg.low), px(agg.last), agg.volume, wap, agg.n
            )
        bid, ask = -1, ins.spread_ticks - 1  # offsets from the last price, in ticks
        if what_to_show == "BID_ASK":
            # IB: open = average bid, high = highest ask, low = lowest bid, close = average ask.
            mean = agg.value / agg.n
            return Bar(
                start_ns, px(mean + bid), px(agg.high + ask), px(agg.low + bid), px(mean + ask), -1, -1.0, -1
            )
        shift = {"BID": bid, "ASK": ask, "MIDPOINT": (bid + ask) / 2}[what_to_show]
        return Bar(
            start_ns,
            px(agg.first + shift),
            px(agg.high + shift),
            px(agg.low + shift),
            px(agg.last + shift),
            -1,
            -1.0,
            -1,
        )

    def bars(
        self, con_id: int, start_ns: int, end_ns: int, bar_seconds: int, what_to_show: str = "TRADES"
    ) -> list[Bar]:
        """Fixed-width bars aligned to multiples of bar_seconds since the epoch, covering
        [start_ns, end_ns); the first and last bars are clipped to that range; empty bars skipped."""
        if bar_seconds <= 0:
            raise ValueError(f"bar_seconds must be > 0, got {bar_seconds}")
        width = bar_seconds * NS
        out = []
        t = start_ns - start_ns % width
        while t < end_ns:
            bar = self.bar(con_id, max(t, start_ns), min(t + width, end_ns), what_to_show)
            if bar is not None:
                out.append(Bar(t, bar.open, bar.high, bar.low, bar.close, bar.volume, bar.wap, bar.count))
            t += width
        return out


def _price(ins: Instrument, ticks: float) -> float:
    """Integer min ticks to a price, rounded so the decimal text is what a person writes."""
    return round(ticks * ins.min_tick, 6)


@functools.lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _day_start_ns(ins: Instrument, t_ns: int) -> int:
    """Local midnight (instrument's time zone) of the day that contains t_ns."""
    zone = _zone(ins.time_zone_id)
    local = dt.datetime.fromtimestamp(t_ns // NS, zone)
    midnight = dt.datetime.combine(local.date(), dt.time(), zone)
    return int(midnight.timestamp()) * NS
