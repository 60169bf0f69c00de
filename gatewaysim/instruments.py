"""The simulator's built-in book of instruments and how a client's contract finds them.

Pure data. Every quote, bar, fill and contractDetails row the simulator produces is about one of
these. Matching follows what IB does for reqContractDetails: a conId pins one instrument (the
other fields given must agree); otherwise every given field must match, and a listing routed
through SMART or any of its valid exchanges matches; a symbol listed on two primary exchanges is
ambiguous until the primary exchange is named.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

ORDER_TYPES = (
    "ACTIVETIM,AD,ADJUST,ALERT,ALLOC,AVGCOST,BASKET,DAY,GAT,GTC,GTD,IOC,LIT,LMT,MIT,MKT,STP,STPLMT,TRAIL"
)


@dataclass(frozen=True, slots=True)
class Instrument:
    """One listing. Field names follow ib_async's Contract/ContractDetails, in snake case.

    `exchange` is the routing exchange that position, execution and order rows carry (SMART).
    `base_price` anchors the price process.
    """

    con_id: int
    symbol: str
    primary_exchange: str
    long_name: str
    base_price: float
    trading_class: str
    sec_type: str = "STK"
    currency: str = "USD"
    exchange: str = "SMART"
    local_symbol: str = ""
    market_name: str = ""
    min_tick: float = 0.01
    multiplier: str = ""
    valid_exchanges: tuple[str, ...] = ("SMART", "AMEX", "NYSE", "ARCA", "NASDAQ", "ISLAND", "BATS", "IEX")
    industry: str = ""
    category: str = ""
    subcategory: str = ""
    isin: str = ""
    stock_type: str = "COMMON"
    time_zone_id: str = "US/Eastern"
    market_rule_ids: str = "26"
    spread_ticks: int = 1  # ask - bid, in min ticks
    hours: tuple[str, str] = ("0400", "2000")  # the day's session, local HHMM (useRTH=0)
    liquid_hours: tuple[str, str] = ("0930", "1600")  # regular trading hours (useRTH=1)
    always_open: bool = False  # trades around the clock, every day (the simulator's FX)

    def __post_init__(self) -> None:
        if self.con_id <= 0 or not self.symbol or self.min_tick <= 0 or self.base_price <= 0:
            raise ValueError(f"bad instrument {self.symbol!r} conId {self.con_id}")
        if self.spread_ticks < 1:
            raise ValueError(f"{self.symbol}: spread_ticks must be >= 1")
        if self.primary_exchange not in self.valid_exchanges:
            raise ValueError(f"{self.symbol}: primary exchange not among its valid exchanges")
        if not self.local_symbol:
            object.__setattr__(self, "local_symbol", self.symbol)
        if not self.market_name:
            object.__setattr__(self, "market_name", self.trading_class)

    @property
    def order_types(self) -> str:
        return ORDER_TYPES


BOOK: tuple[Instrument, ...] = (
    Instrument(
        265598,
        "AAPL",
        "NASDAQ",
        "APPLE INC",
        187.40,
        "NMS",
        industry="Technology",
        category="Computers",
        subcategory="Computers",
        isin="US0378331005",
    ),
    Instrument(
        272093,
        "MSFT",
        "NASDAQ",
        "MICROSOFT CORP",
        415.20,
        "NMS",
        industry="Technology",
        category="Software",
        subcategory="Applications Software",
        isin="US5949181045",
    ),
    Instrument(
        756733,
        "SPY",
        "ARCA",
        "SPDR S&P 500 ETF TRUST",
        512.30,
        "SPY",
        industry="Funds",
        category="Equity Fund",
        subcategory="Growth&Income-Large Cap",
        isin="US78462F1030",
        stock_type="ETF",
        spread_ticks=1,
    ),
    # Synthetic: one symbol with two US listings, so SMART/USD alone is ambiguous and the
    # primary exchange decides (the case ib_async reports as "Ambiguous contract").
    Instrument(
        900001,
        "DUAL",
        "NYSE",
        "DUAL LISTED HOLDINGS (NYSE)",
        42.10,
        "DUAL",
        industry="Industrial",
        category="Machinery-Diversified",
        subcategory="Machinery-General Industry",
        isin="US0000900017",
        spread_ticks=2,
    ),
    Instrument(
        900002,
        "DUAL",
        "NASDAQ",
        "DUAL LISTED HOLDINGS (NASDAQ)",
        42.10,
        "NMS",
        industry="Industrial",
        category="Machinery-Diversified",
        subcategory="Machinery-General Industry",
        isin="US0000900025",
        spread_ticks=2,
    ),
    # What ib_async's Watchdog probes with (Forex("EURUSD") on IDEALPRO, MIDPOINT bars).
    Instrument(
        12087792,
        "EUR",
        "IDEALPRO",
        "European Monetary Union Euro",
        1.0850,
        "EUR.USD",
        sec_type="CASH",
        local_symbol="EUR.USD",
        min_tick=0.00005,
        valid_exchanges=("IDEALPRO",),
        stock_type="",
        market_rule_ids="239",
        spread_ticks=2,
        hours=("0000", "2400"),
        liquid_hours=("0000", "2400"),
        always_open=True,
    ),
)

_BY_CON_ID: dict[int, Instrument] = {ins.con_id: ins for ins in BOOK}
if len(_BY_CON_ID) != len(BOOK):
    raise RuntimeError("duplicate conId in the instrument book")


HOLDING_CON_ID = 70_000_000  # conId of synthetic holding n: HOLDING_CON_ID + n
MAX_HOLDINGS = 99_999  # their symbols are H00001 .. H99999


def synthetic_holding(n: int) -> Instrument:
    """The n-th synthetic stock (1 <= n <= MAX_HOLDINGS), for accounts that hold many positions:
    a NYSE listing `H0000n` with a price of its own, a function of n alone. It is held, not
    traded: the book does not list it, so data requests and orders for it get 200."""
    if not 1 <= n <= MAX_HOLDINGS:
        raise ValueError(f"synthetic holdings are numbered 1..{MAX_HOLDINGS}, got {n}")
    symbol = f"H{n:05d}"
    price = round(10 + n * 7919 % 49_000 / 100, 2)  # 10.00 .. 499.99, spread by a prime
    return Instrument(HOLDING_CON_ID + n, symbol, "NYSE", f"SYNTHETIC HOLDING {n}", price, symbol)


def by_con_id(con_id: int) -> Instrument:
    """The instrument with this conId; KeyError names it when there is none."""
    try:
        return _BY_CON_ID[con_id]
    except KeyError:
        raise KeyError(f"no instrument with conId {con_id}") from None


def lookup(
    symbol: str = "",
    sec_type: str = "",
    currency: str = "",
    exchange: str = "",
    primary_exchange: str = "",
    con_id: int = 0,
    local_symbol: str = "",
    trading_class: str = "",
    book: Iterable[Instrument] = BOOK,
) -> list[Instrument]:
    """Every listing a contract with these fields describes; empty strings and 0 match anything.

    [] means IB's error 200; more than one means ambiguous (the caller decides what that costs).
    Symbols, exchanges and currencies compare case-insensitively, as TWS does.
    """
    wanted = {
        "symbol": symbol,
        "sec_type": sec_type,
        "currency": currency,
        "primary_exchange": primary_exchange,
        "local_symbol": local_symbol,
        "trading_class": trading_class,
    }
    route = exchange.upper()
    found = []
    for ins in book:
        if con_id and ins.con_id != con_id:
            continue
        if any(value and getattr(ins, name).upper() != value.upper() for name, value in wanted.items()):
            continue
        if route and route not in ins.valid_exchanges:
            continue
        found.append(ins)
    return found
