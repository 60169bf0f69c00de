"""ibgw-fsm: an explicit state machine that owns one IB Gateway connection.

The public API::

    from fsm import ConnectionManager, Settings, State, Reason, StateChange, Notice
    from fsm import NotConnected, SessionLost, WorkerDied, RequestTimeout, BadRequest, GatewayError

Everything else lives in modules named for their one job (fsm.driver, fsm.process, fsm.lockfile,
fsm.status, ...); the ``ibgw`` command is fsm.cli, which the library never imports.
"""

from fsm.changes import Change, Notice, StateChange, Subscription
from fsm.core import Reason, State, Transition
from fsm.errors import (
    AlreadyRunning,
    BadRequest,
    DisconnectForbidden,
    GatewayError,
    IbgwError,
    InvalidEvent,
    NotConnected,
    RemoteBindRefused,
    RequestTimeout,
    ResponseTooLarge,
    ServeError,
    SessionLost,
    SettingsError,
    UnknownHost,
    UnsafeStateDir,
    WorkerDied,
)
from fsm.manager import ConnectionManager
from fsm.settings import Settings

__all__ = [
    "AlreadyRunning",
    "BadRequest",
    "Change",
    "ConnectionManager",
    "DisconnectForbidden",
    "GatewayError",
    "IbgwError",
    "InvalidEvent",
    "NotConnected",
    "Notice",
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
    "Subscription",
    "Transition",
    "UnknownHost",
    "UnsafeStateDir",
    "WorkerDied",
]
