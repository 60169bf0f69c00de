"""Market-data requests on the wire: contract details, quotes, real-time bars, tick-by-tick,
historical bars. Each handler parses the client's fields (layouts: trading-surface.md B.1-B.4, as
ib_async 2.1.0 sends them), resolves the contract against the instrument book, and hands the
rest to the Market component; every request gets exactly one answer (data or an error).
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable
from zoneinfo import ZoneInfo

from . import history, wire
from .contracts import TEXT_200, NoListing, parse_contract
from .instruments import Instrument
from .market import GENERIC_TICKS, BarUpdates, Market, Quotes, RealTimeBars, TickByTick
from .prices import NS, WHAT_TO_SHOW
from .refusals import Refused, invalid
from .registry import handler
from .session import Session

REAL_TIME_WHAT = ("TRADES", "MIDPOINT", "BID", "ASK")
TICK_BY_TICK_TYPES = ("Last", "AllLast", "BidAsk", "MidPoint")
MAX_BARS = 100_000  # one request; beyond it IB answers "Time length exceed max."
MIN_SV_SIZE_RULES = 164  # contractDetails: minSize, sizeIncrement, suggestedSizeIncrement; no version
CONTRACT_DETAILS_VERSION = 8


def _market(s: Session) -> Market:
    return s.gateway.component(Market)


def _flag(value: str) -> bool:
    return value.strip() not in ("", "0")


MarketRequest = Callable[[Session, list[str], int], None]


def _request(msg_id: int, req_id_at: int) -> Callable[[MarketRequest], MarketRequest]:
    """Register a handler that is given the request's id (field `req_id_at`); a Refused it
    raises answers that id, counted by the Market."""

    def register(fn: MarketRequest) -> MarketRequest:
        @functools.wraps(fn)
        def answer(s: Session, f: list[str]) -> None:
            req_id = int(f[req_id_at])
            try:
                fn(s, f, req_id)
            except Refused as exc:
                _market(s).error(s, req_id, exc.code, exc.text)

        handler(msg_id)(answer)
        return fn

    return register


# ------------------------------------------------------------------------------------------
# Contract details


def contract_details(version: int, req_id: int, ins: Instrument, exchange: str, today: dt.date) -> bytes:
    """One contractDetails row (appendix 3); below 164 a version field and mdSizeMultiplier."""
    head: list[object] = [wire.CONTRACT_DATA]
    if version < MIN_SV_SIZE_RULES:
        head.append(CONTRACT_DETAILS_VERSION)
    fields: list[object] = [
        *head, req_id, ins.symbol, ins.sec_type, "", 0.0, "", exchange, ins.currency, ins.local_symbol,
        ins.market_name, ins.trading_class, ins.con_id, ins.min_tick,
    ]  # fmt: skip
    if version < MIN_SV_SIZE_RULES:
        fields.append(1)  # mdSizeMultiplier
    sec_ids: list[object] = [1, "ISIN", ins.isin] if ins.isin else [0]
    fields += [
        ins.multiplier, ins.order_types, ",".join(ins.valid_exchanges), 1, 0, ins.long_name, ins.primary_exchange,
        "", ins.industry, ins.category, ins.subcategory, ins.time_zone_id,
        history.trading_hours(ins, False, today), history.trading_hours(ins, True, today), "", "", *sec_ids,
        1, "", "", ",".join([ins.market_rule_ids] * len(ins.valid_exchanges)), "", ins.stock_type,
    ]  # fmt: skip
    stock = ins.sec_type == "STK"
    if version == MIN_SV_SIZE_RULES - 1:
        fields.append(100 if stock else 1)
    elif version >= MIN_SV_SIZE_RULES:
        fields += [0.0001, 0.0001, 100] if stock else [1, 1, 1]
    return wire.encode_msg(*fields)


def contract_details_end(req_id: int) -> bytes:
    return wire.encode_msg(wire.CONTRACT_DATA_END, 1, req_id)


@_request(wire.REQ_CONTRACT_DATA, 2)
def req_contract_details(s: Session, f: list[str], req_id: int) -> None:
    """Every matching listing (two for an ambiguous symbol), then the end; unknown: 200 alone."""
    c = parse_contract(f, 3)
    found = c.listings()
    _market(s).counters.contract_details += 1
    if not found:
        raise NoListing(TEXT_200)
    today = dt.datetime.fromtimestamp(s.gateway.wall(), ZoneInfo(found[0].time_zone_id)).date()
    s.send(
        *(
            contract_details(s.version, req_id, ins, c.exchange or ins.primary_exchange, today)
            for ins in found
        ),
        contract_details_end(req_id),
    )


# ------------------------------------------------------------------------------------------
# Quotes


@handler(wire.REQ_MARKET_DATA_TYPE)
def req_market_data_type(s: Session, f: list[str]) -> None:
    data_type = int(f[2])
    if data_type not in (1, 2, 3, 4):
        raise ValueError(f"market data type must be 1..4, got {data_type}")
    _market(s).data_types[s.session_id] = data_type


@_request(wire.REQ_MKT_DATA, 2)
def req_mkt_data(s: Session, f: list[str], req_id: int) -> None:
    c = parse_contract(f, 3)
    i = 15
    if c.sec_type == "BAG":
        i += 1 + 4 * int(f[i])
    if _flag(f[i]):
        i += 3  # delta-neutral conId, delta, price
    generic_list, snapshot, regulatory = f[i + 1], _flag(f[i + 2]), _flag(f[i + 3])
    market = _market(s)
    generic = frozenset(g.strip() for g in generic_list.split(",") if g.strip())
    unknown = sorted(generic - GENERIC_TICKS)
    if unknown:
        raise invalid(
            "bO",
            f"Incorrect generic tick list of {','.join(unknown)}. "
            f"Legal ones for (STK) are: {','.join(sorted(GENERIC_TICKS, key=int))}",
        )
    ins = c.resolve()
    delayed = market.quotes_permission(s, req_id, ins)
    if delayed is None:
        return
    market.open(Quotes(s, req_id, ins, snapshot=snapshot or regulatory, delayed=delayed, generic=generic))


@_request(wire.CANCEL_MKT_DATA, 2)
def cancel_mkt_data(s: Session, f: list[str], req_id: int) -> None:
    if not _market(s).close(s, req_id, Quotes):
        raise Refused(300, f"Can't find EId with tickerId:{req_id}")


# ------------------------------------------------------------------------------------------
# Real-time bars and tick-by-tick


@_request(wire.REQ_REAL_TIME_BARS, 2)
def req_real_time_bars(s: Session, f: list[str], req_id: int) -> None:
    c = parse_contract(f, 3)
    bar_size, what = f[15].strip(), f[16].strip().upper()
    if bar_size != "5":
        raise invalid("bN", f"Invalid bar size {bar_size!r}: real-time bars are 5 seconds")
    if what not in REAL_TIME_WHAT:
        raise invalid("bN", f"Invalid whatToShow {what!r}; legal: {', '.join(REAL_TIME_WHAT)}")
    ins = c.resolve()
    first = round(s.gateway.wall() * NS) // (5 * NS) * 5 * NS  # the window now open: due at its end
    _market(s).open(RealTimeBars(s, req_id, ins, what_to_show=what, next_start_ns=first))


@handler(wire.CANCEL_REAL_TIME_BARS)
def cancel_real_time_bars(s: Session, f: list[str]) -> None:
    _market(s).close(s, int(f[2]), RealTimeBars)  # IB says nothing about an unknown id


@_request(wire.REQ_TICK_BY_TICK_DATA, 1)
def req_tick_by_tick(s: Session, f: list[str], req_id: int) -> None:
    c = parse_contract(f, 2)
    tick_type, number_of_ticks = f[14].strip(), int(f[15] or 0)
    if tick_type not in TICK_BY_TICK_TYPES:
        raise invalid("cA", f"Invalid tick type {tick_type!r}; legal: {', '.join(TICK_BY_TICK_TYPES)}")
    if number_of_ticks:
        raise invalid("cA", "numberOfTicks > 0 (historical ticks) is not served by this simulator")
    ins = c.resolve()
    market = _market(s)
    now_tick = market.prices.tick_index(round(s.gateway.wall() * NS))
    market.open(TickByTick(s, req_id, ins, tick_type=tick_type, last_tick=now_tick))


@handler(wire.CANCEL_TICK_BY_TICK_DATA)
def cancel_tick_by_tick(s: Session, f: list[str]) -> None:
    _market(s).close(s, int(f[1]), TickByTick)


# ------------------------------------------------------------------------------------------
# Historical bars


@_request(wire.REQ_HISTORICAL_DATA, 1)
def req_historical_data(s: Session, f: list[str], req_id: int) -> None:
    c = parse_contract(f, 2)
    end_text, bar_size, duration = f[15], f[16], f[17]
    use_rth, what, format_date = _flag(f[18]), f[19].strip().upper(), int(f[20] or 1)
    i = 21
    if c.sec_type == "BAG":
        i += 1 + 4 * int(f[i])
    keep_up_to_date = _flag(f[i]) if len(f) > i else False
    ins = c.resolve()
    if what not in WHAT_TO_SHOW:
        raise invalid("bS", f"Invalid whatToShow {what!r}; legal: {', '.join(WHAT_TO_SHOW)}")
    if format_date not in (1, 2):
        raise invalid("bT", f"Invalid formatDate {format_date}")
    if keep_up_to_date and end_text.strip():
        raise invalid("bU", "End date not supported with live updates")
    seconds = history.bar_seconds(bar_size)
    now_ns = round(s.gateway.wall() * NS)
    end_ns = min(history.parse_end(end_text, ZoneInfo(ins.time_zone_id), now_ns), now_ns)
    start_ns = history.start_of(ins, duration, end_ns, use_rth)
    if (end_ns - start_ns) // (seconds * NS) > MAX_BARS:
        raise Refused(162, "Historical Market Data Service error message:Time length exceed max.")
    q = history.Query(ins, end_ns, start_ns, seconds, what, use_rth, format_date)
    _market(s).historical(s, req_id, q, tuple(f[2:]), keep_up_to_date)


@_request(wire.CANCEL_HISTORICAL_DATA, 2)
def cancel_historical_data(s: Session, f: list[str], req_id: int) -> None:
    """Ends keepUpToDate updates; a request already answered or unknown gets 366."""
    if not _market(s).close(s, req_id, BarUpdates):
        raise Refused(366, f"No historical data query found for ticker id:{req_id}")
