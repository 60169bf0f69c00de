"""The simulated broker: orders, matching and the day's executions, as pure data.

The broker outlives sessions, as IB's servers do: an order stays bound to the client id that
placed it and keeps working (and filling) while no session of that client is up. Nothing here
talks to a client: every operation returns the events the owner of an order would hear, and
orderflow.py delivers them to whichever session is up.

Matching is against the seeded price process (prices.py), tick by tick: a MKT order, a
marketable LMT (a BUY at or above the ask, a SELL at or below the bid) and a triggered STP take
the quote on arrival; a resting LMT fills at its limit on the first later tick whose quote
reaches it; a STP triggers when the last price reaches its stop (BUY: at or above, SELL: at or
below) and then fills at that tick's ask or bid. With `partial_fills` a fill takes at most the
size quoted (taking) or traded (resting) at its tick, and the rest waits for later ticks.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from . import wire
from .accounts import AccountBook, earlier_fill
from .contracts import ContractSpec
from .instruments import Instrument
from .prices import NS, PriceProcess, Quote

ORDER_TYPES = ("MKT", "LMT", "STP")
TIFS = ("DAY", "GTC")
WORKING = ("PreSubmitted", "Submitted")
FIRST_PERM_ID = 900_000_001
MAX_CATCHUP_TICKS = 100_000  # a clock jump beyond this matches only the latest ticks
COMMISSION_PER_SHARE = 0.005
MIN_COMMISSION = 1.0

TEXT_201 = "Order rejected - reason:"
TEXT_202 = "Order Canceled - reason:"


@dataclass(frozen=True, slots=True)
class Ticket:
    """What one placeOrder asks for (parsed by orderwire.parse_place_order); the desk resolves
    its contract to the instrument the broker trades."""

    order_id: int
    contract: ContractSpec
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    account: str
    order_ref: str
    outside_rth: bool = False
    transmit: bool = True


@dataclass(slots=True)
class Order:
    """One order at the broker, as openOrder, orderStatus and completedOrder report it."""

    client_id: int
    order_id: int
    perm_id: int
    ins: Instrument
    account: str
    action: str
    quantity: float
    order_type: str
    lmt_price: float | None
    aux_price: float | None
    tif: str
    order_ref: str
    outside_rth: bool
    since_tick: int  # matching starts after this tick
    status: str = "PreSubmitted"
    filled: float = 0.0
    avg_fill_price: float = 0.0
    last_fill_price: float = 0.0
    triggered: bool = False  # a STP whose stop was reached
    placed: int = 1  # placeOrder messages for this order: the first and each modification
    fills: int = 0
    completed_time: str = ""
    completed_status: str = ""

    @property
    def buy(self) -> bool:
        return self.action == "BUY"

    @property
    def remaining(self) -> float:
        return self.quantity - self.filled

    @property
    def working(self) -> bool:
        return self.status in WORKING


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The owner hears openOrder (when `open_order`) and orderStatus for this state of `order`."""

    order: Order
    open_order: bool = True


@dataclass(frozen=True, slots=True)
class Execution:
    """The owner hears execDetails, orderStatus, openOrder once done, and the commission."""

    order: Order
    fill: wire.Fill


@dataclass(frozen=True, slots=True)
class OrderError:
    """An ERR_MSG to the client id about its order id (reject, cancel confirmation, ...)."""

    client_id: int
    order_id: int
    code: int
    text: str


Event = StatusChange | Execution | OrderError


@dataclass(frozen=True, slots=True)
class ExecutionFilter:
    """reqExecutions' filter; empty fields and client id 0 match everything."""

    client_id: int = 0
    account: str = ""
    time: str = ""  # "YYYYmmdd HH:MM:SS[ zone]": executions at or after it
    symbol: str = ""
    sec_type: str = ""
    exchange: str = ""
    side: str = ""  # BUY / SELL

    def matches(self, f: wire.Fill) -> bool:
        return (
            (not self.client_id or f.client_id == self.client_id)
            and (not self.account or f.account == self.account)
            and (not self.time or _parse_time(f.time) >= _parse_time(self.time))
            and (not self.symbol or f.ins.symbol.upper() == self.symbol.upper())
            and (not self.sec_type or f.ins.sec_type.upper() == self.sec_type.upper())
            and (not self.exchange or self.exchange.upper() in (f.ins.exchange, f.ins.primary_exchange))
            and (not self.side or ("BOT" if self.side.upper() == "BUY" else "SLD") == f.side)
        )


def _parse_time(text: str) -> datetime:
    """IB's 'YYYYmmdd HH:MM:SS [zone]' or 'YYYYmmdd-HH:MM:SS' (no zone: UTC)."""
    parts = text.replace("-", " ", 1).split()
    zone = ZoneInfo(parts[2]) if len(parts) > 2 else UTC
    return datetime.strptime(" ".join(parts[:2]), "%Y%m%d %H:%M:%S").replace(tzinfo=zone)


def ib_time(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / NS, UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"


class Broker:
    """Orders by (client id, order id), matched against `prices`; fills move `book`."""

    def __init__(self, book: AccountBook, prices: PriceProcess, start_ns: int) -> None:
        self.book = book
        self.prices = prices
        self.partial_fills = False
        self.orders: dict[tuple[int, int], Order] = {}
        self.placements: Counter[str] = Counter()  # placeOrder messages per orderRef, whatever came of them
        day = ib_time(start_ns)[:8]
        self.executions: list[wire.Fill] = [earlier_fill(a, n, day) for n, a in enumerate(book.accounts)]
        self._last_id: dict[int, int] = {}  # client id -> highest order id it used
        self._perm_ids = itertools.count(FIRST_PERM_ID)
        self._last_tick = prices.tick_index(start_ns)

    # -------------------------------------------------------------------- observables

    def orders_by_ref(self, order_ref: str) -> list[Order]:
        return [o for o in self.orders.values() if o.order_ref == order_ref]

    def working_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if o.working]

    def open_orders(self, client_id: int | None) -> list[Order]:
        """Working orders of one client id (None: every client), oldest first."""
        return [o for o in self.working_orders() if client_id is None or o.client_id == client_id]

    def completed_orders(self) -> list[Order]:
        return [o for o in self.orders.values() if not o.working]

    def executions_matching(self, f: ExecutionFilter) -> list[wire.Fill]:
        return [x for x in self.executions if f.matches(x)]

    def next_valid_id(self, client_id: int) -> int:
        """Above every order id this client id has used (IB's rule across sessions)."""
        return self._last_id.get(client_id, 0) + 1

    # -------------------------------------------------------------------- orders

    def place(self, client_id: int, t: Ticket, ins: Instrument, now_ns: int) -> list[Event]:
        """A placeOrder for `ins`: a new order, or a modification of this client's working order."""
        self._count(client_id, t)
        problem = _invalid(t)
        if problem:
            return [OrderError(client_id, t.order_id, 201, TEXT_201 + problem)]
        old = self.orders.get((client_id, t.order_id))
        if old is not None:
            return self._modify(old, t, ins, now_ns)
        o = Order(
            client_id,
            t.order_id,
            next(self._perm_ids),
            ins,
            t.account,
            t.action,
            t.quantity,
            t.order_type,
            t.lmt_price,
            t.aux_price,
            t.tif,
            t.order_ref,
            t.outside_rth,
            since_tick=self.prices.tick_index(now_ns),
        )
        self.orders[(client_id, t.order_id)] = o
        events: list[Event] = [StatusChange(replace(o))]
        o.status = "Submitted"
        events.append(StatusChange(replace(o)))
        return events + self._take(o, now_ns)

    def reject(self, client_id: int, t: Ticket, reason: str) -> list[Event]:
        """Refuse a placeOrder outright (the order never exists)."""
        self._count(client_id, t)
        return [OrderError(client_id, t.order_id, 201, TEXT_201 + reason)]

    def discard(self, client_id: int, t: Ticket) -> None:
        """A placeOrder lost on its way in: counted as sent, the order never exists."""
        self._count(client_id, t)

    def _count(self, client_id: int, t: Ticket) -> None:
        self.placements[t.order_ref] += 1
        self._last_id[client_id] = max(self._last_id.get(client_id, 0), t.order_id)

    def _modify(self, o: Order, t: Ticket, ins: Instrument, now_ns: int) -> list[Event]:
        if o.status == "Filled":
            return [OrderError(o.client_id, o.order_id, 104, "Can't modify a filled order.")]
        if not o.working:
            return [OrderError(o.client_id, o.order_id, 103, "Duplicate order id")]
        if ins.con_id != o.ins.con_id or t.action != o.action or t.account != o.account:
            return [
                OrderError(
                    o.client_id, o.order_id, 105, "Order being modified does not match original order."
                )
            ]
        if t.quantity < o.filled:
            return [OrderError(o.client_id, o.order_id, 201, TEXT_201 + "quantity below the filled quantity")]
        o.quantity, o.order_type, o.tif, o.order_ref = t.quantity, t.order_type, t.tif, t.order_ref
        o.lmt_price, o.aux_price, o.outside_rth = t.lmt_price, t.aux_price, t.outside_rth
        o.placed += 1
        o.since_tick = max(o.since_tick, self.prices.tick_index(now_ns))
        return [StatusChange(replace(o)), *self._take(o, now_ns)]

    def cancel(self, client_id: int, order_id: int, now_ns: int) -> list[Event]:
        o = self.orders.get((client_id, order_id))
        if o is None:
            text = f"OrderId {order_id} that needs to be cancelled is not found."
            return [OrderError(client_id, order_id, 10147, text)]
        if not o.working:
            text = f"OrderId {order_id} that needs to be cancelled cannot be cancelled, state: {o.status}."
            return [OrderError(client_id, order_id, 10148, text)]
        return self._cancelled(o, now_ns, "Cancelled by Trader")

    def cancel_all(self, now_ns: int, why: str = "Cancelled by Trader") -> list[Event]:
        """reqGlobalCancel: every working order of every client."""
        return [e for o in self.working_orders() for e in self._cancelled(o, now_ns, why)]

    def expire_day_orders(self, now_ns: int) -> list[Event]:
        """The trading day ends: working DAY orders are cancelled, GTC orders keep working."""
        return [
            e
            for o in self.working_orders()
            if o.tif == "DAY"
            for e in self._cancelled(o, now_ns, "Cancelled by System")
        ]

    def _cancelled(self, o: Order, now_ns: int, why: str) -> list[Event]:
        o.status = "Cancelled"
        o.completed_time, o.completed_status = ib_time(now_ns), why
        return [
            StatusChange(replace(o), open_order=False),
            OrderError(o.client_id, o.order_id, 202, TEXT_202),
        ]

    # -------------------------------------------------------------------- matching

    def match(self, now_ns: int) -> list[Event]:
        """Walk every tick since the last call and fill what the market reached."""
        now_tick = self.prices.tick_index(now_ns)
        working = sorted(self.working_orders(), key=lambda o: o.perm_id)
        events: list[Event] = []
        if working:
            first = max(self._last_tick, min(o.since_tick for o in working), now_tick - MAX_CATCHUP_TICKS) + 1
            for tick in range(first, now_tick + 1):
                quotes: dict[int, Quote] = {}
                for o in working:
                    if o.working and o.since_tick < tick:
                        q = quotes.get(o.ins.con_id)
                        if q is None:
                            q = quotes[o.ins.con_id] = self.prices.quote(
                                o.ins.con_id, self.prices.tick_time_ns(tick)
                            )
                        events += self._at_tick(o, q, resting=True)
        self._last_tick = max(self._last_tick, now_tick)
        return events

    def force_fill(self, o: Order, now_ns: int) -> list[Event]:
        """Fill what remains of a working order now, as if the market had reached it: a LMT
        at its limit, anything else at the quote."""
        q = self.prices.quote(o.ins.con_id, now_ns)
        price = (
            o.lmt_price if o.order_type == "LMT" and o.lmt_price is not None else (q.ask if o.buy else q.bid)
        )
        return self._fill(o, o.remaining, price, now_ns)

    def _take(self, o: Order, now_ns: int) -> list[Event]:
        """An order arriving (or modified): what it takes from the quote right now."""
        return self._at_tick(o, self.prices.quote(o.ins.con_id, now_ns), resting=False, at_ns=now_ns)

    def _at_tick(self, o: Order, q: Quote, *, resting: bool, at_ns: int | None = None) -> list[Event]:
        touch = q.ask if o.buy else q.bid
        if o.order_type == "STP" and not o.triggered:
            assert o.aux_price is not None
            o.triggered = q.last >= o.aux_price if o.buy else q.last <= o.aux_price
        if o.order_type == "LMT":
            assert o.lmt_price is not None
            if not (touch <= o.lmt_price if o.buy else touch >= o.lmt_price):
                return []
            price = o.lmt_price if resting else touch
            cap = q.last_size if resting else (q.ask_size if o.buy else q.bid_size)
        elif o.order_type == "MKT" or o.triggered:
            price, cap = touch, (q.ask_size if o.buy else q.bid_size)
        else:
            return []
        qty = min(o.remaining, cap) if self.partial_fills else o.remaining
        return self._fill(o, qty, price, q.time_ns if at_ns is None else at_ns)

    def _fill(self, o: Order, qty: float, price: float, t_ns: int) -> list[Event]:
        commission = max(MIN_COMMISSION, round(COMMISSION_PER_SHARE * qty, 2))
        realized = self.book.apply_fill(o.account, o.ins, o.buy, qty, price, commission)
        o.avg_fill_price = round((o.avg_fill_price * o.filled + price * qty) / (o.filled + qty), 6)
        o.filled += qty
        o.last_fill_price = price
        o.fills += 1
        stamp = ib_time(t_ns)
        if math.isclose(o.filled, o.quantity):
            o.status, o.completed_time = "Filled", stamp
            o.completed_status = f"Filled Size: {_qty(o.filled)}"
        fill = wire.Fill(
            exec_id=f"0000e0d5.{o.perm_id:08x}.01.{o.fills:02d}",
            account=o.account,
            ins=o.ins,
            side="BOT" if o.buy else "SLD",
            shares=qty,
            price=price,
            time=stamp,
            order_id=o.order_id,
            perm_id=o.perm_id,
            client_id=o.client_id,
            commission=commission,
            order_ref=o.order_ref,
            cum_qty=o.filled,
            avg_price=o.avg_fill_price,
            realized_pnl=realized,
        )
        self.executions.append(fill)
        return [Execution(replace(o), fill)]


def _qty(q: float) -> str:
    return str(int(q)) if q == int(q) else str(q)


def _invalid(t: Ticket) -> str | None:
    """Why IB would refuse this ticket outright, or None."""
    if t.order_type not in ORDER_TYPES:
        return f"the simulator takes {', '.join(ORDER_TYPES)} orders, not {t.order_type!r}"
    if t.action not in ("BUY", "SELL"):
        return f"action must be BUY or SELL, not {t.action!r}"
    if not t.quantity > 0 or math.isinf(t.quantity):
        return f"order quantity must be positive, not {t.quantity}"
    if t.tif not in TIFS:
        return f"time in force must be DAY or GTC, not {t.tif!r}"
    if t.order_type == "LMT" and (t.lmt_price is None or t.lmt_price <= 0):
        return "a LMT order needs a positive limit price"
    if t.order_type == "STP" and (t.aux_price is None or t.aux_price <= 0):
        return "a STP order needs a positive stop price"
    if not t.transmit:
        return "orders held with transmit=0 are not supported by the simulator"
    return None
