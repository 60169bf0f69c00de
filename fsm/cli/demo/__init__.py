"""`ibgw demo`: a scripted day at the simulated Gateway (the day in `day`, its views in `views`)."""

from __future__ import annotations

import logging

import anyio

from fsm.cli.demo.day import Deadlines, play
from fsm.cli.demo.views import DemoView, LiveView, PlainView
from fsm.cli.exits import Exit

__all__ = ["Deadlines", "run_demo"]


def run_demo(
    *,
    plain: bool = False,
    backend: str = "asyncio",
    pace: float | None = None,
    deadlines: Deadlines | None = None,
) -> int:
    """Play the day; exit status 0 only if every step ended as scripted."""
    # The day's story is told by the view; the components' own warnings (a handshake failed, a
    # stale worker was ended) are expected here and would only repeat it out of order.
    for name in ("fsm", "gatewaysim", "worker"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    live = LiveView()
    view: DemoView = live if not plain and live.console.is_terminal else PlainView()
    if pace is None:
        pace = 1.5 if view is live else 0.0
    ok = anyio.run(lambda: play(view, pace=pace, deadlines=deadlines or Deadlines()), backend=backend)
    return Exit.OK if ok else Exit.ATTENTION
