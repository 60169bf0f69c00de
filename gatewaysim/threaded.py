"""The simulator on its own event loop in a daemon thread, for synchronous callers.

The bench, the CLI and sync tests drive it from other threads; every call is marshalled onto
the simulator's loop through an anyio BlockingPortal, so the simulator itself stays single-threaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from .market import Market
from .orderflow import REJECT_REASON
from .pacing import Limits
from .server import GatewaySim

START_TIMEOUT = 10.0
T = TypeVar("T")


class ThreadedSim:
    """Thread-safe handle on a GatewaySim running in another thread."""

    def __init__(self, sim: GatewaySim, portal: BlockingPortal) -> None:
        self.sim = sim  # for reading only; mutate through call()
        self._portal = portal

    @property
    def port(self) -> int:
        return self.sim.port

    def call(self, fn_name: str, *args: Any) -> Any:
        """Run `sim.<fn_name>(*args)` on the simulator's loop and return its result."""
        fn = getattr(self.sim, fn_name)
        if not callable(fn):
            return self._portal.call(lambda: getattr(self.sim, fn_name))
        return self._portal.call(fn, *args)

    def run(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the simulator's loop (e.g. a component's operation) and return its result."""
        return self._portal.call(fn)

    def market_call(self, fn_name: str, *args: Any) -> Any:
        """Run `<the sim's Market>.<fn_name>(*args)` on the simulator's loop."""
        return self._portal.call(lambda: getattr(self.sim.component(Market), fn_name)(*args))

    def snapshot(self) -> dict[str, Any]:
        return self._portal.call(self.sim.snapshot)

    def wait_until(self, predicate: Callable[[GatewaySim], bool], timeout: float) -> None:
        """Block until predicate(sim) holds (evaluated on the simulator's loop)."""
        self._portal.call(self.sim.wait_until, predicate, timeout)

    # The fault controls, by name, for readability at call sites.
    def red_on_fast_close(self, window: float | None) -> None:
        self.call("red_on_fast_close", window)

    def go_red(self) -> None:
        self.call("go_red")

    def restart(self) -> None:
        self.call("restart")

    def drop_all(self) -> None:
        self.call("drop_all")

    def down_for(self, seconds: float) -> None:
        self.call("down_for", seconds)

    def handshake_delay(self, seconds: float) -> None:
        self.call("handshake_delay", seconds)

    def stall_sync(self, request: str | None) -> None:
        self.call("stall_sync", request)

    def client_id_hold(self, seconds: float | None) -> None:
        self.call("client_id_hold", seconds)

    def connectivity_lost(self) -> None:
        self.call("connectivity_lost")

    def connectivity_restored(self, data_lost: bool) -> None:
        self.call("connectivity_restored", data_lost)

    def farm_flap(self) -> None:
        self.call("farm_flap")

    def read_only_api(self, on: bool) -> None:
        self.call("read_only_api", on)

    def reject_next_order(self, reason: str = REJECT_REASON) -> None:
        self.call("reject_next_order", reason)

    def drop_on_place(self, mode: str | None) -> None:
        self.call("drop_on_place", mode)

    def fill_while_away(self, on: bool) -> None:
        self.call("fill_while_away", on)

    def fill_order(self, order_ref: str) -> None:
        self.call("fill_order", order_ref)

    def partial_fills(self, on: bool) -> None:
        self.call("partial_fills", on)

    def end_of_day(self) -> None:
        self.call("end_of_day")

    # The market's operations (gatewaysim.market.Market), by name.
    def market_data_permission(self, instrument: str | int, level: str) -> None:
        self.market_call("market_data_permission", instrument, level)

    def farm_outage(self, seconds: float | None = None) -> None:
        self.market_call("farm_outage", seconds)

    def farm_restored(self) -> None:
        self.market_call("farm_restored")

    def pacing_violation(self, count: int = 1) -> None:
        self.market_call("pacing_violation", count)

    def data_lost(self) -> None:
        self.market_call("data_lost")

    def set_limits(self, limits: Limits) -> None:
        self.market_call("set_limits", limits)


@contextmanager
def running_in_thread(*, backend: str = "asyncio", **kwargs: Any) -> Iterator[ThreadedSim]:
    """`with running_in_thread(accounts=(...)) as sim:` serves until the block ends.
    kwargs go to GatewaySim; backend is "asyncio" or "trio"."""
    sim = GatewaySim(**kwargs)  # bad arguments raise here, in the caller's thread
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        try:
            async with BlockingPortal() as portal:
                stop = anyio.Event()
                async with anyio.create_task_group() as tg:
                    await tg.start(sim.serve)
                    box.update(handle=ThreadedSim(sim, portal), stop=stop)
                    ready.set()
                    await stop.wait()
                    tg.cancel_scope.cancel()
        except BaseException as exc:
            box["error"] = exc
            raise
        finally:
            ready.set()

    def run() -> None:
        try:
            anyio.run(main, backend=backend)
        except BaseException:  # reported to the caller through box["error"]
            pass

    thread = threading.Thread(target=run, name="gatewaysim", daemon=True)
    thread.start()
    if not ready.wait(START_TIMEOUT) or "handle" not in box:
        error = box.get("error")
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if isinstance(error, Exception):
            raise error
        raise RuntimeError(f"simulator did not start within {START_TIMEOUT} s")
    handle: ThreadedSim = box["handle"]
    try:
        yield handle
    finally:
        try:
            handle._portal.call(box["stop"].set)
        except RuntimeError:  # the loop is already gone
            pass
        thread.join(START_TIMEOUT)
