"""A request to the worker, checked before it is sent; its answer, turned into data or an error.

Everything a caller passes to ``ConnectionManager.request()`` is checked here, so that a bad
argument is a BadRequest at once (never a ValueError, TypeError, UnicodeEncodeError or
OverflowError from deeper down) and nothing malformed reaches the worker. The worker's error
codes map onto the public errors (fsm.errors) and, for a failed connect, onto the core's reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import msgspec

from fsm.core import Reason
from fsm.errors import (
    BadRequest,
    DisconnectForbidden,
    GatewayError,
    IbgwError,
    NotConnected,
    OrderRejected,
    RequestTimeout,
    ResponseTooLarge,
    SessionLost,
)
from worker import protocol as wp
from worker.market_protocol import DATA_COMMAND_PARAMS
from worker.orders_protocol import ORDER_COMMANDS, OrderCode

__all__ = ["HANDSHAKE_REASONS", "check_seconds", "encode_request", "error_from"]

#: How a failed `connect` answer maps onto the core's handshake_failed reason (else peer_closed).
#: The worker's own words (code: message) travel beside it as the manager's last_error.
HANDSHAKE_REASONS: Mapping[str, Reason] = {
    wp.Code.HANDSHAKE_TIMEOUT: Reason.api_unresponsive,
    wp.Code.NOT_A_GATEWAY: Reason.api_unresponsive,  # something answers, but not the API
    wp.Code.CLIENT_ID_IN_USE: Reason.client_id_in_use,
    wp.Code.CONNECTION_REFUSED: Reason.refused,
    wp.Code.DNS_FAILURE: Reason.unknown_host,
    wp.Code.SERVER_VERSION_TOO_OLD: Reason.gateway_too_old,
    wp.Code.PEER_CLOSED: Reason.peer_closed,
    wp.Code.SESSION_LOST: Reason.peer_closed,
}

_BAD_REQUEST_CODES = frozenset(
    {wp.Code.BAD_REQUEST, wp.Code.UNKNOWN_COMMAND, wp.Code.INVALID_JSON, wp.Code.LINE_TOO_LONG}
)
_SESSION_LOST_CODES = frozenset({wp.Code.SESSION_LOST, wp.Code.PEER_CLOSED})
_ENCODE_FAILURES = (TypeError, ValueError, UnicodeError, OverflowError, msgspec.EncodeError)


def check_seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    """A duration argument as float seconds: a finite real number, positive (or 0 if
    ``zero_ok``), at most a day. BadRequest naming the argument otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name} must be a number of seconds, got {type(value).__name__}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not zero_ok):
        raise BadRequest(
            f"{name}={value!r} is not a {'non-negative' if zero_ok else 'positive'} finite number of seconds"
        )
    if seconds > wp.MAX_TIMEOUT:
        raise BadRequest(f"{name}={value!r} is over the {wp.MAX_TIMEOUT:g} s maximum")
    return seconds


def encode_request(command: object, rid: int, timeout: float, params: dict[str, Any]) -> bytes:
    """The request line for ``command``; BadRequest for anything the worker could not take."""
    if not isinstance(command, str) or not command:
        raise BadRequest(f"command must be a non-empty string, got {command!r:.80}")
    if command == "disconnect":
        raise DisconnectForbidden()
    if command == "connect":
        raise BadRequest("connect is the manager's own job; request() is for session commands")
    params_type = (
        wp.COMMAND_PARAMS.get(command) or ORDER_COMMANDS.get(command) or DATA_COMMAND_PARAMS.get(command)
    )
    if params_type is not None:
        if "timeout" in params_type.__struct_fields__:
            params.setdefault("timeout", timeout)
        try:
            wp.parse_params(command, params, {command: params_type})
        except wp.ProtocolError as exc:
            raise BadRequest(exc.message) from None
    try:
        return wp.encode(wp.Request(command=command, params=params, id=rid))
    except _ENCODE_FAILURES as exc:
        raise BadRequest(f"{command}: params cannot be sent as JSON text: {exc}") from None


def error_from(info: wp.ErrorInfo | None, command: str, *, session_lost: bool = False) -> IbgwError:
    """The public error for a worker's error answer. ``session_lost``: the worker has reported
    that its session ended, so its 'not connected' means the session was lost under the call."""
    if info is None:
        return GatewayError("internal_error", f"{command}: error response without details")
    code, message = info.code, info.message
    if code in _BAD_REQUEST_CODES:
        return BadRequest(message)
    if code in _SESSION_LOST_CODES or (code == wp.Code.NOT_CONNECTED and session_lost):
        return SessionLost(message)
    if code == wp.Code.NOT_CONNECTED:
        return NotConnected(message)
    if code in (wp.Code.REQUEST_TIMEOUT, wp.Code.GATEWAY_SILENT):
        return RequestTimeout(message)
    if code == wp.Code.RESPONSE_TOO_LARGE:
        return ResponseTooLarge(message)
    if code == wp.Code.DISCONNECT_FORBIDDEN:
        return DisconnectForbidden(message)
    if code == OrderCode.ORDER_REJECTED:
        return OrderRejected(info.ib_code if info.ib_code is not None else 0, message)
    if code == wp.Code.GATEWAY_ERROR and info.ib_code is not None:
        return GatewayError(info.ib_code, message)
    return GatewayError(code, message)
