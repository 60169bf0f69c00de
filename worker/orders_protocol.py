"""Typed messages of the order commands (issue 14), shared by the worker and the manager.

Commands: ``place_order``, ``modify_order``, ``cancel_order``, ``open_orders``,
``completed_orders``, ``executions``. Events: ``order_status`` (an OrderState), ``execution``
(an Execution, sent once its commission report is in) and ``order_error`` (OrderErrorData).
An order's ``order_status`` events are held while a command waits on that order: its answer
carries the state, and any event after the answer says something newer (worker.orders).

Statuses are IB's own words (PreSubmitted, Submitted, Filled, Cancelled, ...), never ib_async's
client-side inventions: ib_async has no "Rejected" and marks an order "Cancelled" on any order
error or "ValidationError" on a warning; the worker reports those as ``order_error`` events
(and a refused placement as the error ``order_rejected``) and keeps the status the broker last
sent. OrderState and Execution are worker.market_protocol's (the snapshot reports them too).
Like worker.protocol, this module imports nothing from fsm or ib_async.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Final, Literal

from msgspec import Meta, Struct

from worker.market_protocol import ContractSpec, Execution, OrderState
from worker.protocol import Params, Timeout

__all__ = [
    "ACKNOWLEDGED",
    "ORDER_COMMANDS",
    "TERMINAL",
    "CancelOrderParams",
    "CompletedOrdersParams",
    "Execution",
    "ExecutionsParams",
    "ExecutionsResult",
    "ModifyOrderParams",
    "OpenOrdersParams",
    "OrderCode",
    "OrderErrorData",
    "OrderEvent",
    "OrderState",
    "OrdersResult",
    "PlaceOrderParams",
]

OrderRef = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[!-~]+$")]
"""Printable ASCII without spaces: it travels in IB's NUL-separated fields and in file names."""
OrderId = Annotated[int, Meta(gt=0, le=2**31 - 1)]
Quantity = Annotated[float, Meta(gt=0, le=1e9)]
Price = Annotated[float, Meta(gt=0, le=1e9)]
Account = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[!-~]+$")]

#: Statuses after which an order never changes again.
TERMINAL: Final = frozenset({"Filled", "Cancelled", "ApiCancelled"})
#: Statuses that prove the broker holds the order (with a permId).
ACKNOWLEDGED: Final = frozenset(
    {"PreSubmitted", "Submitted", "Filled", "Cancelled", "PendingCancel", "ApiCancelled", "Inactive"}
)


class OrderCode:
    """Error codes of the order commands (beside worker.protocol.Code)."""

    ORDER_REJECTED: Final = "order_rejected"  # ib_code: the broker's code (201, 202, 103, ...)
    READ_ONLY: Final = "read_only"  # the session was connected read-only: nothing sent
    DUPLICATE_ORDER_REF: Final = "duplicate_order_ref"  # this session already holds that ref
    ORDER_NOT_FOUND: Final = "order_not_found"  # modify: no order with that id in this session
    ORDER_DONE: Final = "order_done"  # modify: the order is filled or cancelled; nothing sent


class OrderEvent:
    """Event names of the order flow."""

    ORDER_STATUS: Final = "order_status"
    EXECUTION: Final = "execution"
    ORDER_ERROR: Final = "order_error"


# --------------------------------------------------------------------------------- params


class PlaceOrderParams(ContractSpec, frozen=True, kw_only=True):
    """place_order: one new order. A LMT needs limit_price, a STP stop_price; a MKT neither."""

    action: Literal["BUY", "SELL"]
    quantity: Quantity
    order_type: Literal["MKT", "LMT", "STP"]
    order_ref: OrderRef
    limit_price: Price | None = None
    stop_price: Price | None = None
    tif: Literal["DAY", "GTC"] = "DAY"
    outside_rth: bool = False
    account: Account | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_prices(self.order_type, self.limit_price, self.stop_price)


class ModifyOrderParams(Params, frozen=True, kw_only=True):
    """modify_order: the order (by id, with its ref as a check) and only the fields to change."""

    order_id: OrderId
    order_ref: OrderRef
    quantity: Quantity | None = None
    order_type: Literal["MKT", "LMT", "STP"] | None = None
    limit_price: Price | None = None
    stop_price: Price | None = None
    tif: Literal["DAY", "GTC"] | None = None
    outside_rth: bool | None = None
    timeout: Timeout | None = None

    def __post_init__(self) -> None:
        changes = (self.quantity, self.order_type, self.limit_price, self.stop_price, self.tif)
        if all(v is None for v in changes) and self.outside_rth is None:
            raise ValueError("nothing to change: give at least one of quantity, order_type, "
                             "limit_price, stop_price, tif, outside_rth")  # fmt: skip


class CancelOrderParams(Params, frozen=True):
    order_id: OrderId
    timeout: Timeout | None = None


class OpenOrdersParams(Params, frozen=True):
    """all_clients: every client's working orders (visible only: they stay bound to their own)."""

    all_clients: bool = False
    timeout: Timeout | None = None


class CompletedOrdersParams(Params, frozen=True):
    timeout: Timeout | None = None


class ExecutionsParams(Params, frozen=True):
    """since: ISO 8601 time with an offset (None: all the broker keeps, i.e. its day);
    all_clients: executions of every client id, not only this session's."""

    since: datetime | None = None
    all_clients: bool = False
    timeout: Timeout | None = None

    def __post_init__(self) -> None:
        if self.since is not None and self.since.utcoffset() is None:
            raise ValueError("since needs a UTC offset, e.g. 2026-11-25T09:30:00-05:00")


ORDER_COMMANDS: Final[Mapping[str, type[Params]]] = {
    "place_order": PlaceOrderParams,
    "modify_order": ModifyOrderParams,
    "cancel_order": CancelOrderParams,
    "open_orders": OpenOrdersParams,
    "completed_orders": CompletedOrdersParams,
    "executions": ExecutionsParams,
}


def check_prices(order_type: str | None, limit_price: float | None, stop_price: float | None) -> None:
    """The prices an order type needs, and only those (ValueError says which)."""
    for name, value in (("limit_price", limit_price), ("stop_price", stop_price)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number")
    if order_type == "LMT" and (limit_price is None or stop_price is not None):
        raise ValueError("a LMT order needs limit_price and no stop_price")
    if order_type == "STP" and (stop_price is None or limit_price is not None):
        raise ValueError("a STP order needs stop_price and no limit_price")
    if order_type == "MKT" and (limit_price is not None or stop_price is not None):
        raise ValueError("a MKT order takes neither limit_price nor stop_price")


# -------------------------------------------------------------------------------- results


class OrdersResult(Struct):
    orders: list[OrderState]


class ExecutionsResult(Struct):
    executions: list[Execution]


class OrderErrorData(Struct, frozen=True, kw_only=True):
    """An IB message about one order (a warning such as 399/2109, a refused modify or cancel,
    a cancel confirmed by 202): the order's status is whatever order_status says last."""

    order_ref: str
    order_id: int
    ib_code: int
    message: str
