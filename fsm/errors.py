"""The errors ibgw-fsm raises on purpose, so callers can catch them by kind."""

from __future__ import annotations


class IbgwError(Exception):
    """Base class: everything below can be caught as one."""


class SettingsError(IbgwError, ValueError):
    """A setting is invalid; the message names the env variable or field it came from."""


class DisconnectForbidden(IbgwError):
    """Raised instead of disconnecting: a session must never be closed from inside."""

    def __init__(
        self,
        message: str = "sessions end only by process exit — call shutdown() instead of disconnect()",
    ) -> None:
        super().__init__(message)


class InvalidEvent(IbgwError):
    """The core does not accept this event now; its state is unchanged."""

    def __init__(self, event: str, state: str, detail: str) -> None:
        super().__init__(f"{event} is not valid in {state}: {detail}")
        self.event = event
        self.state = state


class NotConnected(IbgwError):
    """A request needs a session and there is none (or none came within `wait`)."""


class SessionLost(NotConnected):
    """The Gateway session ended while the request was in flight (the Gateway closed it, or the
    worker had lost it); the manager reconnects on its own. Caught by ``except NotConnected``."""


class WorkerDied(IbgwError):
    """The worker process exited while the request was in flight."""


class RequestTimeout(IbgwError):
    """The request got no answer within its timeout."""


class WaitTimeout(IbgwError, TimeoutError):
    """wait_for / wait_connected: the state was not reached in time (still a TimeoutError, so
    ``except TimeoutError`` keeps working)."""


class BadRequest(IbgwError):
    """The request is malformed (wrong params or timeout, unknown command, text that cannot be
    encoded...): refused before it is sent, or by the worker."""


class ResponseTooLarge(IbgwError):
    """The answer to this request exceeded the per-line bound of the worker protocol; that
    request alone failed, the session goes on."""


class GatewayError(IbgwError):
    """The Gateway (or ib_async) answered with an error code."""

    def __init__(self, code: int | str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class AlreadyRunning(IbgwError):
    """Another live manager holds the lock for this host/port/client id."""


class MaintenanceWindow(IbgwError):
    """A new order was refused inside a maintenance window (IB's nightly reset, the Gateway's
    daily restart): its answer could be lost with the session. Allow it explicitly to send it."""

    def __init__(self, window: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"new orders are refused inside the maintenance window {window!r}; allow them explicitly"
        )
        self.window = window


class ReadOnly(IbgwError):
    """An order command was refused because the connection is read-only (the default); nothing
    was sent to the Gateway."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(
            message
            or "orders are refused: the connection is read-only (the safe default). To trade, turn it "
            "off with IBKR_READONLY=0 in the environment or Settings(readonly=False) in code"
        )


class DuplicateOrderRef(IbgwError):
    """An order_ref already used (in the last 24 hours, or by an order not yet final) was given
    again; nothing was sent. A ref whose order was proven not placed may be used again."""

    def __init__(self, order_ref: str, message: str | None = None) -> None:
        super().__init__(message or f"order_ref {order_ref!r} was already used; nothing was sent")
        self.order_ref = order_ref


class OrderRejected(IbgwError):
    """The broker refused the order, modification or cancel (IB code in ``code``, e.g. 201, 202,
    103, 10147, 10148); the order as it stands is unchanged."""

    def __init__(self, code: int, message: str, order_ref: str | None = None) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.order_ref = order_ref


class OrderNotPlaced(IbgwError):
    """The broker has no trace of this request (a new session's open orders, completed orders
    and executions were checked): it was never placed, so sending it again is safe. ``state``
    is the order as the broker has it when a modify or cancel did not take effect."""

    def __init__(self, order_ref: str, message: str | None = None, state: object | None = None) -> None:
        super().__init__(message or f"order {order_ref!r} was not placed: the broker has no trace of it")
        self.order_ref = order_ref
        self.state = state


class OrderInDoubt(IbgwError):
    """The request may or may not have reached the broker and no session came back within the
    call's deadline to tell. Never re-send it: ``await m.order_status(order_ref)`` resolves it
    once a session is up (also after a restart of this process, from the journal)."""

    def __init__(self, order_ref: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"order {order_ref!r} is in doubt: it may be live at the broker; do not re-send it, "
            f"resolve it with order_status({order_ref!r})"
        )
        self.order_ref = order_ref


class UnknownHost(SettingsError):
    """The Gateway host name does not resolve (or is not a valid name); nothing was started."""


class UnsafeStateDir(SettingsError):
    """The state directory is not provably ours: a symlink, not a directory, owned by another
    user, or writable by group or others."""


class CheckoutError(IbgwError):
    """A repository tool (diagram, bench) found no ibgw-fsm checkout to write into, or one whose
    code is not the code running."""


class ServeError(IbgwError):
    """The health server cannot listen where it was asked to (bad address, port in use...)."""


class RemoteBindRefused(ServeError):
    """A non-loopback address was given without allow_remote=True: health and metrics stay
    on this machine unless exposing them is asked for explicitly."""
