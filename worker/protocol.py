"""Typed JSON-lines messages between the manager and `python -m worker`.

Shared by both sides: the manager (fsm/) builds requests and decodes responses/events with it, the
worker decodes requests and encodes answers. It imports nothing from fsm or ib_async, so the
manager never pulls ib_async into its own process.

Wire shapes (one JSON object per line, UTF-8, ending in "\\n"):

- request   ``{"id"?: int, "command": str, "params": {...}}``
- response  ``{"id"?: int, "status": "success", "data": {...}}``
            ``{"id"?: int, "status": "error", "error": {"code": str, "message": str, "ib_code"?: int}}``
- event     ``{"event": str, "data"?: {...}}``
- chunk     ``{"id": int | null, "chunk": str, "seq": int, "last": bool}``

No line is longer than MAX_LINE_BYTES (1 MiB, newline excluded), in either direction. A response
whose line would be longer travels as chunk lines: the UTF-8 concatenation of their ``chunk``
strings, seq 0, 1, ... up to the one with ``last: true``, is the response's own line. Chunks of
different responses may interleave; each response's arrive in order. A response over
MAX_RESPONSE_BYTES (64 MiB) is answered ``response_too_large`` instead. Responses and chunks
write ``"id"`` first, so a reader can recover the id from the first bytes of any line (line_id).
Reassembler joins chunks on the reading side.

Parameters live only under ``params``: the original bug was ``{"command": "connect", "host": ...}``
which a lenient worker accepted and then waited on forever. Here the constructors cannot build that
shape, and the decoder answers it with ``bad_request`` naming the misplaced keys.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec
from msgspec import Meta, Struct

__all__ = [
    "COMMAND_PARAMS",
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_LINE_BYTES",
    "MAX_RESPONSE_BYTES",
    "PROTOCOL_VERSION",
    "AccountParams",
    "AccountSummaryResult",
    "AccountsResult",
    "Chunk",
    "Code",
    "ConnectParams",
    "ConnectResult",
    "ErrorInfo",
    "Event",
    "EventName",
    "IbErrorData",
    "NoParams",
    "Params",
    "PingResult",
    "PositionRow",
    "PositionsResult",
    "ProbeParams",
    "ProbeResult",
    "ProtocolError",
    "ReadyData",
    "Reassembler",
    "Request",
    "Response",
    "SummaryRow",
    "TimeoutParams",
    "connect",
    "data_as",
    "decode_command",
    "decode_incoming",
    "decode_request",
    "encode",
    "encode_response",
    "event",
    "failure",
    "line_id",
    "parse_params",
    "request",
    "success",
]

PROTOCOL_VERSION: Final = 2  # 2: chunk lines, probe, the codes since session_lost
MAX_LINE_BYTES: Final = 1 << 20  # longest line either side writes or accepts, newline excluded
MAX_RESPONSE_BYTES: Final = 64 << 20  # largest response carried, in chunks (its encoded size)
CHUNK_ENVELOPE_BYTES: Final = 128  # > len('{"id":-9223372036854775808,"chunk":"","seq":...,"last":false}')
DEFAULT_REQUEST_TIMEOUT: Final = 10.0  # worker-side bound for a request without params.timeout
MAX_TIMEOUT: Final = 86_400.0  # a day; keeps loop.call_at away from float overflow


class Code:
    """ErrorInfo.code values (plain str constants, so they compare with decoded strings)."""

    INVALID_JSON: Final = "invalid_json"
    BAD_REQUEST: Final = "bad_request"
    UNKNOWN_COMMAND: Final = "unknown_command"
    LINE_TOO_LONG: Final = "line_too_long"
    DISCONNECT_FORBIDDEN: Final = "disconnect_forbidden"
    NOT_CONNECTED: Final = "not_connected"
    ALREADY_CONNECTING: Final = "already_connecting"
    WORKER_SPENT: Final = "worker_spent"
    HANDSHAKE_TIMEOUT: Final = "handshake_timeout"
    CLIENT_ID_IN_USE: Final = "client_id_in_use"
    CONNECTION_REFUSED: Final = "connection_refused"
    PEER_CLOSED: Final = "peer_closed"
    REQUEST_TIMEOUT: Final = "request_timeout"
    GATEWAY_ERROR: Final = "gateway_error"
    INTERNAL_ERROR: Final = "internal_error"
    GATEWAY_SILENT: Final = "gateway_silent"
    SESSION_LOST: Final = "session_lost"
    SERVER_VERSION_TOO_OLD: Final = "server_version_too_old"
    DNS_FAILURE: Final = "dns_failure"
    NOT_A_GATEWAY: Final = "not_a_gateway"
    RESPONSE_TOO_LARGE: Final = "response_too_large"
    BAD_CHUNK: Final = "bad_chunk"

    ALL: Final = frozenset(
        {
            INVALID_JSON,
            BAD_REQUEST,
            UNKNOWN_COMMAND,
            LINE_TOO_LONG,
            DISCONNECT_FORBIDDEN,
            NOT_CONNECTED,
            ALREADY_CONNECTING,
            WORKER_SPENT,
            HANDSHAKE_TIMEOUT,
            CLIENT_ID_IN_USE,
            CONNECTION_REFUSED,
            PEER_CLOSED,
            REQUEST_TIMEOUT,
            GATEWAY_ERROR,
            INTERNAL_ERROR,
            GATEWAY_SILENT,
            SESSION_LOST,
            SERVER_VERSION_TOO_OLD,
            DNS_FAILURE,
            NOT_A_GATEWAY,
            RESPONSE_TOO_LARGE,
            BAD_CHUNK,
        }
    )


class EventName:
    """Event.event values."""

    READY: Final = "ready"
    IB_ERROR: Final = "ib_error"
    SESSION_LOST: Final = "session_lost"


class ProtocolError(Exception):
    """A line that is not a valid message; carries the error code and the id if one was read."""

    def __init__(self, code: str, message: str, id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id

    def to_response(self) -> Response:
        return failure(self.code, self.message, id=self.id)


class CommandError(Exception):
    """A handler's typed failure: becomes {"status": "error", "error": {code, message, ib_code}}."""

    def __init__(self, code: str, message: str, ib_code: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.ib_code = ib_code


# --------------------------------------------------------------------------------------------
# Parameters, one struct per command

Timeout = Annotated[float, Meta(gt=0, le=MAX_TIMEOUT)]


class Params(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Base of every command's params: unknown keys are errors, never silently ignored."""


class NoParams(Params, frozen=True):
    """Commands that take nothing (status, disconnect)."""


class ConnectParams(Params, frozen=True):
    """connect: timeout bounds the whole of ib_async's connectAsync, start-up sync included."""

    host: Annotated[str, Meta(min_length=1, max_length=255)]
    port: Annotated[int, Meta(ge=1, le=65535)]
    client_id: Annotated[int, Meta(ge=0, le=2**31 - 1)]
    readonly: bool = True
    timeout: Timeout = 30.0


class TimeoutParams(Params, frozen=True):
    """Requests with a round trip to the Gateway (ping); None = DEFAULT_REQUEST_TIMEOUT."""

    timeout: Timeout | None = None


class AccountParams(TimeoutParams, frozen=True):
    """positions / account_summary / accounts: optional account filter ("" = all)."""

    account: str = ""


class ProbeParams(Params, frozen=True):
    """probe: bytes from the Gateway younger than `window` s prove the session alive at once;
    otherwise a round trip that bypasses user traffic, failed after `timeout` s of silence."""

    window: Annotated[float, Meta(ge=0, le=MAX_TIMEOUT)] = 10.0
    timeout: Timeout = 5.0


COMMAND_PARAMS: Final[Mapping[str, type[Params]]] = {
    "connect": ConnectParams,
    "ping": TimeoutParams,
    "probe": ProbeParams,
    "accounts": AccountParams,
    "positions": AccountParams,
    "account_summary": AccountParams,
    "status": NoParams,
    "disconnect": NoParams,  # recognised only to be refused with disconnect_forbidden
}

# --------------------------------------------------------------------------------------------
# Envelopes


class Request(Struct, omit_defaults=True):
    """One command; build it with request()/connect(), which always nest params."""

    command: str
    params: dict[str, Any] = {}
    id: int | None = None


class ErrorInfo(Struct, omit_defaults=True):
    code: str
    message: str
    ib_code: int | None = None


class Response(Struct, omit_defaults=True, kw_only=True):
    """Exactly one per request line: success with data, or error with an ErrorInfo."""

    id: int | None = None  # first on the wire (see line_id)
    status: Literal["success", "error"]
    data: dict[str, Any] | None = None
    error: ErrorInfo | None = None

    def __post_init__(self) -> None:
        if self.status == "success" and (self.data is None or self.error is not None):
            raise ValueError("a success response carries data and no error")
        if self.status == "error" and (self.error is None or self.data is not None):
            raise ValueError("an error response carries error and no data")

    @property
    def ok(self) -> bool:
        return self.status == "success"


class Event(Struct, omit_defaults=True):
    """Unsolicited: ready, ib_error, session_lost. Never carries an id."""

    event: str
    data: dict[str, Any] = {}


class Chunk(Struct):
    """One consecutive slice of a response's encoded line; fields in wire order, id always written."""

    id: int | None
    chunk: str
    seq: int
    last: bool


# Typed payloads (for building on the worker side and checking on the manager side with data_as)


class ReadyData(Struct):
    pid: int
    ib_async: str
    protocol: int


class IbErrorData(Struct):
    code: int
    req_id: int
    message: str


class ConnectResult(Struct):
    connected: bool
    accounts: list[str]
    client_id: int
    server_version: int
    already_connected: bool
    elapsed_ms: float


class PingResult(Struct):
    gateway_time: float
    latency_ms: float


class ProbeResult(Struct):
    """age_ms: age of the newest bytes from the Gateway when answered; sent: the session was quiet
    so a reqCurrentTime went out past the pacing queue; waited_ms: time spent waiting for bytes;
    user_backlog: user messages then waiting in ib_async's pacing queue."""

    age_ms: float
    sent: bool
    waited_ms: float
    user_backlog: int


class AccountsResult(Struct):
    accounts: list[str]


class PositionRow(Struct):
    account: str
    symbol: str
    sec_type: str
    con_id: int
    currency: str
    position: float
    avg_cost: float


class PositionsResult(Struct):
    positions: list[PositionRow]


class SummaryRow(Struct):
    account: str
    tag: str
    value: str
    currency: str


class AccountSummaryResult(Struct):
    rows: list[SummaryRow]


# --------------------------------------------------------------------------------------------
# Constructors


def request(command: str, *, id: int | None = None, **params: Any) -> Request:
    """Build a request; params always land under "params" (never at the top level).

    For a known command the params are checked against its struct here, so a typo or a nested
    ``params=`` fails in the caller instead of in the worker.
    """
    params_type = COMMAND_PARAMS.get(command)
    if params_type is not None:
        parse_params(command, params)
    return Request(command=command, params=params, id=id)


def connect(params: ConnectParams, *, id: int | None = None) -> Request:
    return Request(command="connect", params=msgspec.structs.asdict(params), id=id)


def success(data: Mapping[str, Any] | Struct, *, id: int | None = None) -> Response:
    return Response(status="success", id=id, data=_as_dict(data))


def failure(code: str, message: str, *, id: int | None = None, ib_code: int | None = None) -> Response:
    return Response(status="error", id=id, error=ErrorInfo(code=code, message=message, ib_code=ib_code))


def event(name: str, data: Mapping[str, Any] | Struct | None = None) -> Event:
    return Event(event=name, data=_as_dict(data) if data is not None else {})


def _as_dict(data: Mapping[str, Any] | Struct) -> dict[str, Any]:
    if isinstance(data, Struct):
        out: dict[str, Any] = msgspec.to_builtins(data)
        return out
    return dict(data)


_encoder = msgspec.json.Encoder()


def encode(msg: Request | Response | Event) -> bytes:
    """One JSON line ending in b"\\n"."""
    return _encoder.encode(msg) + b"\n"


def encode_response(
    resp: Response, *, max_line: int = MAX_LINE_BYTES, max_total: int = MAX_RESPONSE_BYTES
) -> list[bytes]:
    """The lines that carry resp: its own line, or chunk lines when that is over max_line.

    Over max_total, or not encodable (a lone surrogate in a string), it becomes an error response
    with the same id: the request still gets exactly one answer."""
    try:
        line = _encoder.encode(resp)
    except (UnicodeEncodeError, TypeError, OverflowError) as exc:
        line = _encoder.encode(failure(Code.INTERNAL_ERROR, f"response not encodable: {exc}", id=resp.id))
    if len(line) <= max_line:
        return [line + b"\n"]
    if len(line) > max_total:
        too_large = failure(
            Code.RESPONSE_TOO_LARGE,
            f"the answer is {len(line)} bytes; at most {max_total} are carried: ask for less (e.g. by account)",
            id=resp.id,
        )
        return [_encoder.encode(too_large) + b"\n"]
    return list(_chunk_lines(resp.id, line, max_line))


def _chunk_lines(rid: int | None, line: bytes, max_line: int) -> Iterator[bytes]:
    """Slices cut at UTF-8 character boundaries; JSON escaping at most doubles a slice (only " and
    \\ are escaped again: the line has no control characters), so each chunk line fits max_line."""
    step = max(4, (max_line - CHUNK_ENVELOPE_BYTES) // 2)
    start, seq = 0, 0
    while start < len(line):
        end = min(start + step, len(line))
        while end < len(line) and line[end] & 0xC0 == 0x80:  # not inside a multi-byte character
            end -= 1
        piece = line[start:end].decode()
        yield _encoder.encode(Chunk(id=rid, chunk=piece, seq=seq, last=end == len(line))) + b"\n"
        start, seq = end, seq + 1


_LINE_ID = re.compile(rb'\{"id":(-?[0-9]{1,19})[,}]')


def line_id(prefix: bytes) -> int | None:
    """The id of a response or chunk line from its first bytes (the worker writes "id" first), so
    a line too long to read whole can still fail its own request alone."""
    m = _LINE_ID.match(prefix)
    return int(m.group(1)) if m else None


# --------------------------------------------------------------------------------------------
# Decoding

_DECODE_FAILURES = (msgspec.DecodeError, RecursionError, UnicodeDecodeError, ValueError)
_KIND = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


def _kind(value: Any) -> str:
    return _KIND.get(type(value), type(value).__name__)


def _read_id(obj: dict[str, Any]) -> int | None:
    raw = obj.get("id")
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    return None


def decode_request(line: bytes, commands: Mapping[str, type[Params]] = COMMAND_PARAMS) -> Request:
    """Worker side: parse and check one line; raise ProtocolError(code, message, id).

    Checks, in order: size, JSON, object, id, command, misplaced top-level keys, params object,
    known command, params fields. The id is attached to the error whenever it could be read.
    """
    return decode_command(line, commands)[0]


def decode_command(
    line: bytes, commands: Mapping[str, type[Params]] = COMMAND_PARAMS
) -> tuple[Request, Params]:
    """decode_request plus the typed params struct (what the worker dispatches on)."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(Code.LINE_TOO_LONG, f"line is {len(line)} bytes; the limit is {MAX_LINE_BYTES}")
    text = line.strip()
    if not text:
        raise ProtocolError(Code.INVALID_JSON, "empty line; expected one JSON object")
    try:
        obj = msgspec.json.decode(text)
    except _DECODE_FAILURES as exc:
        raise ProtocolError(Code.INVALID_JSON, f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Code.BAD_REQUEST, f"a request must be a JSON object, got {_kind(obj)}")
    rid = _read_id(obj)
    if "id" in obj and obj["id"] is not None and rid is None:
        raise ProtocolError(Code.BAD_REQUEST, f"id must be an integer or null, got {_kind(obj['id'])}")
    command = obj.get("command")
    if not isinstance(command, str) or not command:
        what = "is missing" if "command" not in obj else f"must be a non-empty string, got {_kind(command)}"
        raise ProtocolError(Code.BAD_REQUEST, f"command {what}", rid)
    extra = sorted(k for k in obj if k not in ("id", "command", "params"))
    if extra:
        keys = ", ".join(extra)
        raise ProtocolError(
            Code.BAD_REQUEST,
            f'{command}: unexpected top-level keys {keys}; parameters belong inside "params", '
            f'e.g. {{"command": "{command}", "params": {{"{extra[0]}": ...}}}}',
            rid,
        )
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(
            Code.BAD_REQUEST, f"{command}: params must be an object, got {_kind(params)}", rid
        )
    if command not in commands:
        known = ", ".join(sorted(commands))
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {command!r}; known: {known}", rid)
    typed = parse_params(command, params, commands, id=rid)
    return Request(command=command, params=params, id=rid), typed


_MISSING = re.compile(r"Object missing required field `([^`]*)`(?: - at `\$(.*)`)?")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `\$(.*)`)?")
_AT = re.compile(r"^(.*) - at `\$(.*)`$")


def _explain(command: str, err: str) -> str:
    """Turn msgspec's message into 'connect: params.host is missing' style."""
    if m := _MISSING.fullmatch(err):
        return f"{command}: params{m.group(2) or ''}.{m.group(1)} is missing"
    if m := _UNKNOWN.fullmatch(err):
        return f"{command}: params{m.group(2) or ''} has unknown field {m.group(1)!r}"
    if m := _AT.fullmatch(err):
        what = m.group(1).replace("Expected", "expected", 1)
        return f"{command}: params{m.group(2)}: {what}"
    return f"{command}: params: {err}"


def parse_params(
    command: str,
    params: Mapping[str, Any],
    commands: Mapping[str, type[Params]] = COMMAND_PARAMS,
    *,
    id: int | None = None,
) -> Params:
    """Convert a params dict to the command's struct; bad_request with a precise message."""
    params_type = commands.get(command)
    if params_type is None:
        raise ProtocolError(Code.UNKNOWN_COMMAND, f"unknown command {command!r}", id)
    try:
        out = msgspec.convert(dict(params), params_type)
    except msgspec.ValidationError as exc:
        raise ProtocolError(Code.BAD_REQUEST, _explain(command, str(exc)), id) from None
    return out  # NaN/inf are refused by the Meta bounds (gt/le)


def decode_incoming(line: bytes) -> Response | Event | Chunk:
    """Manager side: one worker stdout line -> Response, Event or Chunk (feed chunks to a
    Reassembler); ProtocolError if malformed."""
    try:
        obj = msgspec.json.decode(line)
    except _DECODE_FAILURES as exc:
        raise ProtocolError(Code.INVALID_JSON, f"worker sent invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(Code.BAD_REQUEST, f"worker sent {_kind(obj)}, not an object")
    target: type[Response] | type[Event] | type[Chunk] = (
        Event if "event" in obj else Chunk if "chunk" in obj else Response
    )
    try:
        return msgspec.convert(obj, target)
    except msgspec.ValidationError as exc:
        raise ProtocolError(
            Code.BAD_REQUEST, f"worker sent a malformed {target.__name__.lower()}: {exc}", _read_id(obj)
        ) from None


class Reassembler:
    """Joins chunk lines back into their response (the reading side of chunking).

    Pieces of different responses may interleave; each response's come in seq order. A response
    whose pieces exceed max_bytes in total, come out of order, or do not join into a response
    with their id fails that id alone: feed raises ProtocolError(code, message, id) once and drops
    the rest of that response's pieces. Other responses are unaffected.
    """

    def __init__(self, max_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._parts: dict[int | None, list[bytes]] = {}
        self._sizes: dict[int | None, int] = {}
        self._dropping: set[int | None] = set()

    def pending(self) -> list[int | None]:
        """Ids with a response partly received."""
        return list(self._parts)

    def clear(self) -> None:
        """Forget everything (the writer is gone)."""
        self._parts.clear()
        self._sizes.clear()
        self._dropping.clear()

    def feed(self, chunk: Chunk) -> Response | None:
        """The completed response when this was its last piece, else None."""
        rid = chunk.id
        if rid in self._dropping:
            if chunk.last:
                self._dropping.discard(rid)
            return None
        parts = self._parts.setdefault(rid, [])
        if chunk.seq != len(parts):
            self._fail(rid, chunk.last)
            raise ProtocolError(
                Code.BAD_CHUNK, f"response {rid}: piece {chunk.seq} arrived, expected {len(parts)}", rid
            )
        try:
            piece = chunk.chunk.encode()
        except UnicodeEncodeError:
            self._fail(rid, chunk.last)
            raise ProtocolError(
                Code.BAD_CHUNK, f"response {rid}: piece {chunk.seq} is not UTF-8", rid
            ) from None
        size = self._sizes.get(rid, 0) + len(piece)
        if size > self.max_bytes:
            self._fail(rid, chunk.last)
            raise ProtocolError(
                Code.RESPONSE_TOO_LARGE, f"response {rid}: over {self.max_bytes} bytes; dropped", rid
            )
        parts.append(piece)
        self._sizes[rid] = size
        if not chunk.last:
            return None
        del self._parts[rid], self._sizes[rid]
        try:
            msg = decode_incoming(b"".join(parts))
        except ProtocolError as exc:
            raise ProtocolError(
                Code.BAD_CHUNK, f"response {rid}: pieces do not join: {exc.message}", rid
            ) from None
        if not isinstance(msg, Response) or msg.id != rid:
            raise ProtocolError(Code.BAD_CHUNK, f"response {rid}: pieces join into something else", rid)
        return msg

    def _fail(self, rid: int | None, last: bool) -> None:
        self._parts.pop(rid, None)
        self._sizes.pop(rid, None)
        if not last:
            self._dropping.add(rid)


T = TypeVar("T", bound=Struct)


def data_as(msg: Response | Event, typ: type[T]) -> T:
    """Check a payload against its typed struct (e.g. data_as(resp, PingResult))."""
    return msgspec.convert(msg.data, typ)
