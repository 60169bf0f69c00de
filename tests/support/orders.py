"""Helpers for the order tests: a worker client that connects read-write, and limits the
simulator's market will not reach within a test."""

from __future__ import annotations

from typing import Any

from gatewaysim.accounts import AAPL
from support.worker_process import WorkerProcess
from worker.orders_protocol import Execution, OrderErrorData, OrderEvent, OrderState
from worker.protocol import Event, Response, data_as

SPEED = 8.0  # the simulator's trading day runs this many times faster than real time
LOW = round(AAPL.base_price * 0.5, 2)  # a BUY limit no price in a test's lifetime reaches


class OrderWorker(WorkerProcess):
    """A worker process with order helpers."""

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
