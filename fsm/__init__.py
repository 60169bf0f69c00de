"""ibgw-fsm: an explicit state machine that owns one IB Gateway connection.

The public API::

    from fsm import ConnectionManager, Settings, State, Reason, StateChange, Notice
    from fsm import NotConnected, SessionLost, WorkerDied, RequestTimeout, BadRequest, GatewayError
    from fsm import OrderState, Execution, ReadOnly, DuplicateOrderRef, OrderRejected, OrderNotPlaced
    from fsm import OrderInDoubt, MaintenanceWindow
    from fsm import Stream, Quote, Bar, Trade, Gap

Everything else lives in modules named for their one job (fsm.driver, fsm.process, fsm.lockfile,
fsm.status, ...); the ``ibgw`` command is fsm.cli, which the library never imports.
"""

from fsm.changes import Change, Notice, StateChange, Subscription
from fsm.core import Reason, State, Transition
from fsm.errors import (
    AlreadyRunning,
    BadRequest,
    DisconnectForbidden,
    DuplicateOrderRef,
    GatewayError,
    IbgwError,
    InvalidEvent,
    MaintenanceWindow,
    NotConnected,
    OrderInDoubt,
    OrderNotPlaced,
    OrderRejected,
    ReadOnly,
    RemoteBindRefused,
    RequestTimeout,
    ResponseTooLarge,
    ServeError,
    SessionLost,
    SettingsError,
    UnknownHost,
    UnsafeStateDir,
    WaitTimeout,
    WorkerDied,
)
from fsm.manager import ConnectionManager
from fsm.settings import Settings
from fsm.streaming import Stream
from fsm.streams import Bar, Gap, Quote, Trade
from worker.orders_protocol import Execution, OrderState

__all__ = [
    "AlreadyRunning",
    "BadRequest",
    "Bar",
    "Change",
    "ConnectionManager",
    "DisconnectForbidden",
    "DuplicateOrderRef",
    "Execution",
    "Gap",
    "GatewayError",
    "IbgwError",
    "InvalidEvent",
    "MaintenanceWindow",
    "NotConnected",
    "Notice",
    "OrderInDoubt",
    "OrderNotPlaced",
    "OrderRejected",
    "OrderState",
    "Quote",
    "ReadOnly",
    "Reason",
    "RemoteBindRefused",
    "RequestTimeout",
    "ResponseTooLarge",
    "ServeError",
    "SessionLost",
    "Settings",
    "SettingsError",
    "State",
    "StateChange",
    "Stream",
    "Subscription",
    "Trade",
    "Transition",
    "UnknownHost",
    "UnsafeStateDir",
    "WaitTimeout",
    "WorkerDied",
]
