"""IB's limits on market-data requests, as pure bookkeeping (time is passed in, in seconds).

Historical data (IB's "historical limitations" page): a pacing violation, answered with 162, is
  1. an identical request within 15 s,
  2. six or more requests for the same contract, exchange and tick type within 2 s,
  3. more than 60 requests in any 10 minutes;
BID_ASK requests count twice, and the rules apply to bars of 30 s or less. At most 50 historical
requests may be open at once (322). Market data: every account has (at least) 100 concurrent
lines; a streaming reqMktData takes one until it is cancelled.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Limits:
    """IB's numbers; `enabled=False` switches every rule off (the line budget too)."""

    enabled: bool = True
    identical_seconds: float = 15.0
    same_contract_seconds: float = 2.0
    same_contract_max: int = 5  # the 6th request within the window violates
    window_seconds: float = 600.0
    window_max: int = 60  # the 61st request within the window violates
    small_bar_seconds: int = 30  # pacing applies to bars this size or smaller
    max_open_historical: int = 50
    market_data_lines: int = 100
    tick_by_tick_max: int = 3  # IB: max(3, market depth lines) by default

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "enabled" and not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")


PACING_TEXT = "Historical Market Data Service error message:Historical data request pacing violation"


@dataclass(slots=True)
class PacingCounters:
    requests: int = 0  # accepted and counted
    exempt: int = 0  # accepted without counting (bars above small_bar_seconds, or pacing off)
    identical: int = 0
    same_contract: int = 0
    too_many: int = 0
    forced: int = 0


@dataclass(slots=True)
class HistoricalPacing:
    """Decides whether a historical request violates pacing, and records it when it does not."""

    limits: Limits = field(default_factory=Limits)
    counters: PacingCounters = field(default_factory=PacingCounters)
    forced_violations: int = 0  # the next N requests violate, whatever they are
    _recent: deque[tuple[float, Hashable, Hashable]] = field(default_factory=deque)

    def check(
        self, now: float, request: Hashable, contract: Hashable, bar_seconds: int, weight: int = 1
    ) -> str | None:
        """None when the request may go ahead (and it is then counted), else which rule it broke.

        `request` identifies an identical request, `contract` the (contract, exchange, tick type)
        of rule 2, `weight` is 2 for BID_ASK."""
        if self.forced_violations:
            self.forced_violations -= 1
            self.counters.forced += 1
            return "forced"
        lim = self.limits
        if not lim.enabled or bar_seconds > lim.small_bar_seconds:
            self.counters.exempt += 1
            return None
        horizon = max(lim.window_seconds, lim.identical_seconds, lim.same_contract_seconds)
        while self._recent and self._recent[0][0] <= now - horizon:
            self._recent.popleft()
        if any(r == request and now - t < lim.identical_seconds for t, r, _ in self._recent):
            self.counters.identical += 1
            return f"identical request within {lim.identical_seconds:g} s"
        same = sum(1 for t, _, c in self._recent if c == contract and now - t < lim.same_contract_seconds)
        if same + weight > lim.same_contract_max:
            self.counters.same_contract += 1
            return f"{same + weight} requests for one contract within {lim.same_contract_seconds:g} s"
        in_window = sum(1 for t, _, _ in self._recent if now - t < lim.window_seconds)
        if in_window + weight > lim.window_max:
            self.counters.too_many += 1
            return f"more than {lim.window_max} requests in {lim.window_seconds:g} s"
        for _ in range(weight):
            self._recent.append((now, request, contract))
        self.counters.requests += 1
        return None

    def snapshot(self) -> dict[str, Any]:
        return {
            **asdict(self.counters),
            "forced_pending": self.forced_violations,
            "recent": len(self._recent),
        }


@dataclass(slots=True)
class Budget:
    """A count of concurrent holders (market-data lines, tick-by-tick streams) under a limit."""

    limit: int
    enabled: bool = True
    holders: set[Hashable] = field(default_factory=set)
    refused: int = 0

    def acquire(self, holder: Hashable) -> bool:
        if self.enabled and holder not in self.holders and len(self.holders) >= self.limit:
            self.refused += 1
            return False
        self.holders.add(holder)
        return True

    def release(self, holder: Hashable) -> None:
        self.holders.discard(holder)

    def snapshot(self) -> dict[str, Any]:
        return {"limit": self.limit, "in_use": len(self.holders), "refused": self.refused}
