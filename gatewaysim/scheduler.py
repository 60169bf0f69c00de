"""Timers of the sans-IO simulator: what must happen later, without owning a clock or a task.

The driver asks for `next_deadline()`, sleeps until then (or until `on_change` tells it the
schedule moved), and calls `run_due(now)`. Handshake delays, client-id hold expiry, ticks pushed
on a timer and fills that happen while no client watches are all entries here, so the whole
simulator stays single-threaded and deterministic under a test's clock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

log = logging.getLogger("gatewaysim")


class Timer:
    """A handle on a scheduled call; `cancel()` is idempotent. `period` re-arms it after each run."""

    __slots__ = ("cancelled", "fn", "period", "when")

    def __init__(self, when: float, fn: Callable[[], None], period: float | None) -> None:
        self.when = when
        self.period = period
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """A heap of timers on the monotonic clock `clock`; `on_change` fires when the earliest moves."""

    def __init__(self, clock: Callable[[], float], on_change: Callable[[], None]) -> None:
        self.clock = clock
        self.on_change = on_change
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()

    def call_at(self, when: float, fn: Callable[[], None]) -> Timer:
        return self._push(Timer(when, fn, None))

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        return self._push(Timer(self.clock() + delay, fn, None))

    def call_every(self, period: float, fn: Callable[[], None]) -> Timer:
        """Run `fn` every `period` s from one period from now (missed runs are not made up)."""
        if not period > 0 or math.isinf(period):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        return self._push(Timer(self.clock() + period, fn, period))

    def next_deadline(self) -> float | None:
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def run_due(self, now: float) -> None:
        """Run every timer due at `now`; one that raises is logged and the rest still run."""
        while self._heap and self._heap[0][0] <= now:
            _, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            try:
                timer.fn()
            except Exception:  # a bug in one timer must not stop the simulator's clock
                log.exception("timer %r failed", timer.fn)
            if timer.period is not None and not timer.cancelled:
                timer.when += timer.period
                if timer.when <= now:  # fell behind: skip the missed runs
                    timer.when = now + timer.period
                heapq.heappush(self._heap, (timer.when, next(self._seq), timer))

    def _push(self, timer: Timer) -> Timer:
        earliest = self.next_deadline()
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        if earliest is None or timer.when < earliest:
            self.on_change()
        return timer
