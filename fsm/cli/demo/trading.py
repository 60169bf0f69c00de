"""What the demo's trader does with its manager: a quote stream read through the whole day, and
orders placed into faults, with every fill collected as `m.executions()` delivers it.

Both only record and tell what the manager handed over; the day's steps decide what to wait
for, and `checks()` judges the record at the end (every Gap followed by prices, nothing
repeated or out of order, no fill delivered twice, at most one order per ref at the Gateway).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from fsm import ConnectionManager, Execution, Gap, IbgwError, OrderNotPlaced, OrderState, Quote
from fsm.cli.demo.record import Check, Kind
from fsm.cli.demo.waits import StepFailed, first
from gatewaysim import GatewaySim

if TYPE_CHECKING:
    from fsm.cli.demo.story import Story

# m.metrics() keys the summary reports for the stream (read while it is still open).
STREAM_METRICS = ("streams_restored", "stream_gaps", "longest_gap_s")


def _price(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def describe_quote(q: Quote) -> str:
    return f"bid {_price(q.bid)}  ask {_price(q.ask)}  last {_price(q.last)}"


def span(g: Gap) -> float:
    """How long the flow was interrupted (s)."""
    return (g.until - g.since).total_seconds()


class QuoteTape:
    """The trader's quote stream (`async with m.stream("quotes", symbol=...)`), read as it comes:
    every Quote and Gap in order. The story hears the first quote, each Gap and the prices after
    it; the live view reads the latest quote."""

    def __init__(self, story: Story, symbol: str) -> None:
        self.story = story
        self.symbol = symbol
        self.items: list[Quote | Gap] = []
        self.quotes = 0
        self.last: Quote | None = None
        self.last_ns: int | None = None  # monotonic ns when the last quote arrived
        self.ended: str | None = None  # why the stream stopped (closed by the trader, or an error)
        self.metrics: dict[str, Any] = {}  # the manager's STREAM_METRICS when the stream was closed
        self._subscribed = False
        self._scope = anyio.CancelScope()
        self._done = anyio.Event()

    @property
    def gaps(self) -> list[Gap]:
        return [e for e in self.items if isinstance(e, Gap)]

    async def run(
        self, m: ConnectionManager, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Subscribe (a refusal is raised to the caller of `tg.start`), then read until closed."""
        try:
            with self._scope:
                async with m.stream("quotes", symbol=self.symbol) as s:
                    self._subscribed = True
                    task_status.started()
                    async for entry in s:
                        self._take(entry)
        except IbgwError as exc:  # the manager shut down under it, or a late refusal
            if not self._subscribed:
                raise
            self.ended = f"{type(exc).__name__}: {exc}"
        finally:
            self._done.set()
            self.story.pulse.wake()

    async def one_quote(self, m: ConnectionManager, *, timeout: float) -> Quote:
        """A glance at the market: a stream of its own, left after its first quote."""
        self.story.say(
            f'the trader reads a quote (m.stream("quotes", symbol="{self.symbol}"), left after one)',
            Kind.ACTION,
        )
        with anyio.fail_after(timeout):
            async with m.stream("quotes", symbol=self.symbol) as s:
                async for entry in s:
                    if isinstance(entry, Quote):
                        self.story.say(f"quotes {self.symbol}: {describe_quote(entry)}", Kind.QUOTE)
                        return entry
        raise StepFailed(f"the quote stream for {self.symbol} ended before its first quote")

    async def close(self, m: ConnectionManager) -> None:
        """Leave the stream (the manager unsubscribes it), keeping the manager's count of it."""
        metrics = m.metrics()
        self.metrics = {k: metrics[k] for k in STREAM_METRICS}
        self._scope.cancel()
        await self._done.wait()
        self.ended = self.ended or "closed by the trader"
        self.story.say(
            f"quotes {self.symbol}: stream left after {self.quotes} quotes; m.metrics(): "
            + ", ".join(f"{k} {v:g}" for k, v in self.metrics.items()),
            Kind.QUOTE,
        )

    def _take(self, entry: Quote | Gap | object) -> None:
        say, t = self.story.say, self.story.t_of
        if isinstance(entry, Gap):
            self.items.append(entry)
            say(
                f"quotes {self.symbol}: Gap {span(entry):.2f} s ({entry.reason}): no quote between "
                f"t={t(entry.since):.3f} and t={t(entry.until):.3f}",
                Kind.QUOTE,
            )
        elif isinstance(entry, Quote):
            after_gap = bool(self.items) and isinstance(self.items[-1], Gap)
            self.items.append(entry)
            self.quotes += 1
            self.last, self.last_ns = entry, time.monotonic_ns()
            if self.quotes == 1:
                say(f"quotes {self.symbol}: first quote {describe_quote(entry)}", Kind.QUOTE)
            elif after_gap:
                say(f"quotes {self.symbol}: prices again {describe_quote(entry)}", Kind.QUOTE)
        self.story.pulse.wake()

    async def resumed(self, gaps: int, *, timeout: float) -> Gap:
        """Until the `gaps`-th Gap has come and two quotes after it (the flow is back)."""

        def found() -> Gap | None:
            idx = [i for i, e in enumerate(self.items) if isinstance(e, Gap)]
            if len(idx) < gaps or sum(isinstance(e, Quote) for e in self.items[idx[gaps - 1] :]) < 2:
                return None
            gap = self.items[idx[gaps - 1]]
            assert isinstance(gap, Gap)
            return gap

        return await first(
            self.story.pulse,
            found,
            timeout=timeout,
            failure=lambda: (
                f"quotes {self.symbol}: no prices after gap {gaps} within {timeout:g} s "
                f"({len(self.gaps)} gap(s) so far, {self.ended or 'stream open'})"
            ),
        )

    async def first_quote(self, *, timeout: float) -> Quote:
        return await first(
            self.story.pulse,
            lambda: self.last,
            timeout=timeout,
            failure=lambda: f"no quote for {self.symbol} within {timeout:g} s",
        )

    @property
    def every_gap_followed(self) -> bool:
        """Each Gap is followed at once by the quote that ends it."""
        items = self.items
        return all(
            i + 1 < len(items) and isinstance(nxt := items[i + 1], Quote) and nxt.time == e.until
            for i, e in enumerate(items)
            if isinstance(e, Gap)
        )

    @property
    def in_order(self) -> bool:
        """No quote repeated or out of order: their times strictly increase."""
        times = [e.time for e in self.items if isinstance(e, Quote)]
        return all(a < b for a, b in itertools.pairwise(times))

    def checks(self) -> tuple[Check, ...]:
        gaps = self.gaps
        out = [
            Check(
                f"quote stream: every Gap followed by prices again ({len(gaps)} gaps)",
                self.every_gap_followed,
            ),
            Check(f"quote stream: no quote repeated or out of order ({self.quotes} quotes)", self.in_order),
        ]
        if self.metrics:  # read when the trader left the stream
            out.append(
                Check(
                    "quote stream: the manager's longest_gap_s is the longest Gap the trader saw",
                    self.metrics["longest_gap_s"] == max((span(g) for g in gaps), default=0.0),
                )
            )
        return tuple(out)

    def summary(self) -> list[str]:
        gaps = self.gaps
        longest = max(gaps, key=span, default=None)
        followed = (
            "each followed by prices again" if self.every_gap_followed else "NOT all followed by prices"
        )
        order = "none repeated or out of order" if self.in_order else "NOT in order"
        out = [
            f"quote stream {self.symbol}: {self.quotes} quotes ({order}), {len(gaps)} Gaps "
            f"({', '.join(g.reason for g in gaps) or 'none'}), {followed}"
        ]
        if self.metrics:
            out.append(
                f"streams restored: {self.metrics['streams_restored']} (re-subscribed by the manager); "
                f"longest gap: {self.metrics['longest_gap_s']:.2f} s"
                + (f" ({longest.reason})" if longest is not None else "")
            )
        return out


class Outcome(StrEnum):
    PLACED = "placed"
    RESOLVED = "placed, resolved after a crash"
    NOT_PLACED = "not placed"


@dataclass(frozen=True, slots=True)
class OrderCall:
    """One place_order call and its one outcome."""

    ref: str
    outcome: Outcome
    state: OrderState | None


class OrderDesk:
    """The trader's order calls and the fills its managers delivered (`m.executions()`)."""

    def __init__(self, story: Story, symbol: str) -> None:
        self.story = story
        self.symbol = symbol
        self.calls: list[OrderCall] = []
        self.fills: list[tuple[int, Execution]] = []  # (the manager's number, the fill), as delivered
        self.recovered = 0  # fills found by reconciliation, over every manager (set by the day)

    def delivered(self, ref: str) -> list[Execution]:
        return [x for _, x in self.fills if x.order_ref == ref]

    def count(self, outcome: Outcome) -> int:
        return sum(c.outcome == outcome for c in self.calls)

    @property
    def placed(self) -> int:
        return self.count(Outcome.PLACED) + self.count(Outcome.RESOLVED)

    @property
    def fills_delivered(self) -> int:
        """Distinct executions delivered."""
        return len({x.exec_id for _, x in self.fills})

    @property
    def delivered_twice(self) -> int:
        """Deliveries of an execution already delivered (must stay 0)."""
        return len(self.fills) - self.fills_delivered

    def resting(self, ref: str, limit: float) -> dict[str, Any]:
        """place_order arguments: BUY 10 at `limit`, far below the market, so it rests."""
        return {
            "symbol": self.symbol,
            "action": "BUY",
            "quantity": 10.0,
            "order_type": "LMT",
            "limit_price": limit,
            "order_ref": ref,
        }

    async def place(
        self,
        m: ConnectionManager,
        ref: str,
        limit: float,
        *,
        timeout: float,
        outcome: Outcome = Outcome.PLACED,
    ) -> OrderState:
        st = await m.place_order(**self.resting(ref, limit), timeout=timeout)
        self.calls.append(OrderCall(ref, outcome, st))
        self.story.say(
            f"place_order {ref!r} -> {st.status} (order id {st.order_id}, perm id {st.perm_id}): "
            f"{outcome.value}",
            Kind.ORDER,
        )
        return st

    async def place_lost(
        self, m: ConnectionManager, ref: str, limit: float, *, timeout: float
    ) -> OrderNotPlaced:
        """A placement expected to end as OrderNotPlaced; StepFailed if it ended otherwise."""
        try:
            st = await m.place_order(**self.resting(ref, limit), timeout=timeout)
        except OrderNotPlaced as exc:
            self.calls.append(OrderCall(ref, Outcome.NOT_PLACED, None))
            self.story.say(f"place_order {ref!r} -> OrderNotPlaced: {exc}", Kind.ORDER)
            return exc
        self.calls.append(OrderCall(ref, Outcome.PLACED, st))
        raise StepFailed(
            f"place_order {ref!r} returned {st.status}; the broker should have had no trace of it"
        )

    async def statuses(self, m: ConnectionManager, *, timeout: float) -> list[OrderState]:
        """`order_status` of every order placed today, as the broker has it now."""
        out = []
        for ref in dict.fromkeys(c.ref for c in self.calls if c.state is not None):
            st = await m.order_status(ref, timeout=timeout)
            out.append(st)
            self.story.say(
                f"order_status {ref!r} -> {st.status} {st.filled:g}/{st.quantity:g} (perm id {st.perm_id})",
                Kind.ORDER,
            )
        return out

    async def collect(self, m: ConnectionManager, number: int) -> None:
        """`async for fill in m.executions()` until manager `number` shuts down."""
        try:
            async for x in m.executions():
                self.fills.append((number, x))
                self.story.say(
                    f"fill delivered to trader #{number}: {x.side} {x.shares:g} {x.symbol} @ {x.price:.2f} "
                    f"({x.order_ref!r}, exec {x.exec_id}, commission {x.commission})",
                    Kind.ORDER,
                )
                self.story.pulse.wake()
        except IbgwError as exc:
            self.story.say(f"executions() of trader #{number} ended: {exc}", Kind.ORDER)

    async def fill_delivered(self, ref: str, *, timeout: float) -> Execution:
        return await first(
            self.story.pulse,
            lambda: next(iter(self.delivered(ref)), None),
            timeout=timeout,
            failure=lambda: f"no fill of {ref!r} delivered by m.executions() within {timeout:g} s",
        )

    def checks(self, sim: GatewaySim, client_id: int) -> tuple[Check, ...]:
        ours = {x.exec_id for x in sim.broker.executions if x.client_id == client_id}
        doubled = sorted(r for r in {c.ref for c in self.calls} if len(sim.broker.orders_by_ref(r)) > 1)
        return (
            Check(f"fills delivered twice: {self.delivered_twice}", self.delivered_twice == 0),
            Check(
                f"every fill at the Gateway delivered once ({len(ours)} fill(s) of client id {client_id})",
                {x.exec_id for _, x in self.fills} == ours,
            ),
            Check(
                "at most one order per order_ref at the Gateway"
                + (f" (NOT: {', '.join(doubled)})" if doubled else ""),
                not doubled,
            ),
        )

    def summary(self) -> list[str]:
        return [
            f"orders (readonly=False, against the simulator): {self.placed} placed, "
            f"{self.count(Outcome.RESOLVED)} resolved after a crash, "
            f"{self.count(Outcome.NOT_PLACED)} not placed (send lost; a retry was safe)",
            f"fills: {self.fills_delivered} delivered, {self.recovered} recovered after the outage, "
            f"delivered twice: {self.delivered_twice}",
        ]
