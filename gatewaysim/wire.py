"""TWS API wire codec: framing, field encoding and the messages the simulator speaks.

Pure (no I/O) so that it can be tested byte for byte against
shared/reference/tws-wire-protocol.md. Server -> client builders return complete frames; the
incremental `FrameReader` turns client bytes into payloads and rejects garbage early.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from .instruments import Instrument

HELLO_PREFIX = b"API\0"
MAX_FRAME = 16 * 1024 * 1024  # far above anything a client sends; larger means garbage
SERVER_MAX_VERSION = 178  # ib_async 2.1.0's MaxClientVersion; the decoder is written for <= 178
MIN_SV_ERROR_JSON = 166  # from here on ERR_MSG carries advancedOrderRejectJson (6th field)

# Outgoing message ids (server -> client).
TICK_PRICE = 1
TICK_SIZE = 2
ORDER_STATUS = 3
ERR_MSG = 4
OPEN_ORDER = 5
ACCT_VALUE = 6
PORTFOLIO_VALUE = 7
ACCT_UPDATE_TIME = 8
NEXT_VALID_ID = 9
CONTRACT_DATA = 10
EXECUTION_DATA = 11
MANAGED_ACCTS = 15
HISTORICAL_DATA = 17
TICK_GENERIC = 45
TICK_STRING = 46
CURRENT_TIME = 49
REAL_TIME_BARS = 50
CONTRACT_DATA_END = 52
OPEN_ORDER_END = 53
ACCT_DOWNLOAD_END = 54
EXECUTION_DATA_END = 55
TICK_SNAPSHOT_END = 57
MARKET_DATA_TYPE = 58
COMMISSION_REPORT = 59
POSITION_DATA = 61
POSITION_END = 62
ACCOUNT_SUMMARY = 63
ACCOUNT_SUMMARY_END = 64
ACCOUNT_UPDATE_MULTI = 73
ACCOUNT_UPDATE_MULTI_END = 74
TICK_REQ_PARAMS = 81
HISTORICAL_DATA_UPDATE = 90
TICK_BY_TICK = 99
COMPLETED_ORDER = 101
COMPLETED_ORDERS_END = 102

# Incoming message ids (client -> server); the numbers overlap the outgoing ones.
REQ_MKT_DATA = 1
CANCEL_MKT_DATA = 2
PLACE_ORDER = 3
CANCEL_ORDER = 4
REQ_OPEN_ORDERS = 5
REQ_ACCOUNT_UPDATES = 6
REQ_EXECUTIONS = 7
REQ_IDS = 8
REQ_CONTRACT_DATA = 9
REQ_AUTO_OPEN_ORDERS = 15
REQ_ALL_OPEN_ORDERS = 16
REQ_MANAGED_ACCTS = 17
REQ_HISTORICAL_DATA = 20
CANCEL_HISTORICAL_DATA = 25
REQ_CURRENT_TIME = 49
REQ_REAL_TIME_BARS = 50
CANCEL_REAL_TIME_BARS = 51
REQ_GLOBAL_CANCEL = 58
REQ_MARKET_DATA_TYPE = 59
REQ_POSITIONS = 61
REQ_ACCOUNT_SUMMARY = 62
CANCEL_ACCOUNT_SUMMARY = 63
CANCEL_POSITIONS = 64
START_API = 71
REQ_ACCOUNT_UPDATES_MULTI = 76
CANCEL_ACCOUNT_UPDATES_MULTI = 77
REQ_TICK_BY_TICK_DATA = 97
CANCEL_TICK_BY_TICK_DATA = 98
REQ_COMPLETED_ORDERS = 99


class WireError(ValueError):
    """Bytes from a client that cannot be part of a valid session."""


# ------------------------------------------------------------------------------------------
# Fields and frames


def encode_field(value: object) -> str:
    """One value as the client's `send()` would write it (None -> empty, bool -> 1/0)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    text = str(value)
    if "\0" in text:
        raise ValueError(f"field contains NUL: {text!r}")
    return text


def encode_fields(*fields: object) -> bytes:
    """Payload: every field NUL-terminated, the last one too (ib_async drops the tail)."""
    return "".join(encode_field(f) + "\0" for f in fields).encode()


def frame(payload: bytes) -> bytes:
    """Length-prefix a payload. Empty frames would stick in ib_async's buffer, so refuse them."""
    if not payload:
        raise ValueError("empty frame")
    return struct.pack(">I", len(payload)) + payload


def encode_msg(*fields: object) -> bytes:
    return frame(encode_fields(*fields))


def decode_fields(payload: bytes) -> list[str]:
    """Split a payload into text fields; strict UTF-8 (a client never sends anything else)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WireError(f"field is not UTF-8 at byte {exc.start}") from None
    fields = text.split("\0")
    if fields and fields[-1] == "":
        fields.pop()
    return fields


class FrameReader:
    """Incremental decoder of a client's byte stream: the `API\\0` prefix, then frames.

    `feed()` returns the complete payloads so far; it raises WireError on a bad prefix, an
    absurd length or an empty frame, after which the session must be closed.
    """

    def __init__(self, *, expect_prefix: bool = True, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._need_prefix = expect_prefix
        self._max = max_frame

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        if self._need_prefix:
            n = min(len(self._buf), len(HELLO_PREFIX))
            if bytes(self._buf[:n]) != HELLO_PREFIX[:n]:
                raise WireError(f"bad prefix {bytes(self._buf[:n])!r}, expected {HELLO_PREFIX!r}")
            if n < len(HELLO_PREFIX):
                return out
            del self._buf[: len(HELLO_PREFIX)]
            self._need_prefix = False
        while len(self._buf) >= 4:
            (length,) = struct.unpack(">I", self._buf[:4])
            if length == 0:
                raise WireError("empty frame")
            if length > self._max:
                raise WireError(f"frame length {length} exceeds {self._max}")
            if len(self._buf) < 4 + length:
                break
            out.append(bytes(self._buf[4 : 4 + length]))
            del self._buf[: 4 + length]
        return out

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet a complete frame."""
        return len(self._buf)


# ------------------------------------------------------------------------------------------
# Handshake

_HELLO_RE = re.compile(r"v(\d{1,4})(?:\.\.(\d{1,4}))?(?: (.*))?", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Hello:
    """The client's version range (`v157..178`) and connect options (`+PACEAPI`)."""

    min_version: int
    max_version: int
    options: str = ""


def parse_hello(payload: bytes) -> Hello:
    """Parse the first frame; it is a bare string, not a NUL-terminated field list."""
    try:
        text = payload.decode("ascii")
    except UnicodeDecodeError:
        raise WireError("hello is not ASCII") from None
    m = _HELLO_RE.fullmatch(text)
    if not m:
        raise WireError(f"hello is not 'vMIN..MAX': {text[:40]!r}")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) else lo
    if hi < lo:
        raise WireError(f"hello range is empty: {text[:40]!r}")
    return Hello(lo, hi, m.group(3) or "")


def negotiate(server_max: int, hello: Hello) -> int | None:
    """min(server max, client max), as TWS does; None when the client's minimum is above ours."""
    if hello.min_version > server_max:
        return None
    return min(server_max, hello.max_version)


def server_hello(version: int, connection_time: str) -> bytes:
    """Exactly two fields: ib_async recognises the handshake by `len(fields) == 2`."""
    return encode_msg(version, connection_time)


# ------------------------------------------------------------------------------------------
# Client side (for tests and raw-socket clients)


def client_hello(min_version: int = 157, max_version: int = 178, options: str = "") -> bytes:
    text = f"v{min_version}..{max_version}" + (f" {options}" if options else "")
    return HELLO_PREFIX + frame(text.encode())


def start_api(client_id: int, opt_capab: str = "") -> bytes:
    return encode_msg(START_API, 2, client_id, opt_capab)


# ------------------------------------------------------------------------------------------
# Server -> client messages


def error_msg(server_version: int, req_id: int, code: int, text: str) -> bytes:
    """ERR_MSG; at >= 166 the 6th field must be present or ib_async drops the message."""
    if not text.isascii():
        raise ValueError("error texts must be ASCII: ib_async does not unescape them")
    fields: list[object] = [ERR_MSG, 2, req_id, code, text]
    if server_version >= MIN_SV_ERROR_JSON:
        fields.append("")
    return encode_msg(*fields)


def next_valid_id(order_id: int) -> bytes:
    return encode_msg(NEXT_VALID_ID, 1, order_id)


def managed_accounts(accounts: Iterable[str]) -> bytes:
    return encode_msg(MANAGED_ACCTS, 1, ",".join(accounts))


def current_time(epoch_seconds: int) -> bytes:
    return encode_msg(CURRENT_TIME, 1, epoch_seconds)


def contract_fields(ins: Instrument, exchange: str) -> list[object]:
    """The 11 contract fields of the rows that carry one: conId, symbol, secType, expiry,
    strike, right, multiplier, `exchange`, currency, localSymbol, tradingClass."""
    return [
        ins.con_id, ins.symbol, ins.sec_type, "", 0.0, "", ins.multiplier, exchange, ins.currency,
        ins.local_symbol, ins.trading_class,
    ]  # fmt: skip


def position(account: str, ins: Instrument, qty: float, avg_cost: float) -> bytes:
    """POSITION_DATA: exactly 16 fields (ib_async unpacks it as a strict tuple)."""
    return encode_msg(POSITION_DATA, 3, account, *contract_fields(ins, ins.exchange), qty, avg_cost)


def position_end() -> bytes:
    return encode_msg(POSITION_END, 1)


def open_order_end() -> bytes:
    return encode_msg(OPEN_ORDER_END, 1)


def completed_orders_end() -> bytes:
    """Only the id: no version field."""
    return encode_msg(COMPLETED_ORDERS_END)


def account_value(key: str, value: str, currency: str, account: str) -> bytes:
    return encode_msg(ACCT_VALUE, 2, key, value, currency, account)


def portfolio_value(
    account: str, ins: Instrument, qty: float, market_price: float, avg_cost: float, realized_pnl: float = 0.0
) -> bytes:
    """PORTFOLIO_VALUE: 20 fields, primaryExchange in the exchange slot as TWS sends it."""
    market_value = round(qty * market_price, 2)
    unrealized = round(market_value - qty * avg_cost, 2)
    return encode_msg(
        PORTFOLIO_VALUE,
        8,
        *contract_fields(ins, ins.primary_exchange),
        qty,
        market_price,
        market_value,
        avg_cost,
        unrealized,
        realized_pnl,
        account,
    )


def account_update_time(hhmm: str) -> bytes:
    return encode_msg(ACCT_UPDATE_TIME, 1, hhmm)


def account_download_end(account: str) -> bytes:
    return encode_msg(ACCT_DOWNLOAD_END, 1, account)


def account_update_multi(
    req_id: int, account: str, model_code: str, key: str, value: str, currency: str
) -> bytes:
    return encode_msg(ACCOUNT_UPDATE_MULTI, 1, req_id, account, model_code, key, value, currency)


def account_update_multi_end(req_id: int) -> bytes:
    return encode_msg(ACCOUNT_UPDATE_MULTI_END, 1, req_id)


UNSET_DOUBLE = "1.7976931348623157E308"  # IB's "no value" for doubles, as TWS sends it
UNSET_INTEGER = 2147483647


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution: live (reqId -1) or replayed by reqExecutions, and its commission report.
    `cum_qty`/`avg_price`: the order's totals after this fill (None: this fill alone)."""

    exec_id: str
    account: str
    ins: Instrument
    side: str  # BOT / SLD
    shares: float
    price: float
    time: str  # "YYYYmmdd HH:MM:SS <zone>"
    order_id: int = 0
    perm_id: int = 0
    client_id: int = 0
    commission: float = 1.0
    order_ref: str = ""
    cum_qty: float | None = None
    avg_price: float | None = None
    realized_pnl: float | None = None


def execution(server_version: int, req_id: int, f: Fill) -> bytes:
    """EXECUTION_DATA as decoded at 157..178 (no version field; pendingPriceRevision at 178)."""
    fields: list[object] = [
        EXECUTION_DATA,
        req_id,
        f.order_id,
        *contract_fields(f.ins, f.ins.exchange),
        f.exec_id,
        f.time,
        f.account,
        f.ins.primary_exchange,
        f.side,
        f.shares,
        f.price,
        f.perm_id,
        f.client_id,
        0,
        f.shares if f.cum_qty is None else f.cum_qty,
        f.price if f.avg_price is None else f.avg_price,
        f.order_ref,
        "",
        "",
        "",
        1,
    ]
    if server_version >= 178:
        fields.append(0)
    return encode_msg(*fields)


def commission_report(f: Fill) -> bytes:
    """COMMISSION_REPORT: exactly 8 fields (ib_async unpacks a strict tuple; 9 is dropped)."""
    pnl = UNSET_DOUBLE if f.realized_pnl is None else round(f.realized_pnl, 2)
    return encode_msg(COMMISSION_REPORT, 1, f.exec_id, f.commission, f.ins.currency, pnl, UNSET_DOUBLE, "")


def execution_end(req_id: int) -> bytes:
    return encode_msg(EXECUTION_DATA_END, 1, req_id)


def account_summary(req_id: int, account: str, tag: str, value: str, currency: str) -> bytes:
    return encode_msg(ACCOUNT_SUMMARY, 1, req_id, account, tag, value, currency)


def account_summary_end(req_id: int) -> bytes:
    return encode_msg(ACCOUNT_SUMMARY_END, 1, req_id)


def historical_data(
    req_id: int, start: str, end: str, bars: list[tuple[str, float, float, float, float, float, float, int]]
) -> bytes:
    """HISTORICAL_DATA: no version field; each bar is date, O, H, L, C, volume, wap, count."""
    flat: list[object] = [HISTORICAL_DATA, req_id, start, end, len(bars)]
    for bar in bars:
        flat.extend(bar)
    return encode_msg(*flat)
