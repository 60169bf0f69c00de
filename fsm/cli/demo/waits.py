"""Waiting with a deadline for what the demo's script expects to happen.

Every wait re-checks the manager's history (or the notices, or the simulator) whenever the
`Pulse` fires — each published change and simulator event fires it — and fails the step with
`StepFailed` at its deadline. Nothing is synchronised by sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import anyio

from fsm import ConnectionManager, Notice, Transition
from gatewaysim import GatewaySim

T = TypeVar("T")


class StepFailed(Exception):
    """A step did not reach its expected outcome before its deadline."""


class Pulse:
    """Wakes every waiter whenever something a step may be waiting for has happened."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def wake(self) -> None:
        event, self._event = self._event, anyio.Event()
        event.set()

    async def wait(self, timeout: float) -> None:
        """Until the next wake, or `timeout` seconds."""
        with anyio.move_on_after(timeout):
            await self._event.wait()


async def first(
    pulse: Pulse, find: Callable[[], T | None], *, timeout: float, failure: Callable[[], str]
) -> T:
    """What `find` returns once it is not None; StepFailed(failure()) at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = find()
        if found is not None:
            return found
        left = deadline - time.monotonic()
        if left <= 0:
            raise StepFailed(failure())
        await pulse.wait(left)


async def transition(
    manager: ConnectionManager,
    pulse: Pulse,
    pred: Callable[[Transition], bool],
    *,
    since: int,
    timeout: float,
    what: str,
) -> Transition:
    """The first transition of `manager` at history index >= since that matches."""
    return await first(
        pulse,
        lambda: next((tr for tr in manager.history[since:] if pred(tr)), None),
        timeout=timeout,
        failure=lambda: (
            f"no {what} within {timeout:g} s (state {manager.state}, reason {manager.reason or '-'})"
        ),
    )


async def notice(
    notices: Sequence[Notice],
    pulse: Pulse,
    pred: Callable[[Notice], bool],
    *,
    since: int,
    timeout: float,
    what: str,
) -> Notice:
    """The first published notice at index >= since that matches."""
    return await first(
        pulse,
        lambda: next((n for n in notices[since:] if pred(n)), None),
        timeout=timeout,
        failure=lambda: f"no {what} within {timeout:g} s",
    )


async def sim_state(
    sim: GatewaySim, pred: Callable[[GatewaySim], bool], *, timeout: float, what: str
) -> None:
    """Until the simulator's state satisfies `pred`."""
    try:
        await sim.wait_until(pred, timeout)
    except TimeoutError:
        raise StepFailed(f"the simulator did not report {what} within {timeout:g} s") from None


async def sim_event(sim: GatewaySim, kind: str, *, after: float, timeout: float) -> None:
    """Until the simulator reports an event of `kind` at monotonic seconds >= after."""
    await sim_state(
        sim,
        lambda g: any(e.kind == kind and e.at >= after for e in g.events),
        timeout=timeout,
        what=repr(kind),
    )
