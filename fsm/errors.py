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
