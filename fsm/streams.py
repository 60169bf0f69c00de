"""Market-data streams on the manager's side: what each consumer asked for, its buffer, and when
the flow broke (a Gap). Pure: no I/O and no waiting; fsm.streaming drives it.

A worker knows nothing that must outlive it, so the manager owns the registry: each open stream
(kind + contract selector) and, for the current worker generation, which worker `sub` feeds it.

The driver's interface (every call returns at once)::

    reg = Registry()
    st = reg.open("quotes", {"symbol": "AAPL"}, capacity=None)   # a StreamState
    cmd = reg.subscribe_now(st)             # Subscribe to send now (the session is up)
    reg.on_subscribed(gen, st, sub, data)   # its answer; gen: the worker generation
    reg.on_subscribe_failed(st, error, permanent=...)
    reg.on_item(gen, sub, item)             # a quote/bar/trade event, converted by item_from_event
    reg.on_stream_error(gen, sub, error, ends=...)  # a stream_error event
    reg.on_break(now, reason)               # the flow broke: worker gone, session lost, 1100
    reg.resubscribe_plan(gen, same_session=...)  # Subscribe/Unsubscribe commands to send
    reg.close(st)                           # the consumer left: an Unsubscribe to send, if any

When to plan: once CONNECTED after a worker respawn or a new session (same_session=False:
every old sub is gone with its session); after 1101 in the same session (same_session=True:
unsubscribe each old sub first, IB dropped them); after 1102 nothing (IB kept them).

Gaps: a break marks every stream that was flowing with since = its last item's time (or the
break's time if it had none) and the reason; the first item accepted afterwards is preceded by
Gap(since, until=that item's time, reason). A new sub's first items at or before the last
delivered time are discarded (counted), so nothing is duplicated or out of order after resuming.

Buffers (one per consumer, never blocking the producer): quotes are conflated, the latest wins
(capacity 1); bars and trades keep the newest `capacity` items (1000 by default) and drop the
oldest. Each drop is counted in `dropped`. Gaps are never dropped: two gaps left adjacent by
dropped items merge into one spanning both.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec

from fsm.errors import IbgwError
from worker.market_protocol import BarEvent, ContractIdentity, DataEvent, QuoteEvent, TradeEvent

__all__ = [
    "BAR_TRADE_CAPACITY",
    "Bar",
    "Buffer",
    "Gap",
    "Quote",
    "Registry",
    "StreamState",
    "Subscribe",
    "Trade",
    "Unsubscribe",
    "item_from_event",
]

Kind = Literal["quotes", "bars_5s", "trades"]
KINDS: Final = ("quotes", "bars_5s", "trades")
BAR_TRADE_CAPACITY: Final = 1000
ORPHANS_PER_SUB: Final = 64  # items kept for a sub whose subscribe answer is still on its way


@dataclass(frozen=True, slots=True)
class Quote:
    """The market after one batch of ticks; None: IB has no value for it yet. `time` is when the
    worker read it; `delayed`: 15-minute-old data (no live permission)."""

    time: dt.datetime
    bid: float | None
    ask: float | None
    last: float | None
    bid_size: float | None
    ask_size: float | None
    last_size: float | None
    volume: float | None
    delayed: bool


@dataclass(frozen=True, slots=True)
class Bar:
    """A 5-second bar; `time` is its start."""

    time: dt.datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int


@dataclass(frozen=True, slots=True)
class Trade:
    """One trade (tick-by-tick "Last"); `time` is when the worker read it."""

    time: dt.datetime
    price: float
    size: float
    exchange: str


@dataclass(frozen=True, slots=True)
class Gap:
    """The flow was interrupted: nothing was delivered between `since` (the last item before,
    or the break) and `until` (the first item after). `reason`: worker_exited, peer_closed,
    connectivity_lost, ... (the manager's reason for leaving CONNECTED)."""

    since: dt.datetime
    until: dt.datetime
    reason: str


Item = Quote | Bar | Trade
Entry = Item | Gap


def item_from_event(name: str, data: Mapping[str, Any]) -> tuple[int, Item]:
    """(sub, item) of a worker event; ValueError if it is not a well-formed stream event."""
    try:
        if name == DataEvent.QUOTE:
            q = msgspec.convert(data, QuoteEvent)
            return q.sub, Quote(
                _time(q.time), q.bid, q.ask, q.last, q.bid_size, q.ask_size, q.last_size, q.volume, q.delayed
            )
        if name == DataEvent.BAR:
            b = msgspec.convert(data, BarEvent)
            return b.sub, Bar(_time(b.time), b.open, b.high, b.low, b.close, b.volume, b.wap, b.count)
        if name == DataEvent.TRADE:
            t = msgspec.convert(data, TradeEvent)
            return t.sub, Trade(_time(t.time), t.price, t.size, t.exchange)
    except msgspec.ValidationError as exc:
        raise ValueError(f"malformed {name} event: {exc}") from None
    raise ValueError(f"{name!r} is not a stream event")


def _time(text: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError(f"time {text!r} has no offset")
    return t


# ------------------------------------------------------------------------------------------
# Buffers


class Buffer:
    """A consumer's queue: newest `capacity` items, gaps kept in order; never blocks a push."""

    __slots__ = ("_entries", "_items", "capacity", "dropped")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self._entries: deque[Entry] = deque()
        self._items = 0

    def __len__(self) -> int:
        return len(self._entries)

    def push(self, item: Item, gap: Gap | None = None) -> None:
        if gap is not None:
            self._entries.append(gap)
        self._entries.append(item)
        self._items += 1
        while self._items > self.capacity:
            self._drop_oldest_item()

    def pop(self) -> Entry | None:
        if not self._entries:
            return None
        e = self._entries.popleft()
        if not isinstance(e, Gap):
            self._items -= 1
        return e

    def _drop_oldest_item(self) -> None:
        entries = self._entries
        i = 0
        while isinstance(entries[i], Gap):
            i += 1
        del entries[i]
        self._items -= 1
        self.dropped += 1
        if 0 < i < len(entries) and isinstance(entries[i], Gap):
            before, after = entries[i - 1], entries[i]
            assert isinstance(before, Gap) and isinstance(after, Gap)
            entries[i - 1] = Gap(before.since, after.until, before.reason)
            del entries[i]


# ------------------------------------------------------------------------------------------
# The registry


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Send `subscribe` with these params for this stream."""

    state: StreamState
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """Send `unsubscribe` for this sub (of the current worker generation)."""

    sub: int


Command = Subscribe | Unsubscribe


@dataclass(eq=False)
class StreamState:
    """One consumer's stream: what it asked for, its buffer, and where its flow stands."""

    id: int
    kind: Kind
    spec: dict[str, Any]
    buffer: Buffer
    sub: int | None = None  # the worker's sub feeding it now (current generation)
    pending: Hashable | None = None  # the generation a subscribe is in flight in
    contract: ContractIdentity | None = None
    delayed: bool = False
    error: IbgwError | None = None  # ends the stream once its buffer is drained
    closed: bool = False
    last_time: dt.datetime | None = None
    broken: tuple[dt.datetime, str] | None = None  # (since, reason) until the next item
    flowing: bool = False  # subscribed at least once (a break concerns it)
    resumed: bool = False  # a new sub feeds it: its first items are checked against last_time
    gaps: int = 0
    discarded: int = 0  # stale items dropped after resuming (duplicates, out of order)
    restored: int = 0  # subscriptions answered after a break
    longest_gap: dt.timedelta = dt.timedelta(0)
    wake: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def dropped(self) -> int:
        """Items this consumer lost to its buffer's bound (quotes: conflated)."""
        return self.buffer.dropped

    def params(self) -> dict[str, Any]:
        return {"stream": self.kind, **self.spec}


class Registry:
    """Every open stream; per worker generation, which sub feeds which stream."""

    def __init__(self) -> None:
        self.streams: dict[int, StreamState] = {}
        self._by_sub: dict[int, StreamState] = {}
        self._gen: Hashable | None = None
        self._orphans: dict[int, list[Item]] = {}
        self._ids = 0
        # what closed streams counted: counters must never go down when a stream is left
        self._closed = {"streams_restored": 0, "stream_gaps": 0, "stream_items_dropped": 0}
        self._closed_longest = dt.timedelta(0)

    def totals(self) -> dict[str, Any]:
        """Counters over every stream ever opened, so a closed stream never lowers them."""
        open_ = self.streams.values()
        longest = max((s.longest_gap for s in open_), default=self._closed_longest)
        return {
            "streams_open": len(self.streams),
            "streams_restored": self._closed["streams_restored"] + sum(s.restored for s in open_),
            "stream_gaps": self._closed["stream_gaps"] + sum(s.gaps for s in open_),
            "stream_items_dropped": self._closed["stream_items_dropped"] + sum(s.dropped for s in open_),
            "longest_gap_s": max(longest, self._closed_longest).total_seconds(),
        }

    # ---- consumers

    def open(self, kind: str, spec: Mapping[str, Any], capacity: int | None = None) -> StreamState:
        if kind not in KINDS:
            raise ValueError(f"stream kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if capacity is None:
            capacity = 1 if kind == "quotes" else BAR_TRADE_CAPACITY
        self._ids += 1
        st = StreamState(self._ids, kind, dict(spec), Buffer(capacity))  # type: ignore[arg-type]
        self.streams[st.id] = st
        return st

    def close(self, st: StreamState) -> list[Command]:
        """The consumer left; the unsubscribe to send (a pending subscribe's sub is unsubscribed
        when its answer comes)."""
        st.closed = True
        if self.streams.pop(st.id, None) is not None:
            self._closed["streams_restored"] += st.restored
            self._closed["stream_gaps"] += st.gaps
            self._closed["stream_items_dropped"] += st.dropped
            self._closed_longest = max(self._closed_longest, st.longest_gap)
        st.wake()
        if st.sub is None:
            return []
        sub, st.sub = st.sub, None
        self._by_sub.pop(sub, None)
        return [Unsubscribe(sub)]

    # ---- subscribing

    def subscribe_now(self, st: StreamState, gen: Hashable) -> Subscribe:
        self._adopt(gen)
        st.pending = gen
        return Subscribe(st, st.params())

    def resubscribe_plan(self, gen: Hashable, *, same_session: bool) -> list[Command]:
        """What to send now that `gen`'s session is up (see the module docstring)."""
        if not same_session:
            self._by_sub.clear()
            self._orphans.clear()
            for st in self.streams.values():
                st.sub = None
        self._adopt(gen)
        out: list[Command] = []
        for st in self.streams.values():
            if st.error is not None or st.pending == gen:
                continue
            if st.sub is not None:
                out.append(Unsubscribe(st.sub))
                self._by_sub.pop(st.sub, None)
                st.sub = None
            st.pending = gen
            out.append(Subscribe(st, st.params()))
        return out

    def on_subscribed(
        self, gen: Hashable, st: StreamState, sub: int, contract: ContractIdentity, delayed: bool
    ) -> list[Command]:
        """The answer to a subscribe; an Unsubscribe to send if the stream is already gone.
        An answer from an older generation is ignored (its sub died with its session)."""
        if gen != self._gen:
            return []
        held = self._orphans.pop(sub, [])
        self._answered(st, gen)
        if st.closed:
            return [Unsubscribe(sub)]
        if st.broken is not None:
            st.restored += 1
        st.sub, st.contract, st.delayed = sub, contract, delayed
        st.flowing = st.resumed = True
        self._by_sub[sub] = st
        for item in held:
            self._accept(st, item)
        return []

    def on_subscribe_failed(
        self, gen: Hashable, st: StreamState, error: IbgwError, *, permanent: bool
    ) -> None:
        """A permanent refusal ends the stream with `error`; a transient one (the session or
        worker went) leaves it for the next plan."""
        self._answered(st, gen)
        if permanent:
            st.error = error
            st.wake()

    # ---- the flow

    def on_item(self, gen: Hashable, sub: int, item: Item) -> bool:
        """Route one item; False if no stream takes it (dropped)."""
        if gen != self._gen:
            return False
        st = self._by_sub.get(sub)
        if st is None:
            if any(s.pending == gen for s in self.streams.values()):  # maybe its answer is on the way
                held = self._orphans.setdefault(sub, [])
                if len(held) < ORPHANS_PER_SUB:
                    held.append(item)
            return False
        return self._accept(st, item)

    def on_stream_error(self, gen: Hashable, sub: int, error: IbgwError, *, ends: bool) -> None:
        """A stream_error event: the stream ends with `error` if the worker ended its feed."""
        st = self._by_sub.get(sub) if gen == self._gen else None
        if st is None or not ends:
            return
        self._by_sub.pop(sub, None)
        st.sub = None
        st.error = error
        st.wake()

    def on_break(self, now: dt.datetime, reason: str) -> None:
        """The flow stopped for every stream (marked once per interruption)."""
        for st in self.streams.values():
            if st.flowing and st.broken is None:
                st.broken = (st.last_time or now, reason)

    # ---- inside

    def _adopt(self, gen: Hashable) -> None:
        if gen != self._gen:
            self._gen = gen
            self._by_sub.clear()
            self._orphans.clear()

    def _answered(self, st: StreamState, gen: Hashable) -> None:
        if st.pending == gen:
            st.pending = None
        if not any(s.pending == self._gen for s in self.streams.values()):
            self._orphans.clear()

    def _accept(self, st: StreamState, item: Item) -> bool:
        last = st.last_time
        if st.resumed and last is not None and item.time <= last:  # a new sub repeating what was delivered
            st.discarded += 1
            return False
        st.resumed = False
        gap = None
        if st.broken is not None:
            since, reason = st.broken
            gap = Gap(since, item.time, reason)
            st.broken = None
            st.gaps += 1
            st.longest_gap = max(st.longest_gap, gap.until - gap.since)
        st.last_time = item.time
        st.buffer.push(item, gap)
        st.wake()
        return True
