"""Helpers for the order tests: a worker client that connects read-write, a simulator on a
pinned trading-day clock with a trading manager on it, and limits its market will not reach."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fsm.manager import ConnectionManager
from fsm.settings import Settings
from gatewaysim import Faults, GatewaySim
from gatewaysim.accounts import AAPL
from gatewaysim.observe import SimEvent
from support.manager import fast_settings
from support.market import PINNED
from support.worker_process import WorkerProcess
from worker.orders_protocol import Execution, OrderErrorData, OrderEvent, OrderState
from worker.protocol import Event, Response, data_as

SPEED = 8.0  # the simulator's trading day runs this many times faster than real time
LOW = round(AAPL.base_price * 0.5, 2)  # a BUY limit no price in a test's lifetime reaches


class OrderWorker(WorkerProcess):
    """A worker process with order helpers; it exits at EOF without lingering (the simulator here
    does not watch for fast closes)."""

    def __init__(self, *, label: str) -> None:
        super().__init__(label=label, env={**os.environ, "IBGW_WORKER_MIN_SESSION": "0"})

    def connect_rw(self, port: int, client_id: int, *, readonly: bool = False) -> Response:
        resp = self.call(
            "connect",
            host="127.0.0.1",
            port=port,
            client_id=client_id,
            readonly=readonly,
            timeout=30.0,
            wait=40.0,
        )
        assert resp.ok, resp
        return resp

    def place(self, ref: str, *, wait: float = 10.0, **params: Any) -> Response:
        """place_order, by default a BUY 10 AAPL LMT at LOW (it rests)."""
        p: dict[str, Any] = {"symbol": "AAPL", "action": "BUY", "quantity": 10.0, "order_type": "LMT",
                             "limit_price": LOW, "order_ref": ref, "timeout": 5.0}  # fmt: skip
        p.update(params)
        return self.call("place_order", wait=wait, **{k: v for k, v in p.items() if v is not None})

    def events_named(self, name: str) -> list[Event]:
        return [e for e in self.events if e.event == name]

    def statuses(self, ref: str) -> list[OrderState]:
        return [
            data_as(e, OrderState)
            for e in self.events_named(OrderEvent.ORDER_STATUS)
            if e.data["order_ref"] == ref
        ]

    def executions(self) -> list[Execution]:
        return [data_as(e, Execution) for e in self.events_named(OrderEvent.EXECUTION)]

    def order_errors(self, order_id: int) -> list[OrderErrorData]:
        return [
            data_as(e, OrderErrorData)
            for e in self.events_named(OrderEvent.ORDER_ERROR)
            if e.data["order_id"] == order_id
        ]


def state_of(resp: Response) -> OrderState:
    assert resp.ok, resp
    return data_as(resp, OrderState)


def order_settings(state_dir: Path, port: int, **overrides: Any) -> Settings:
    """fast_settings, trading (readonly off; no maintenance windows, as in fast_settings: the
    window gate has its own test)."""
    values: dict[str, Any] = {"readonly": False, **overrides}
    return fast_settings(state_dir, port, **values)


def trading_sim(faults: Faults | None = None) -> GatewaySim:
    """The simulator on a trading-day clock running SPEED times faster than real time."""
    t0 = time.monotonic()
    return GatewaySim(
        seed=11, tick_rate=4.0, wall=lambda: PINNED + (time.monotonic() - t0) * SPEED, faults=faults
    )


@asynccontextmanager
async def trading(state_dir: Path, **overrides: Any) -> AsyncIterator[tuple[GatewaySim, ConnectionManager]]:
    """A simulator and a connected, trading manager on it."""
    async with trading_sim() as sim, ConnectionManager(order_settings(state_dir, sim.port, **overrides)) as m:
        await m.wait_connected(20)
        yield sim, m


def on_sim_order(sim: GatewaySim, ref: str, action: Callable[[], None]) -> None:
    """Run `action` once, synchronously, the moment the simulator has taken the placeOrder of
    `ref` (before any answer to it has left the simulator)."""
    done: list[bool] = []

    def hook(ev: SimEvent) -> None:
        if not done and ev.kind == "order" and repr(ref) in ev.detail:
            done.append(True)
            action()

    sim.on_event = hook


def placements(sim: GatewaySim, ref: str) -> int:
    return sim.broker.placements[ref]


def orders_at(sim: GatewaySim, ref: str) -> list[tuple[str, float]]:
    """(status, quantity) of every order the simulator holds with this ref."""
    return [(o.status, o.quantity) for o in sim.broker.orders_by_ref(ref)]


def limit(ref: str, **changes: Any) -> dict[str, Any]:
    """place_order arguments for a BUY 10 AAPL LMT at LOW (it rests)."""
    return {"symbol": "AAPL", "action": "BUY", "quantity": 10.0, "order_type": "LMT", "limit_price": LOW,
            "order_ref": ref, **changes}  # fmt: skip
