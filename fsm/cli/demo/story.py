"""The demo's clock and narrator: every line of the day goes through here to the view, and every
event wakes the steps' waits."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from fsm.cli.demo.record import Kind
from fsm.cli.demo.views import DemoView
from fsm.cli.demo.waits import Pulse
from gatewaysim import SimEvent

# The simulator's events worth a line of the story (the rest only wake the waits).
SIM_KINDS = frozenset(
    {
        "RED",
        "restart",
        "handshake",
        "326",
        "client_close",
        "server_close",
        "hold",
        "hold_expired",
        "hello_ignored",
        "connectivity",
        "down",
        "up",
        "drop_all",
        "order",
        "fill",
        "market_data_lost",
    }
)


class Story:
    """The demo's clock and its narrator: every line goes to the view, every event wakes the
    waits."""

    def __init__(self, view: DemoView) -> None:
        self.view = view
        self.t0 = time.monotonic_ns()
        self._wall0 = time.time() - (time.monotonic_ns() - self.t0) / 1e9
        self.pulse = Pulse()
        self._hooks: list[tuple[Callable[[SimEvent], bool], Callable[[], None]]] = []

    def t(self, ns: int | None = None) -> float:
        """Seconds since the demo started (the manager's and the simulator's clock too)."""
        return ((time.monotonic_ns() if ns is None else ns) - self.t0) / 1e9

    def t_of(self, when: dt.datetime) -> float:
        """A wall-clock time (a quote's, a Gap's) on the demo's clock."""
        return when.timestamp() - self._wall0

    def say(self, text: str, kind: Kind, *, at: float | None = None) -> None:
        self.view.line(self.t() if at is None else at, text, kind)

    def on_sim_event(self, match: Callable[[SimEvent], bool], action: Callable[[], None]) -> None:
        """Run `action` once, synchronously, when the simulator reports an event that matches
        (before the simulator goes on: nothing it would send next has left it yet)."""
        self._hooks.append((match, action))

    def sim_event(self, ev: SimEvent) -> None:
        if ev.kind in SIM_KINDS:
            self.say(f"gateway: {ev.kind} {ev.detail}", Kind.SIM, at=self.t(round(ev.at * 1e9)))
        for hook in [h for h in self._hooks if h[0](ev)]:
            self._hooks.remove(hook)
            hook[1]()
        self.pulse.wake()
