"""The data commands (issue 13): qualify, historical_bars, snapshot, subscribe, unsubscribe.

Registered in worker.handlers' registry (importing this module registers them; handlers does).
Typed messages: worker.market_protocol. Streams: worker.feeds. Snapshot: worker.snapshot.

- qualify: reqContractDetails; none -> no_security_definition, several -> ambiguous_contract
  naming each candidate's con_id and primary exchange; the answer is checked against what was
  asked (contract_mismatch otherwise) and cached per selector for the worker's life (conIds do
  not change); concurrent qualifies of one selector wait for the first.
- historical_bars: qualify, then IB's historical pacing kept here (worker.pacing): a request
  that would break it waits for its slot if that comes within its timeout, else fails at once
  with pacing_limit saying when it may run; at most 50 open at once. formatDate 2, so every
  intraday bar time is UTC; daily and longer bars are dated at midnight in the contract's zone.
- subscribe / unsubscribe: see worker.feeds; the line budget comes from IBGW_MARKET_DATA_LINES
  (default 100) and IBGW_TICK_BY_TICK_MAX (default 3).

Every Gateway wait is bounded by the request's timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ib_async import IB, BarData, Contract, ContractDetails

from worker import snapshot as _snapshot  # noqa: F401  (registers `snapshot`)
from worker.feeds import FeedBook, iso
from worker.handlers import Context, Result, registry
from worker.market_protocol import (
    BAR_SECONDS,
    ContractIdentity,
    ContractSpec,
    DataCode,
    HistoricalBar,
    HistoricalBarsParams,
    HistoricalBarsResult,
    QualifyParams,
    SubscribeParams,
    SubscribeResult,
    UnsubscribeParams,
    ib_end_time,
)
from worker.pacing import HistoricalPacer
from worker.protocol import DEFAULT_REQUEST_TIMEOUT, Code, CommandError
from worker.session import Session

log = logging.getLogger("worker.market")

MAX_OPEN_HISTORICAL: Final = 50  # IB: simultaneous historical requests
SUBSCRIBE_SETTLE: Final = 1.0  # s a subscribe waits for its first data or a refusal
DEFAULT_LINES: Final = 100
DEFAULT_TICK_BY_TICK: Final = 3
UTC = dt.UTC


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= 100_000:
        return int(raw)
    if raw:
        log.warning("%s=%r is not a positive count; using %d", name, raw[:40], default)
    return default


@dataclass(frozen=True)
class Qualified:
    identity: ContractIdentity
    contract: Contract
    zone: dt.tzinfo


class Data:
    """The data state of one worker: qualify cache, historical pacing, feeds."""

    def __init__(self, session: Session) -> None:
        self.cache: dict[tuple[Any, ...], Qualified] = {}
        self.pacer = HistoricalPacer()
        self.open_historical = asyncio.Semaphore(MAX_OPEN_HISTORICAL)
        self.feeds = FeedBook(
            session.emit,
            _env_limit("IBGW_MARKET_DATA_LINES", DEFAULT_LINES),
            _env_limit("IBGW_TICK_BY_TICK_MAX", DEFAULT_TICK_BY_TICK),
        )


_DATA: weakref.WeakKeyDictionary[Session, Data] = weakref.WeakKeyDictionary()


def data_of(session: Session) -> Data:
    d = _DATA.get(session)
    if d is None:
        d = _DATA[session] = Data(session)
    return d


@asynccontextmanager
async def _bounded(command: str, timeout: float | None) -> AsyncIterator[asyncio.Timeout]:
    """The request's one deadline; its expiry is request_timeout."""
    limit = DEFAULT_REQUEST_TIMEOUT if timeout is None else timeout
    try:
        async with asyncio.timeout(limit) as cm:
            yield cm
    except TimeoutError:
        raise CommandError(
            Code.REQUEST_TIMEOUT, f"{command}: no answer from the Gateway within {limit:g} s"
        ) from None


def _left(cm: asyncio.Timeout) -> float:
    when = cm.when()
    return max(0.001, (when if when is not None else 0.0) - asyncio.get_running_loop().time())


async def _round_trip(
    s: Session, command: str, start: Any, cm: asyncio.Timeout, key: str | None = None
) -> Any:
    """s.call under the request's deadline (errors classified as every command's are)."""
    return await s.call(command, start, _left(cm) + 1.0, one_at_a_time=key)


# ------------------------------------------------------------------------------------------
# qualify


def _selector(p: ContractSpec) -> tuple[Any, ...]:
    return (
        (p.symbol or "").upper(), p.con_id or 0, p.sec_type.upper(), p.exchange.upper(), p.currency.upper(),
        (p.primary_exchange or "").upper(),
    )  # fmt: skip


def _contract(p: ContractSpec) -> Contract:
    return Contract(
        secType=p.sec_type, conId=p.con_id or 0, symbol=p.symbol or "", exchange=p.exchange,
        currency=p.currency, primaryExchange=p.primary_exchange or "",
    )  # fmt: skip


def _asked(p: ContractSpec) -> str:
    return p.symbol if p.symbol is not None else f"con_id {p.con_id}"


def _identity(c: Contract) -> ContractIdentity:
    return ContractIdentity(
        con_id=c.conId, symbol=c.symbol, local_symbol=c.localSymbol, sec_type=c.secType, currency=c.currency,
        exchange=c.exchange, primary_exchange=c.primaryExchange, trading_class=c.tradingClass,
    )  # fmt: skip


def check_identity(p: ContractSpec, ident: ContractIdentity) -> None:
    """The original system's identity check: IB answered for the contract that was asked for."""
    wrong = []
    if p.con_id is not None and ident.con_id != p.con_id:
        wrong.append(f"con_id {ident.con_id}")
    if p.symbol is not None and ident.symbol.upper() != p.symbol.upper():
        wrong.append(f"symbol {ident.symbol!r}")
    if ident.sec_type.upper() != p.sec_type.upper() or ident.currency.upper() != p.currency.upper():
        wrong.append(f"{ident.sec_type}/{ident.currency}")
    if p.primary_exchange and ident.primary_exchange.upper() != p.primary_exchange.upper():
        wrong.append(f"primary exchange {ident.primary_exchange!r}")
    if ident.con_id <= 0 or not ident.primary_exchange or not ident.trading_class:
        wrong.append("no conId, primary exchange or trading class")
    if ident.sec_type == "STK" and ident.local_symbol.upper() != ident.symbol.upper():
        wrong.append(f"local symbol {ident.local_symbol!r} is not the symbol")
    if wrong:
        raise CommandError(
            DataCode.CONTRACT_MISMATCH,
            f"{_asked(p)} {p.sec_type}/{p.exchange}/{p.currency}: IB answered with {'; '.join(wrong)}",
        )


def _zone(name: str) -> dt.tzinfo:
    try:
        return ZoneInfo(name) if name else UTC
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


async def qualify_spec(s: Session, ib: IB, p: ContractSpec, cm: asyncio.Timeout) -> Qualified:
    """The cached answer, or one reqContractDetails (one at a time per selector)."""
    data = data_of(s)
    key = _selector(p)
    if (hit := data.cache.get(key)) is not None:
        return hit

    async def lookup() -> list[ContractDetails]:
        if key in data.cache:
            return []
        found: list[ContractDetails] = await ib.reqContractDetailsAsync(_contract(p))
        return found

    try:
        details = await _round_trip(s, "qualify", lookup, cm, key=f"qualify:{key}")
    except CommandError as exc:
        if exc.ib_code == 200:
            raise CommandError(
                DataCode.NO_SECURITY_DEFINITION,
                f"{_asked(p)} {p.sec_type}/{p.exchange}/{p.currency}: IB has no security definition for it",
                ib_code=200,
            ) from None
        raise
    if (hit := data.cache.get(key)) is not None:
        return hit
    if not details:
        raise CommandError(
            DataCode.NO_SECURITY_DEFINITION, f"{_asked(p)} {p.sec_type}/{p.exchange}/{p.currency}: no match"
        )
    if len(details) > 1:
        names = ", ".join(
            f"con_id {d.contract.conId} ({d.contract.primaryExchange or d.contract.exchange})"
            for d in details
            if d.contract is not None
        )
        raise CommandError(
            DataCode.AMBIGUOUS_CONTRACT,
            f"{_asked(p)} {p.sec_type}/{p.exchange}/{p.currency} matches {len(details)} contracts: {names}; "
            f"name primary_exchange or con_id",
        )
    found = details[0].contract
    assert found is not None
    if p.exchange.upper() == "SMART":
        found.exchange = "SMART"  # route through SMART, as asked (ib_async's qualify does the same)
    ident = _identity(found)
    check_identity(p, ident)
    q = data.cache[key] = Qualified(ident, found, _zone(details[0].timeZoneId))
    return q


@registry.command("qualify", QualifyParams)
async def qualify(ctx: Context, p: QualifyParams) -> Result:
    s = ctx.session
    ib = s.require_connected("qualify")
    async with _bounded("qualify", p.timeout) as cm:
        return (await qualify_spec(s, ib, p, cm)).identity


# ------------------------------------------------------------------------------------------
# historical_bars


def _bar_time(when: dt.date | dt.datetime, zone: dt.tzinfo) -> str:
    if isinstance(when, dt.datetime):
        return iso(when)
    return dt.datetime.combine(
        when, dt.time(), zone
    ).isoformat()  # a daily bar: its day in the contract's zone


async def _paced(data: Data, p: HistoricalBarsParams, q: Qualified, end: str, cm: asyncio.Timeout) -> None:
    """Wait for a slot that keeps IB's pacing, or fail at once if it comes after the deadline."""
    if not data.pacer.paced(BAR_SECONDS[p.bar_size]):
        return
    loop = asyncio.get_running_loop()
    request = (q.identity.con_id, p.exchange.upper(), end, p.bar_size, p.duration, p.what_to_show, p.use_rth)
    contract = (q.identity.con_id, p.what_to_show)
    weight = 2 if p.what_to_show == "BID_ASK" else 1
    now = loop.time()
    slot = data.pacer.slot(now, request, contract, weight)
    deadline = cm.when()
    if deadline is not None and slot.at >= deadline:
        at = dt.datetime.now(UTC) + dt.timedelta(seconds=slot.at - now)
        raise CommandError(
            DataCode.PACING_LIMIT,
            f"historical_bars {q.identity.symbol} {p.bar_size} {p.duration}: IB's pacing "
            f"({'; '.join(slot.held_by)}) lets it run at {at.isoformat(timespec='seconds')} "
            f"(in {slot.at - now:.1f} s), after its timeout; ask again then or with a longer timeout",
        )
    data.pacer.book(slot.at, request, contract, weight)
    if slot.at > now:
        try:
            await asyncio.sleep(slot.at - now)
        except asyncio.CancelledError:
            data.pacer.cancel(slot.at, request)  # never sent: the slot is free again
            raise


@registry.command("historical_bars", HistoricalBarsParams)
async def historical_bars(ctx: Context, p: HistoricalBarsParams) -> Result:
    s = ctx.session
    ib = s.require_connected("historical_bars")
    data = data_of(s)
    end = ib_end_time(p.end)
    async with _bounded("historical_bars", p.timeout) as cm:
        q = await qualify_spec(s, ib, p, cm)
        async with data.open_historical:
            await _paced(data, p, q, end, cm)
            try:
                bars: list[BarData] = await _round_trip(
                    s,
                    "historical_bars",
                    lambda: ib.reqHistoricalDataAsync(
                        q.contract,
                        end,
                        p.duration,
                        p.bar_size,
                        p.what_to_show,
                        p.use_rth,
                        formatDate=2,
                        timeout=0,
                    ),
                    cm,
                )
            except CommandError as exc:
                if exc.ib_code == 162 and "pacing" in exc.message.lower():
                    raise CommandError(
                        DataCode.PACING_LIMIT,
                        f"historical_bars {q.identity.symbol}: IB refused it for pacing (162) although "
                        f"this worker kept IB's rules: another client on the account may be asking too",
                        ib_code=162,
                    ) from None
                raise
        broker_time: dt.datetime = await _round_trip(
            s, "historical_bars", ib.reqCurrentTimeAsync, cm, "currentTime"
        )
    return HistoricalBarsResult(
        contract=q.identity,
        bars=[
            HistoricalBar(
                time=_bar_time(b.date, q.zone),
                open=b.open,
                high=b.high,
                low=b.low,
                close=b.close,
                volume=float(b.volume),
                wap=float(b.average),
                count=int(b.barCount),
            )
            for b in bars
        ],
        broker_time=iso(broker_time),
    )


# ------------------------------------------------------------------------------------------
# subscribe / unsubscribe


@registry.command("subscribe", SubscribeParams)
async def subscribe(ctx: Context, p: SubscribeParams) -> Result:
    s = ctx.session
    ib = s.require_connected("subscribe")
    book = data_of(s).feeds
    book.session(ib)
    async with _bounded("subscribe", p.timeout) as cm:
        q = await qualify_spec(s, ib, p, cm)
        feed = book.open(ib, p.stream, q.identity, q.contract)
        if not feed.confirmed.is_set():
            try:
                await asyncio.wait_for(feed.confirmed.wait(), min(SUBSCRIBE_SETTLE, _left(cm)))
            except TimeoutError:
                pass  # no tick yet (a quiet market): subscribed; `delayed` follows on each quote
    if feed.refusal is not None:
        raise feed.refusal
    ib = s.require_connected("subscribe")  # the session may have ended while we waited
    if not feed.alive:
        raise CommandError(
            Code.SESSION_LOST, f"subscribe {feed.describe()}: the feed ended before it was answered"
        )
    sub = book.new_sub()
    feed.attach(sub)  # no await after this: the answer goes out before any event for `sub`
    return SubscribeResult(sub=sub, contract=q.identity, delayed=feed.delayed)


@registry.command("unsubscribe", UnsubscribeParams)
async def unsubscribe(ctx: Context, p: UnsubscribeParams) -> Result:
    s = ctx.session
    data_of(s).feeds.unsubscribe(s.ib if s.connected else None, p.sub)
    return {}
