"""Streaming market data inside the worker: one Gateway subscription per (stream kind, contract)
shared by every `sub` that asked for it, and the events each sub receives.

- quotes: reqMktData (market data type 3: live where permitted, else delayed and flagged).
  ib_async updates a Ticker once per batch of ticks read from the socket; each batch with
  quote ticks becomes one `quote` event per sub (conflated inside the worker).
- bars_5s: reqRealTimeBars (5 s, TRADES, all hours): one `bar` event per new bar.
- trades: reqTickByTickData "Last": one `trade` per tick. ib_async 2.1.0 stamps these ticks with
  the time it read them (it drops the exchange's own seconds), so `time` is the worker's receipt.

A sub is attached to its feed as the last step of `subscribe`, with no await after it: the
answer is written before any event carrying the sub. Items that arrived while the first sub was
being answered are replayed to it just after the answer (quotes: the latest only); a later sub
of a live quotes feed gets the current quote.

Errors for a feed's request id: 10167 flags it delayed; 354/10089/10090/10168/10197 are missing
permissions (10090, "part of the data", keeps streaming); other errors end the feed. While no
subscribe has been answered they refuse it; afterwards they reach each sub as `stream_error`.
A 1101 (data lost) ends every feed without a cancel (IB dropped them); the manager subscribes
again. A new session (a new IB object) starts with no feeds. Subs outlive their feed until
unsubscribed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ib_async import IB, Contract, RealTimeBarList, TickByTickAllLast, Ticker

from worker import ibapi
from worker.market_protocol import (
    BarEvent,
    ContractIdentity,
    DataCode,
    DataEvent,
    QuoteEvent,
    StreamErrorEvent,
    StreamKind,
    TradeEvent,
)
from worker.pacing import Budget
from worker.protocol import Code, CommandError, Event, event

log = logging.getLogger("worker.feeds")

PERMISSION_CODES: Final = frozenset({354, 10089, 10090, 10168, 10197})
STILL_STREAMING: Final = frozenset({10090})  # "part of the requested data is not subscribed"
DELAYED_CODE: Final = 10167
DATA_LOST_CODE: Final = 1101
IGNORED_CODES: Final = frozenset({300, 10225})  # a cancel IB already forgot; a bust ib_async re-requests
LINE_CODES: Final = frozenset({101, 10190})  # max tickers / max tick-by-tick reached
BACKLOG: Final = 256  # items kept for the first sub while its subscribe is being answered

Item = tuple[str, dict[str, Any]]  # (event name, data without "sub")


def _informational(code: int) -> bool:
    """Farm and query notices: never the end of a data request."""
    return code == 165 or 2100 <= code < 2200


def iso(when: dt.datetime | None) -> str:
    """ISO 8601 with an offset, in UTC (a naive time is taken as UTC)."""
    if when is None:
        when = dt.datetime.now(dt.UTC)
    elif when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC).isoformat()


def _value(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _price(x: float, size: float) -> float | None:
    """IB's "no price" is -1 with size 0 (a side cleared)."""
    v = _value(x)
    return None if v is None or (v == -1.0 and not size) else v


class Feed:
    """One Gateway subscription and the subs that share it."""

    def __init__(
        self, book: FeedBook, kind: StreamKind, identity: ContractIdentity, contract: Contract
    ) -> None:
        self.book = book
        self.kind = kind
        self.identity = identity
        self.contract = contract
        self.subs: set[int] = set()
        self.req_id = 0
        self.delayed = False
        self.alive = True
        self.confirmed = asyncio.Event()  # first data, or a refusal
        self.refusal: CommandError | None = None
        self.backlog: deque[Item] = deque(maxlen=1 if kind == "quotes" else BACKLOG)
        self._ticker: Ticker | None = None
        self._bars: RealTimeBarList | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.kind, self.identity.con_id

    def describe(self) -> str:
        return f"{self.kind} {self.identity.symbol} ({self.identity.con_id})"

    # ---- the Gateway side

    def start(self, ib: IB) -> None:
        if self.kind == "quotes":
            self._ticker = ib.reqMktData(self.contract, "", False, False)
            self.req_id = ibapi.ticker_req_id(ib, self._ticker, "mktData")
            self._ticker.updateEvent += self._on_ticker
        elif self.kind == "trades":
            self._ticker = ib.reqTickByTickData(self.contract, "Last")
            self.req_id = ibapi.ticker_req_id(ib, self._ticker, "Last")
            self._ticker.updateEvent += self._on_ticker
        else:
            self._bars = ib.reqRealTimeBars(self.contract, 5, "TRADES", False)
            self.req_id = self._bars.reqId
            self._bars.updateEvent += self._on_bars

    def cancel(self, ib: IB) -> None:
        """Tell the Gateway (the feed must be alive and the session up)."""
        if self.kind == "quotes":
            ib.cancelMktData(self.contract)
        elif self.kind == "trades":
            ib.cancelTickByTickData(self.contract, "Last")
        elif self._bars is not None:
            ib.cancelRealTimeBars(self._bars)

    def detach(self) -> None:
        """Stop listening to ib_async (a later feed may get the same Ticker object)."""
        self.alive = False
        if self._ticker is not None:
            self._ticker.updateEvent -= self._on_ticker
        if self._bars is not None:
            self._bars.updateEvent -= self._on_bars

    # ---- ib_async callbacks

    def _on_ticker(self, t: Ticker) -> None:
        if self.kind == "quotes":
            if t.ticks:  # tick-by-tick updates of a shared Ticker are the trades feed's
                self.delayed = self.delayed or t.marketDataType in (3, 4)
                self._deliver(DataEvent.QUOTE, self.quote(t))
            return
        for tick in t.tickByTicks:
            if isinstance(tick, TickByTickAllLast):
                data = TradeEvent(
                    sub=0, time=iso(tick.time), price=tick.price, size=tick.size, exchange=tick.exchange
                )
                self._deliver(DataEvent.TRADE, _fields(data))

    def _on_bars(self, bars: RealTimeBarList, has_new_bar: bool) -> None:
        if has_new_bar and bars:
            b = bars[-1]
            data = BarEvent(
                sub=0, time=iso(b.time), open=b.open_, high=b.high, low=b.low, close=b.close,
                volume=float(b.volume), wap=float(b.wap), count=int(b.count),
            )  # fmt: skip
            self._deliver(DataEvent.BAR, _fields(data))

    def quote(self, t: Ticker) -> dict[str, Any]:
        data = QuoteEvent(
            sub=0,
            time=iso(t.time),
            bid=_price(t.bid, t.bidSize),
            ask=_price(t.ask, t.askSize),
            last=_price(t.last, t.lastSize),
            bid_size=_value(t.bidSize),
            ask_size=_value(t.askSize),
            last_size=_value(t.lastSize),
            volume=_value(t.volume),
            delayed=self.delayed,
        )
        return _fields(data)

    def _deliver(self, name: str, data: dict[str, Any]) -> None:
        self.confirmed.set()
        if not self.subs:
            self.backlog.append((name, data))
            return
        for sub in sorted(self.subs):
            self.book.emit(event(name, {**data, "sub": sub}))

    # ---- subs

    def attach(self, sub: int) -> None:
        """The last step of a subscribe: events for `sub` from now on, replayed just after its answer."""
        first = not self.subs
        self.subs.add(sub)
        self.book.subs[sub] = self
        replay: list[Item] = []
        if first and self.backlog:
            replay = list(self.backlog)
            self.backlog.clear()
        elif self.kind == "quotes" and self._ticker is not None and self.confirmed.is_set():
            replay = [(DataEvent.QUOTE, self.quote(self._ticker))]
        if replay:
            asyncio.get_running_loop().call_soon(self._replay, sub, replay)

    def _replay(self, sub: int, items: list[Item]) -> None:
        if sub in self.subs:
            for name, data in items:
                self.book.emit(event(name, {**data, "sub": sub}))


def _fields(data: QuoteEvent | BarEvent | TradeEvent) -> dict[str, Any]:
    out = {f: getattr(data, f) for f in data.__struct_fields__}
    del out["sub"]
    return out


class FeedBook:
    """The feeds of one worker: by key and by request id, the subs, the line budgets."""

    def __init__(self, emit: Callable[[Event], None], lines: int, tick_by_tick: int) -> None:
        self.emit = emit
        self.lines = Budget(lines)
        self.tick_by_tick = Budget(tick_by_tick)
        self.feeds: dict[tuple[str, int], Feed] = {}
        self.by_req: dict[int, Feed] = {}
        self.subs: dict[int, Feed] = {}
        self._sub_ids = itertools.count(1)
        self._ib: IB | None = None
        self._typed = False  # reqMarketDataType(3) sent in this session

    def session(self, ib: IB) -> None:
        """Called before any use: a new session starts with no feeds."""
        if ib is self._ib:
            return
        for feed in list(self.feeds.values()):
            self._end(feed)
        self._ib, self._typed = ib, False
        ib.errorEvent += self._on_error

    def new_sub(self) -> int:
        return next(self._sub_ids)

    def open(self, ib: IB, kind: StreamKind, identity: ContractIdentity, contract: Contract) -> Feed:
        """The live feed for (kind, contract), started if there is none; market_data_lines past a budget."""
        feed = self.feeds.get((kind, identity.con_id))
        if feed is not None:
            return feed
        feed = Feed(self, kind, identity, contract)
        budget = self.tick_by_tick if kind == "trades" else self.lines
        if not budget.acquire(feed.key):
            what = "tick-by-tick streams" if kind == "trades" else "market-data lines"
            raise CommandError(
                DataCode.MARKET_DATA_LINES,
                f"subscribe {feed.describe()}: all {budget.limit} {what} are in use; "
                f"unsubscribe another stream first",
            )
        if kind == "quotes" and not self._typed:
            ib.reqMarketDataType(3)  # live where permitted, else delayed (IB says 10167)
            self._typed = True
        feed.start(ib)
        self.feeds[feed.key] = feed
        self.by_req[feed.req_id] = feed
        return feed

    def unsubscribe(self, ib: IB | None, sub: int) -> None:
        feed = self.subs.pop(sub, None)
        if feed is None:
            raise CommandError(
                DataCode.UNKNOWN_SUBSCRIPTION, f"unsubscribe: no subscription {sub} in this worker"
            )
        feed.subs.discard(sub)
        if feed.subs or not feed.alive:
            return
        if ib is not None and ib is self._ib and ib.isConnected():
            feed.cancel(ib)
        self._end(feed)

    def _end(self, feed: Feed) -> None:
        feed.detach()
        if self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
        if self.by_req.get(feed.req_id) is feed:
            del self.by_req[feed.req_id]
        self.lines.release(feed.key)
        self.tick_by_tick.release(feed.key)
        if not feed.confirmed.is_set():
            feed.confirmed.set()  # a subscribe waiting on it answers now

    def _on_error(self, req_id: int, code: int, message: str, _contract: Any) -> None:
        if code == DATA_LOST_CODE:
            for lost in list(self.feeds.values()):
                self._end(lost)
            return
        feed = self.by_req.get(req_id)
        if feed is None or code in IGNORED_CODES:
            return
        if code == DELAYED_CODE:
            feed.delayed = True
            return
        if _informational(code):
            return
        if not feed.subs:  # no subscribe answered yet: the ones waiting on it are refused
            feed.refusal = CommandError(
                _code_for(code), f"subscribe {feed.describe()}: Gateway error {code}: {message}", ib_code=code
            )
            if code in STILL_STREAMING and self._ib is not None and self._ib.isConnected():
                feed.cancel(self._ib)  # refused to the caller, so not left running at IB
            self._end(feed)
            return
        for sub in sorted(feed.subs):
            self.emit(event(DataEvent.STREAM_ERROR, StreamErrorEvent(sub=sub, code=code, message=message)))
        if code not in STILL_STREAMING:
            self._end(feed)


def _code_for(ib_code: int) -> str:
    if ib_code in PERMISSION_CODES:
        return DataCode.NO_MARKET_DATA_PERMISSION
    if ib_code in LINE_CODES:
        return DataCode.MARKET_DATA_LINES
    if ib_code == 200:
        return DataCode.NO_SECURITY_DEFINITION
    return Code.GATEWAY_ERROR
