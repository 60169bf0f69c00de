"""IB's limits on market-data requests, kept by us so that the Gateway never has to refuse one.

Pure bookkeeping; time is passed in (monotonic seconds).

Historical data (IB's "historical data limitations"; trading-surface.md C.5), for bars of 30 s
or less: (1) no identical request within 15 s, (2) at most 5 requests for one contract and tick
type within 2 s (the sixth violates), (3) at most 60 requests in 10 minutes; BID_ASK counts
twice. IB answers a violation with error 162 and no bars. `HistoricalPacer.slot` finds the
earliest time a request may be sent without breaking any rule, for the requests already sent
and those already given a later slot, with each window widened by `margin` (what the Gateway
measures is arrival, not our send). The caller waits for the slot within its timeout or fails at
once with the time it could run.

Why a slot that keeps every rule for the new request also keeps them for the requests already
booked after it: each count rule is checked over |t - T| < window around the candidate T, and the
window of any later request that contains T lies inside that interval.

Market-data lines: each account has (at least) 100 concurrent lines; a streaming reqMktData or
real-time bars subscription holds one until cancelled. Tick-by-tick streams are capped
separately (3 by default). `Budget` counts holders under a limit.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

SMALL_BAR_SECONDS: Final = 30


@dataclass(frozen=True, slots=True)
class HistoricalRules:
    """IB's numbers, plus our margin on every window (s)."""

    identical_seconds: float = 15.0
    same_contract_seconds: float = 2.0
    same_contract_max: int = 5
    window_seconds: float = 600.0
    window_max: int = 60
    small_bar_seconds: int = SMALL_BAR_SECONDS
    margin: float = 0.25


@dataclass(frozen=True, slots=True)
class _Booked:
    at: float
    request: Hashable
    contract: Hashable
    weight: int


@dataclass(frozen=True, slots=True)
class Slot:
    """When a request may go (`at`), and the rules that held it back (empty: at once)."""

    at: float
    held_by: tuple[str, ...]


@dataclass(slots=True)
class HistoricalPacer:
    """Books historical requests into times that keep IB's pacing rules."""

    rules: HistoricalRules = field(default_factory=HistoricalRules)
    _booked: list[_Booked] = field(default_factory=list)

    def paced(self, bar_seconds: int) -> bool:
        """IB paces only small bars (30 s or less)."""
        return bar_seconds <= self.rules.small_bar_seconds

    def slot(self, now: float, request: Hashable, contract: Hashable, weight: int = 1) -> Slot:
        """The earliest time >= now this request keeps every rule (nothing is booked)."""
        self._forget(now)
        first = self._blocking(now, request, contract, weight)
        if not first:
            return Slot(now, ())
        r = self.rules
        windows = (r.identical_seconds, r.same_contract_seconds, r.window_seconds)
        candidates = sorted(
            {b.at + w + r.margin for b in self._booked for w in windows if b.at + w + r.margin > now}
        )
        for t in candidates:
            if not self._blocking(t, request, contract, weight):
                return Slot(t, first)
        raise AssertionError("unreachable: past every booked window nothing blocks")  # pragma: no cover

    def book(self, at: float, request: Hashable, contract: Hashable, weight: int = 1) -> None:
        """Record a request sent (or to be sent) at `at`."""
        self._booked.append(_Booked(at, request, contract, weight))

    def cancel(self, at: float, request: Hashable) -> None:
        """Forget a booking that will not be sent after all (its caller gave up)."""
        for i, b in enumerate(self._booked):
            if b.at == at and b.request == request:
                del self._booked[i]
                return

    def booked(self) -> int:
        return sum(b.weight for b in self._booked)

    def _forget(self, now: float) -> None:
        horizon = now - self.rules.window_seconds - self.rules.margin
        self._booked = [b for b in self._booked if b.at > horizon]

    def _blocking(self, t: float, request: Hashable, contract: Hashable, weight: int) -> tuple[str, ...]:
        """The rules a request at t would break (counted on both sides of t)."""
        r = self.rules
        near = [b for b in self._booked if abs(b.at - t) < r.window_seconds + r.margin]
        out = []
        if any(b.request == request and abs(b.at - t) < r.identical_seconds + r.margin for b in near):
            out.append(f"no identical request within {r.identical_seconds:g} s")
        same = sum(
            b.weight
            for b in near
            if b.contract == contract and abs(b.at - t) < r.same_contract_seconds + r.margin
        )
        if same + weight > r.same_contract_max:
            out.append(
                f"at most {r.same_contract_max} requests for one contract and tick type within "
                f"{r.same_contract_seconds:g} s"
            )
        if sum(b.weight for b in near) + weight > r.window_max:
            out.append(f"at most {r.window_max} requests in {r.window_seconds:g} s")
        return tuple(out)


@dataclass(slots=True)
class Budget:
    """Concurrent holders (market-data lines, tick-by-tick streams) under a limit."""

    limit: int
    holders: set[Hashable] = field(default_factory=set)
    refused: int = 0

    def acquire(self, holder: Hashable) -> bool:
        if holder not in self.holders and len(self.holders) >= self.limit:
            self.refused += 1
            return False
        self.holders.add(holder)
        return True

    def release(self, holder: Hashable) -> None:
        self.holders.discard(holder)

    @property
    def in_use(self) -> int:
        return len(self.holders)
