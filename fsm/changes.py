"""What subscribers hear: state changes and notices, through bounded per-subscriber buffers.

A slow reader never blocks the manager: when its buffer is full the oldest item is dropped and
the next one handed out carries ``dropped=N``.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from fsm.core import Reason, State

__all__ = ["Broadcast", "Change", "Notice", "StateChange", "Subscription", "wall_time"]


def wall_time(at_ns: int) -> float:
    """Epoch seconds of a monotonic-ns instant (for people; measure with the ns)."""
    return time.time() - (time.monotonic_ns() - at_ns) / 1e9


@dataclass(frozen=True, slots=True)
class StateChange:
    """One core transition as subscribers see it.

    ``at`` is wall-clock epoch seconds (for people); ``at_ns`` is the core's monotonic ns (for
    measuring). ``dropped`` counts items this subscriber lost to overflow just before this one.
    ``window`` names the maintenance window it happened in; ``expected`` is the core's tag
    (Transition.expected): inside a window, for a reason IB or the Gateway causes — no alarm.
    """

    at: float
    source: State
    event: str
    dest: State
    reason: Reason | None
    at_ns: int
    dropped: int = 0
    window: str | None = None
    expected: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """Something subscribers should know that is not a transition.

    kind (fsm.ibcodes.NoticeKind): ``farm`` (codes 2103-2108/2157/2158), ``data_lost`` (1101:
    re-request market data), ``client_id_in_use`` (a 326 arrived), ``zombie_reaped`` (a stale
    worker of ours was ended), ``handshake_failed`` (why a connect failed).
    """

    at: float
    kind: str
    code: int | None
    message: str
    at_ns: int
    dropped: int = 0


Change = StateChange | Notice


class Subscription:
    """An async iterator of Change items with a bounded buffer.

    The iterator ends after the manager shuts down (remaining items are still delivered) or
    after ``close()``.
    """

    def __init__(self, maxlen: int, on_close: Callable[[Subscription], None]) -> None:
        self._items: deque[Change] = deque()
        self._maxlen = maxlen
        self._lost = 0
        self._closed = False
        self._wakeup: anyio.Event | None = None
        self._on_close = on_close

    def put(self, item: Change) -> None:
        """Buffer one item (the manager's side); the oldest goes if the buffer is full."""
        if self._closed:
            return
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self._lost += 1
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def close(self) -> None:
        """Stop receiving; buffered items are still handed out, then iteration ends."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item = self._items.popleft()
        if self._lost:
            item = dataclasses.replace(item, dropped=self._lost)
            self._lost = 0
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class Broadcast:
    """The manager's subscribers: each gets every item; closed all at once at shutdown."""

    def __init__(self, maxlen: int) -> None:
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._maxlen = max(1, maxlen)
        self._closed = False

    def subscribe(self) -> Subscription:
        sub = Subscription(self._maxlen, self._subs.discard)
        if self._closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def publish(self, item: Change) -> None:
        for sub in list(self._subs):
            sub.put(item)

    def close(self) -> None:
        self._closed = True
        for sub in list(self._subs):
            sub.close()
