"""A client's contract as it travels in a request, and the one listing of the book it names.

Every request that carries a contract (reqContractDetails, reqMktData, reqRealTimeBars,
reqTickByTickData, reqHistoricalData, placeOrder) carries the same 12 fields in the same order
(trading-surface.md B.1-B.5, appendix 1); only where they start differs. IB answers 200 when
they name no listing, or more than one.
"""

from __future__ import annotations

from dataclasses import dataclass

from .instruments import Instrument, lookup
from .refusals import Refused

TEXT_200 = "No security definition has been found for the request"
FIELDS = 12  # conId .. tradingClass


class NoListing(Refused):
    """The contract names no listing, or several: IB's error 200 with `text`."""

    def __init__(self, text: str) -> None:
        super().__init__(200, text)


@dataclass(frozen=True, slots=True)
class ContractSpec:
    """The contract fields as the client wrote them (strike and expiry kept as text)."""

    con_id: int
    symbol: str
    sec_type: str
    last_trade: str
    strike: str
    right: str
    multiplier: str
    exchange: str
    primary_exchange: str
    currency: str
    local_symbol: str
    trading_class: str

    def listings(self) -> list[Instrument]:
        """Every listing of the book these fields describe (see instruments.lookup)."""
        return lookup(
            self.symbol, self.sec_type, self.currency, self.exchange, self.primary_exchange,
            self.con_id, self.local_symbol, self.trading_class,
        )  # fmt: skip

    def resolve(self) -> Instrument:
        """The one listing named, as IB requires for data and orders; else NoListing."""
        found = self.listings()
        if len(found) == 1:
            return found[0]
        if found:
            raise NoListing(f"The contract description specified for {self.symbol} is ambiguous.")
        raise NoListing(TEXT_200)


def parse_contract(f: list[str], i: int) -> ContractSpec:
    """The contract whose fields start at position `i` of a request. Raises IndexError when the
    request is too short and ValueError for a conId that is no number."""
    if len(f) < i + FIELDS:
        raise IndexError(f"a contract needs {FIELDS} fields from position {i}, the request has {len(f)}")
    con_id, *rest = f[i : i + FIELDS]
    return ContractSpec(int(con_id or 0), *rest)
