"""The simulated account book: positions and cash per account, as data that fills move.

Every account starts with the same realistic rows, so a test can predict them: 100 AAPL, 50 MSFT
and 60,500 USD cash. For large answers the first account can hold any number of rows instead
(`positions`): those two, then synthetic holdings. Positions are marked at each instrument's
base price, so account values move with fills only (not with every tick) and stay predictable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import wire
from .instruments import MAX_HOLDINGS, Instrument, by_con_id, synthetic_holding

AAPL = by_con_id(265598)
MSFT = by_con_id(272093)
START_CASH = 60_500.0
# instrument, quantity, average cost
START_POSITIONS: tuple[tuple[Instrument, float, float], ...] = ((AAPL, 100.0, 150.25), (MSFT, 50.0, 310.10))
INIT_MARGIN = 0.25  # of the gross position value
MAINT_MARGIN = 0.20
LEVERAGE = 4.0  # buying power per unit of available funds


@dataclass(slots=True)
class Position:
    ins: Instrument
    quantity: float
    avg_cost: float
    realized_pnl: float = 0.0

    @property
    def market_price(self) -> float:
        return self.ins.base_price

    @property
    def market_value(self) -> float:
        return self.quantity * self.market_price


@dataclass(slots=True)
class Account:
    name: str
    cash: float = START_CASH
    positions: dict[int, Position] = field(default_factory=dict)  # by conId, in the order opened

    def values(self) -> list[tuple[str, str, str]]:
        """(tag, value, currency) rows for the account summary and account updates."""
        gross = sum(abs(p.market_value) for p in self.positions.values())
        net = self.cash + sum(p.market_value for p in self.positions.values())
        init, maint = INIT_MARGIN * gross, MAINT_MARGIN * gross
        rows = (
            ("NetLiquidation", net),
            ("TotalCashValue", self.cash),
            ("GrossPositionValue", gross),
            ("BuyingPower", LEVERAGE * (net - init)),
            ("AvailableFunds", net - init),
            ("ExcessLiquidity", net - maint),
            ("InitMarginReq", init),
            ("MaintMarginReq", maint),
        )
        return [("AccountType", "INDIVIDUAL", ""), *((tag, f"{v:.2f}", "USD") for tag, v in rows)]


def start_positions(n: int | None) -> list[Position]:
    """The standard rows, or exactly `n` rows: the standard ones first, then synthetic
    holdings 1, 2, ... (quantity 100 to 900 shares, bought at 95% of the price)."""
    rows = [Position(ins, qty, cost) for ins, qty, cost in START_POSITIONS]
    if n is None:
        return rows
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_HOLDINGS:
        raise ValueError(f"positions must be a count from 0 to {MAX_HOLDINGS}, got {n!r}")
    for k in range(1, n - len(rows) + 1):
        ins = synthetic_holding(k)
        rows.append(Position(ins, 100.0 * (1 + k % 9), round(ins.base_price * 0.95, 4)))
    return rows[:n]


class AccountBook:
    """Every managed account; fills move positions and cash, and realise PnL when they close.
    `positions`: how many rows the first account holds (None: the standard ones)."""

    def __init__(self, accounts: tuple[str, ...], positions: int | None = None) -> None:
        self.accounts = {name: Account(name) for name in accounts}
        for i, acct in enumerate(self.accounts.values()):
            for p in start_positions(positions if i == 0 else None):
                acct.positions[p.ins.con_id] = p

    def apply_fill(
        self, account: str, ins: Instrument, buy: bool, shares: float, price: float, commission: float
    ) -> float | None:
        """Book one execution; returns the PnL it realised (None when it only opened or added)."""
        acct = self.accounts[account]
        signed = shares if buy else -shares
        acct.cash -= signed * price + commission
        pos = acct.positions.setdefault(ins.con_id, Position(ins, 0.0, 0.0))
        realized: float | None = None
        if pos.quantity and (pos.quantity > 0) != buy:  # closing (part of) the position
            closed = min(shares, abs(pos.quantity))
            realized = closed * (price - pos.avg_cost) * (1 if pos.quantity > 0 else -1) - commission
            pos.realized_pnl += realized
            pos.quantity += signed
            if abs(signed) > closed:  # flipped through zero: the rest opens at this price
                pos.avg_cost = price
            elif not pos.quantity:
                pos.avg_cost = 0.0
        else:
            total = pos.quantity + signed
            pos.avg_cost = (pos.quantity * pos.avg_cost + signed * price + commission) / total
            pos.quantity = total
        return realized


def earlier_fill(account: str, n: int, day: str) -> wire.Fill:
    """The execution account number `n` made before the Gateway started (already in the start-up
    positions): a manual TWS order (client id 0) bought 10 AAPL at the open. `day`: YYYYmmdd."""
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
