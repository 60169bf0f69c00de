"""Typed messages of the data commands (issue 13): params, results and the stream events.

Built on worker.protocol's envelopes and Params (unknown keys refused, typed, defaults as given);
like it, this imports nothing from fsm or ib_async, so the manager can decode events with it.

Commands (params under "params"; every one with a round trip takes ``timeout``):

- ``qualify`` {ContractSpec} -> ContractIdentity
- ``historical_bars`` {ContractSpec, duration, bar_size, what_to_show, use_rth, end}
  -> HistoricalBarsResult
- ``snapshot`` {account?} -> SnapshotResult (read twice; a difference is inconsistent_snapshot)
- ``subscribe`` {stream, ContractSpec} -> SubscribeResult, then events carrying its ``sub``
- ``unsubscribe`` {sub} -> {}

Events (no id): ``quote`` QuoteEvent, ``bar`` BarEvent, ``trade`` TradeEvent, ``stream_error``
StreamErrorEvent. Times are ISO 8601 strings with an offset (UTC).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from worker.protocol import Params, PositionRow, SummaryRow, TimeoutParams

__all__ = [
    "BAR_SECONDS",
    "DATA_COMMAND_PARAMS",
    "BarEvent",
    "ContractIdentity",
    "ContractSpec",
    "DataCode",
    "DataEvent",
    "Execution",
    "HistoricalBar",
    "HistoricalBarsParams",
    "HistoricalBarsResult",
    "OrderState",
    "QualifyParams",
    "QuoteEvent",
    "SnapshotParams",
    "SnapshotResult",
    "StreamErrorEvent",
    "StreamKind",
    "SubscribeParams",
    "SubscribeResult",
    "TradeEvent",
    "UnsubscribeParams",
    "ib_end_time",
]


class DataCode:
    """ErrorInfo.code values of the data commands (beside worker.protocol.Code)."""

    NO_SECURITY_DEFINITION: Final = "no_security_definition"  # IB 200: no such contract
    AMBIGUOUS_CONTRACT: Final = "ambiguous_contract"  # more than one listing matches
    CONTRACT_MISMATCH: Final = "contract_mismatch"  # IB answered with another contract
    NO_MARKET_DATA_PERMISSION: Final = "no_market_data_permission"  # 354, 10197, 10090, ...
    INCONSISTENT_SNAPSHOT: Final = "inconsistent_snapshot"  # the two reads differ
    PACING_LIMIT: Final = "pacing_limit"  # IB's historical pacing: not within the timeout
    MARKET_DATA_LINES: Final = "market_data_lines"  # past the line budget
    UNKNOWN_SUBSCRIPTION: Final = "unknown_subscription"  # unsubscribe of a sub never given

    ALL: Final = frozenset(
        {
            NO_SECURITY_DEFINITION,
            AMBIGUOUS_CONTRACT,
            CONTRACT_MISMATCH,
            NO_MARKET_DATA_PERMISSION,
            INCONSISTENT_SNAPSHOT,
            PACING_LIMIT,
            MARKET_DATA_LINES,
            UNKNOWN_SUBSCRIPTION,
        }
    )


class DataEvent:
    """Event.event values of the streams."""

    QUOTE: Final = "quote"
    BAR: Final = "bar"
    TRADE: Final = "trade"
    STREAM_ERROR: Final = "stream_error"


StreamKind = Literal["quotes", "bars_5s", "trades"]

# IB's bar size settings and their length in seconds (months rank above weeks; pacing only
# needs the small ones exactly).
BAR_SECONDS: Final[Mapping[str, int]] = {
    "1 secs": 1,
    "5 secs": 5,
    "10 secs": 10,
    "15 secs": 15,
    "30 secs": 30,
    "1 min": 60,
    "2 mins": 120,
    "3 mins": 180,
    "5 mins": 300,
    "10 mins": 600,
    "15 mins": 900,
    "20 mins": 1200,
    "30 mins": 1800,
    "1 hour": 3600,
    "2 hours": 7200,
    "3 hours": 10800,
    "4 hours": 14400,
    "8 hours": 28800,
    "1 day": 86400,
    "1 week": 7 * 86400,
    "1 month": 31 * 86400,
}
WHAT_TO_SHOW = Literal[
    "TRADES",
    "MIDPOINT",
    "BID",
    "ASK",
    "BID_ASK",
    "ADJUSTED_LAST",
    "HISTORICAL_VOLATILITY",
    "OPTION_IMPLIED_VOLATILITY",
]

# Fields that end up in IB wire messages: printable ASCII only (a NUL would split the message).
_Word = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[\x20-\x7e]+$")]
_DURATION = re.compile(r"^[1-9][0-9]{0,5} [SDWMY]$")


# --------------------------------------------------------------------------------------------
# Params


class ContractSpec(TimeoutParams, frozen=True):
    """The contract selector, flat in params: exactly one of symbol / con_id."""

    symbol: _Word | None = None
    con_id: Annotated[int, Meta(ge=1, le=2**31 - 1)] | None = None
    sec_type: _Word = "STK"
    exchange: _Word = "SMART"
    currency: _Word = "USD"
    primary_exchange: _Word | None = None

    def __post_init__(self) -> None:
        if (self.symbol is None) == (self.con_id is None):
            raise ValueError("exactly one of symbol or con_id is required")


class QualifyParams(ContractSpec, frozen=True):
    """qualify: the contract's identity, cached per selector in the worker."""


class HistoricalBarsParams(ContractSpec, frozen=True):
    """historical_bars: `end` is "" (now) or an ISO 8601 time with an offset."""

    duration: str = "2 D"
    bar_size: str = "5 mins"
    what_to_show: WHAT_TO_SHOW = "TRADES"
    use_rth: bool = True
    end: Annotated[str, Meta(max_length=40)] = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not _DURATION.match(self.duration):
            raise ValueError(f"duration {self.duration!r} is not IB's '<n> S|D|W|M|Y' (e.g. '2 D')")
        if self.bar_size not in BAR_SECONDS:
            raise ValueError(f"bar_size {self.bar_size!r} is not one of IB's: {', '.join(BAR_SECONDS)}")
        ib_end_time(self.end)


class SnapshotParams(TimeoutParams, frozen=True):
    """snapshot: positions, balances and executions of one account (None: every account)."""

    account: Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[\x21-\x7e]+$")] | None = None


class SubscribeParams(ContractSpec, frozen=True, kw_only=True):
    """subscribe: quotes (reqMktData), bars_5s (reqRealTimeBars TRADES), trades (tick-by-tick Last)."""

    stream: StreamKind


class UnsubscribeParams(Params, frozen=True):
    """unsubscribe: no Gateway round trip to wait for, so no timeout."""

    sub: Annotated[int, Meta(ge=1)]


DATA_COMMAND_PARAMS: Final[Mapping[str, type[Params]]] = {
    "qualify": QualifyParams,
    "historical_bars": HistoricalBarsParams,
    "snapshot": SnapshotParams,
    "subscribe": SubscribeParams,
    "unsubscribe": UnsubscribeParams,
}


def ib_end_time(end: str) -> str:
    """historical_bars' `end` as IB's endDateTime ("" stays now); ValueError if not ISO with an
    offset."""
    if not end:
        return ""
    try:
        when = dt.datetime.fromisoformat(end)
    except ValueError:
        raise ValueError(f"end {end!r} is not an ISO 8601 time (e.g. 2026-11-25T16:00:00+00:00)") from None
    if when.tzinfo is None:
        raise ValueError(f"end {end!r} has no UTC offset; add one (e.g. +00:00)")
    return when.astimezone(dt.UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"


# --------------------------------------------------------------------------------------------
# Results


class ContractIdentity(Struct, frozen=True):
    con_id: int
    symbol: str
    local_symbol: str
    sec_type: str
    currency: str
    exchange: str
    primary_exchange: str
    trading_class: str


class HistoricalBar(Struct):
    time: str  # the bar's start, ISO with offset
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int


class HistoricalBarsResult(Struct):
    contract: ContractIdentity
    bars: list[HistoricalBar]
    broker_time: str


class OrderState(Struct, frozen=True):
    """One order as the broker reports it (issue 14 shares this shape)."""

    order_ref: str
    order_id: int
    perm_id: int
    status: str
    filled: float
    remaining: float
    avg_fill_price: float
    action: str
    quantity: float
    order_type: str
    limit_price: float | None
    stop_price: float | None
    tif: str
    con_id: int
    symbol: str
    account: str
    client_id: int


class Execution(Struct, frozen=True):
    """One fill with its commission (issue 14 shares this shape)."""

    exec_id: str
    order_ref: str
    order_id: int
    perm_id: int
    time: str
    account: str
    con_id: int
    symbol: str
    side: str
    shares: float
    price: float
    cum_qty: float
    avg_price: float
    commission: float | None
    commission_currency: str
    realized_pnl: float | None


class SnapshotResult(Struct):
    positions: list[PositionRow]
    balances: list[SummaryRow]
    open_orders: list[OrderState]
    completed_orders: list[OrderState]
    executions: list[Execution]
    broker_time_before: str
    broker_time_after: str


class SubscribeResult(Struct):
    sub: int
    contract: ContractIdentity
    delayed: bool


# --------------------------------------------------------------------------------------------
# Events


class QuoteEvent(Struct):
    """The ticker after one batch of ticks (None: IB has no value for it yet)."""

    sub: int
    time: str
    bid: float | None
    ask: float | None
    last: float | None
    bid_size: float | None
    ask_size: float | None
    last_size: float | None
    volume: float | None
    delayed: bool


class BarEvent(Struct):
    sub: int
    time: str  # the bar's start
    open: float
    high: float
    low: float
    close: float
    volume: float
    wap: float
    count: int


class TradeEvent(Struct):
    sub: int
    time: str
    price: float
    size: float
    exchange: str


class StreamErrorEvent(Struct):
    sub: int
    code: int
    message: str
