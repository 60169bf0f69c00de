"""The simulated account book: what every account holds when the Gateway starts, as data.

Every account gets the same realistic rows, so that a test can predict them. The broker
(orders and fills) moves positions and cash from here on.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import wire

AAPL = wire.Instrument(265598, "AAPL", primary_exchange="NASDAQ")
MSFT = wire.Instrument(272093, "MSFT", primary_exchange="NASDAQ")


@dataclass(frozen=True, slots=True)
class Holding:
    """A position at start-up and the price the portfolio rows mark it at."""

    ins: wire.Instrument
    quantity: float
    avg_cost: float
    market_price: float


HOLDINGS: tuple[Holding, ...] = (
    Holding(AAPL, 100.0, 150.25, 187.40),
    Holding(MSFT, 50.0, 310.10, 415.20),
)

# tag, value, currency (account summary and account updates)
ACCOUNT_VALUES: tuple[tuple[str, str, str], ...] = (
    ("AccountType", "INDIVIDUAL", ""),
    ("NetLiquidation", "100000.00", "USD"),
    ("TotalCashValue", "60500.00", "USD"),
    ("GrossPositionValue", "39500.00", "USD"),
    ("BuyingPower", "364000.00", "USD"),
    ("AvailableFunds", "91000.00", "USD"),
    ("ExcessLiquidity", "92000.00", "USD"),
    ("InitMarginReq", "9000.00", "USD"),
    ("MaintMarginReq", "8000.00", "USD"),
)


def earlier_fill(account: str, n: int, day: str) -> wire.Fill:
    """The one execution each account made before the Gateway started: a manual TWS order
    (client id 0) bought 10 AAPL at the open. `day` is YYYYmmdd."""
    return wire.Fill(
        exec_id=f"0000e0d5.65a1b2c3.01.{n + 1:02d}",
        account=account,
        ins=AAPL,
        side="BOT",
        shares=10.0,
        price=186.95,
        time=f"{day} 13:30:00 UTC",
        order_id=0,
        perm_id=1_000_000 + n,
        client_id=0,
        commission=1.0,
    )
