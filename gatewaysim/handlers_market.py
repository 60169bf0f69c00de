"""Market-data requests on the wire: contract details, quotes, real-time bars, tick-by-tick,
historical bars. Each handler parses the client's fields (layouts: trading-surface.md B.1-B.4, as
ib_async 2.1.0 sends them), resolves the contract against the instrument book, and hands the
rest to the Market component; every request gets exactly one answer (data or an error).
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from . import history, wire
from .contracts import TEXT_200, ContractSpec, NoListing, parse_contract
from .instruments import Instrument
from .market import GENERIC_TICKS, BarUpdates, Market, Quotes, RealTimeBars, TickByTick
from .prices import NS, WHAT_TO_SHOW
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


def _resolve(s: Session, req_id: int, c: ContractSpec) -> Instrument | None:
    """Exactly one listing, else error 200 (unknown or ambiguous), as IB answers data requests."""
    try:
        return c.resolve()
    except NoListing as exc:
        _market(s).error(s, req_id, exc.code, exc.text)
        return None


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


@handler(wire.REQ_CONTRACT_DATA)
def req_contract_details(s: Session, f: list[str]) -> None:
    """Every matching listing (two for an ambiguous symbol), then the end; unknown: 200 alone."""
    req_id = int(f[2])
    c = parse_contract(f, 3)
    found = c.listings()
    market = _market(s)
    market.counters.contract_details += 1
    if not found:
        market.error(s, req_id, 200, TEXT_200)
        return
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


@handler(wire.REQ_MKT_DATA)
def req_mkt_data(s: Session, f: list[str]) -> None:
    req_id = int(f[2])
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
        market.error(
            s,
            req_id,
            321,
            f"Error validating request.-'bO' : cause - Incorrect generic tick list of {','.join(unknown)}. "
            f"Legal ones for (STK) are: {','.join(sorted(GENERIC_TICKS, key=int))}",
        )
        return
    ins = _resolve(s, req_id, c)
    if ins is None:
        return
    delayed = market.quotes_permission(s, req_id, ins)
    if delayed is None:
        return
    market.open(Quotes(s, req_id, ins, snapshot=snapshot or regulatory, delayed=delayed, generic=generic))


@handler(wire.CANCEL_MKT_DATA)
def cancel_mkt_data(s: Session, f: list[str]) -> None:
    req_id = int(f[2])
    market = _market(s)
    if not market.close(s, req_id, Quotes):
        market.error(s, req_id, 300, f"Can't find EId with tickerId:{req_id}")


# ------------------------------------------------------------------------------------------
# Real-time bars and tick-by-tick


@handler(wire.REQ_REAL_TIME_BARS)
def req_real_time_bars(s: Session, f: list[str]) -> None:
    req_id = int(f[2])
    c = parse_contract(f, 3)
    bar_size, what = f[15].strip(), f[16].strip().upper()
    market = _market(s)
    if bar_size != "5":
        market.error(
            s,
            req_id,
            321,
            f"Error validating request.-'bN' : cause - Invalid bar size {bar_size!r}: real-time bars are 5 seconds",
        )
        return
    if what not in REAL_TIME_WHAT:
        market.error(
            s,
            req_id,
            321,
            f"Error validating request.-'bN' : cause - Invalid whatToShow {what!r}; legal: {', '.join(REAL_TIME_WHAT)}",
        )
        return
    ins = _resolve(s, req_id, c)
    if ins is None:
        return
    first = round(s.gateway.wall() * NS) // (5 * NS) * 5 * NS  # the window now open: due at its end
    market.open(RealTimeBars(s, req_id, ins, what_to_show=what, next_start_ns=first))


@handler(wire.CANCEL_REAL_TIME_BARS)
def cancel_real_time_bars(s: Session, f: list[str]) -> None:
    _market(s).close(s, int(f[2]), RealTimeBars)  # IB says nothing about an unknown id


@handler(wire.REQ_TICK_BY_TICK_DATA)
def req_tick_by_tick(s: Session, f: list[str]) -> None:
    req_id = int(f[1])
    c = parse_contract(f, 2)
    tick_type, number_of_ticks = f[14].strip(), int(f[15] or 0)
    market = _market(s)
    if tick_type not in TICK_BY_TICK_TYPES:
        market.error(
            s,
            req_id,
            321,
            f"Error validating request.-'cA' : cause - Invalid tick type {tick_type!r}; legal: {', '.join(TICK_BY_TICK_TYPES)}",
        )
        return
    if number_of_ticks:
        market.error(
            s,
            req_id,
            321,
            "Error validating request.-'cA' : cause - numberOfTicks > 0 (historical ticks) is not served by this simulator",
        )
        return
    ins = _resolve(s, req_id, c)
    if ins is None:
        return
    now_tick = market.prices.tick_index(round(s.gateway.wall() * NS))
    market.open(TickByTick(s, req_id, ins, tick_type=tick_type, last_tick=now_tick))


@handler(wire.CANCEL_TICK_BY_TICK_DATA)
def cancel_tick_by_tick(s: Session, f: list[str]) -> None:
    _market(s).close(s, int(f[1]), TickByTick)


# ------------------------------------------------------------------------------------------
# Historical bars


@handler(wire.REQ_HISTORICAL_DATA)
def req_historical_data(s: Session, f: list[str]) -> None:
    req_id = int(f[1])
    c = parse_contract(f, 2)
    end_text, bar_size, duration = f[15], f[16], f[17]
    use_rth, what, format_date = _flag(f[18]), f[19].strip().upper(), int(f[20] or 1)
    i = 21
    if c.sec_type == "BAG":
        i += 1 + 4 * int(f[i])
    keep_up_to_date = _flag(f[i]) if len(f) > i else False
    market = _market(s)
    ins = _resolve(s, req_id, c)
    if ins is None:
        return
    try:
        if what not in WHAT_TO_SHOW:
            raise history.HistoryError(
                321,
                f"Error validating request.-'bS' : cause - Invalid whatToShow {what!r}; legal: {', '.join(WHAT_TO_SHOW)}",
            )
        if format_date not in (1, 2):
            raise history.HistoryError(
                321, f"Error validating request.-'bT' : cause - Invalid formatDate {format_date}"
            )
        if keep_up_to_date and end_text.strip():
            raise history.HistoryError(
                321, "Error validating request.-'bU' : cause - End date not supported with live updates"
            )
        seconds = history.bar_seconds(bar_size)
        now_ns = round(s.gateway.wall() * NS)
        end_ns = min(history.parse_end(end_text, ZoneInfo(ins.time_zone_id), now_ns), now_ns)
        start_ns = history.start_of(ins, duration, end_ns, use_rth)
        if (end_ns - start_ns) // (seconds * NS) > MAX_BARS:
            raise history.HistoryError(
                162, "Historical Market Data Service error message:Time length exceed max."
            )
    except history.HistoryError as exc:
        market.error(s, req_id, exc.code, exc.text)
        return
    q = history.Query(ins, end_ns, start_ns, seconds, what, use_rth, format_date)
    market.historical(s, req_id, q, tuple(f[2:]), keep_up_to_date)


@handler(wire.CANCEL_HISTORICAL_DATA)
def cancel_historical_data(s: Session, f: list[str]) -> None:
    """Ends keepUpToDate updates; a request already answered or unknown gets 366."""
    req_id = int(f[2])
    market = _market(s)
    if not market.close(s, req_id, BarUpdates):
        market.error(s, req_id, 366, f"No historical data query found for ticker id:{req_id}")
