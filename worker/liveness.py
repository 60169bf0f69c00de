"""Liveness as the session proves it, and a probe that never waits behind user requests.

Any bytes from the Gateway are evidence that its API layer is alive (ib_async's own Watchdog idles
on traffic the same way). `probe` answers at once from that evidence when it is younger than the
caller's window. Only a quiet session gets a round trip: a reqCurrentTime written straight to the
socket (`send`), past ib_async's pacing queue, and the probe answers at the next bytes to arrive,
whatever they are, or fails when its timeout passes in silence.

Pacing headroom: IB allows IB_MESSAGES_PER_S client messages a second. ib_async's throttle lets
user requests use at most USER_MESSAGES_PER_S of them (pin_user_pacing() sets it, so no caller
can take it all), and direct probe messages go out at most PROBE_MESSAGES_PER_S, concurrent probes
sharing one. Together they stay under IB's limit.

The reply to a direct reqCurrentTime is consumed here (`take_reply`), so it never answers a user
`ping` in its place: replies are fungible and counted, not matched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final

from worker.protocol import Code, CommandError, ProbeResult

IB_MESSAGES_PER_S: Final = 50  # IB's limit on messages from one client
USER_MESSAGES_PER_S: Final = 45  # ib_async's default throttle, pinned for user requests
PROBE_MESSAGES_PER_S: Final = 4  # leaves one message a second spare
assert USER_MESSAGES_PER_S + PROBE_MESSAGES_PER_S < IB_MESSAGES_PER_S


class Liveness:
    """One session's evidence of life; `arrived` is called for every chunk read from the socket."""

    def __init__(self, send: Callable[[], None], backlog: Callable[[], int]) -> None:
        self._send = send
        self._backlog = backlog
        self.last_rx: float | None = None  # monotonic s of the newest bytes from the Gateway
        self.probes_sent = 0
        self._owed = 0  # replies still due to our direct reqCurrentTime messages
        self._last_send = -1e9
        self._waiters: set[asyncio.Future[float]] = set()
        self._lost: CommandError | None = None

    def arrived(self, now: float) -> None:
        self.last_rx = now
        if self._waiters:
            for fut in self._waiters:
                if not fut.done():
                    fut.set_result(now)
            self._waiters.clear()

    def take_reply(self) -> bool:
        """A currentTime reply arrived: True if it answers one of ours (then no user sees it)."""
        if self._owed:
            self._owed -= 1
            return True
        return False

    def lost(self, err: CommandError) -> None:
        """The session ended: every waiting probe fails with err, and so does every later one."""
        self._lost = err
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(err)
        self._waiters.clear()

    async def probe(self, window: float, timeout: float) -> ProbeResult:
        if self._lost is not None:
            raise self._lost
        t0 = time.monotonic()
        if self.last_rx is not None and t0 - self.last_rx <= window:
            return self._result(t0, t0, sent=False)
        sent = self._maybe_send(t0)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise CommandError(
                Code.GATEWAY_SILENT,
                f"probe: no bytes from the Gateway within {timeout:g} s"
                + (" of a reqCurrentTime sent past the pacing queue" if sent else ""),
            ) from None
        finally:
            self._waiters.discard(fut)
        return self._result(t0, time.monotonic(), sent=sent)

    def _maybe_send(self, now: float) -> bool:
        """One direct reqCurrentTime unless one went out within the last 1/PROBE_MESSAGES_PER_S s
        (then its reply, or anything else, answers this probe too)."""
        if now - self._last_send < 1.0 / PROBE_MESSAGES_PER_S:
            return False
        self._send()
        self._last_send = now
        self._owed += 1
        self.probes_sent += 1
        return True

    def _result(self, t0: float, now: float, *, sent: bool) -> ProbeResult:
        age = now - self.last_rx if self.last_rx is not None else 0.0
        return ProbeResult(
            age_ms=round(age * 1000, 3),
            sent=sent,
            waited_ms=round((now - t0) * 1000, 3),
            user_backlog=self._backlog(),
        )
