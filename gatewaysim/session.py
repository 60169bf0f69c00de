"""One client connection as a sans-IO protocol object, in h11's shape.

`receive_data(bytes)` parses the `API\\0` prefix, the hello, startApi and requests, answers them
by dispatching to the handlers registered by message id (registry.py), and returns what
happened as events; `data_to_send()` hands the driver the frames queued since, whether a request
or a timer queued them. The session knows the server version it negotiated, so every reply
follows that version. Malformed input raises `wire.WireError`: the driver then closes the socket.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from . import registry, wire
from .faults import SYNC_REQUESTS

if TYPE_CHECKING:
    from .gateway import Gateway

log = logging.getLogger("gatewaysim")

TEXT_326 = "Unable to connect as the client id is already in use. Retry with a unique client id."
CODE_READ_ERROR = 320  # TWS: "Server error when reading an API client request."
CODE_UNKNOWN_ID = 505  # official ibapi: "Fatal Error: Unknown message id."

_SYNC_NAME_BY_ID = {msg_id: name for name, msg_id in SYNC_REQUESTS.items()}


class SessionRefused(wire.WireError):
    """A well-formed client we will not serve (version range, no startApi first)."""


@dataclass(frozen=True, slots=True)
class HelloRead:
    """The client's hello; `ignored` when the Gateway is RED and will never answer it."""

    version: int
    ignored: bool


@dataclass(frozen=True, slots=True)
class Handshake:
    """startApi accepted: the session serves requests from now on."""

    client_id: int


@dataclass(frozen=True, slots=True)
class Request:
    """A request after the handshake; `served` when it queued a reply."""

    msg_id: int
    served: bool


Event = HelloRead | Handshake | Request


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


class Session:
    """The server side of one TWS API connection. See registry.py for what handlers use."""

    def __init__(self, gateway: Gateway, session_id: int, peer: tuple[str, int], connected_at: float) -> None:
        self.gateway = gateway
        self.session_id = session_id
        self.peer = peer
        self.connected_at = connected_at
        self.negotiated: int | None = None  # server version, once the hello is read
        self.client_id: int | None = None
        self.handshaken_at: float | None = None
        self.close_reason: str | None = None
        self.flush_before_close = True
        self.on_output: Callable[[], None] = lambda: None  # the driver's wake-up
        self._reader = wire.FrameReader()
        self._hello_answered = False
        self._rejected = False
        self._out: list[bytes] = []
        self._events: list[Event] = []

    # -------------------------------------------------------------------- for handlers

    @property
    def version(self) -> int:
        """The negotiated server version (handlers run only after the handshake)."""
        if self.negotiated is None:
            raise RuntimeError(f"session {self.session_id} has no version before its hello")
        return self.negotiated

    @property
    def live(self) -> bool:
        return self.close_reason is None

    def send(self, *frames: bytes) -> None:
        """Queue complete frames for the client (ignored once the session is closing, and while
        the API layer is RED: a RED Gateway's live sessions hear nothing, pushes included)."""
        if not self.live or not frames or self.gateway.red:
            return
        self._out.extend(frames)
        self.on_output()

    def error(self, req_id: int, code: int, text: str) -> None:
        self.send(wire.error_msg(self.version, req_id, code, text))

    def close(self, reason: str, *, flush: bool) -> None:
        """End the session from the server side; `flush`: deliver what is queued first."""
        if self.close_reason is None:
            self.close_reason = reason
            self.flush_before_close = flush
        self.on_output()

    # -------------------------------------------------------------------- for the driver

    def data_to_send(self) -> list[bytes]:
        """Frames queued since the last call (nothing once closed without flushing)."""
        out, self._out = self._out, []
        return out if self.flush_before_close else []

    def receive_data(self, data: bytes) -> list[Event]:
        """Bytes from the client: answer what they complete, return what happened."""
        payloads = self._reader.feed(data)
        for payload in payloads:
            if not self.live:
                break
            self._on_payload(payload)
        events, self._events = self._events, []
        if payloads:
            self.gateway.changed()
        return events

    # -------------------------------------------------------------------- protocol

    def _on_payload(self, payload: bytes) -> None:
        gw = self.gateway
        if self.negotiated is None:
            self._on_hello(payload)
            return
        if gw.red or self._rejected or not self._hello_answered:
            return  # RED: read and drop; nothing is answered
        try:
            fields = wire.decode_fields(payload)
            msg_id = int(fields[0])
        except (wire.WireError, ValueError, IndexError) as exc:
            self._read_error(str(exc))
            return
        if self.handshaken_at is None:
            if msg_id != wire.START_API:
                raise SessionRefused(f"expected startApi (71) first, got message id {msg_id}")
            self._start_api(fields)
            return
        self._dispatch(msg_id, fields)

    def _on_hello(self, payload: bytes) -> None:
        gw = self.gateway
        hello = wire.parse_hello(payload)
        version = wire.negotiate(gw.server_version, hello)
        if version is None:
            gw.counters.refused_versions += 1
            raise SessionRefused(
                f"client minimum version {hello.min_version} is above ours ({gw.server_version})"
            )
        self.negotiated = version
        self._events.append(HelloRead(version, ignored=gw.red))
        delay = gw.faults.handshake_delay
        if gw.red:
            gw.emit("hello_ignored", f"session {self.session_id}: RED, no handshake")
        elif delay > 0:
            gw.scheduler.call_later(delay, self._answer_hello_late)
        else:
            self._answer_hello()

    def _answer_hello_late(self) -> None:
        if not self.live:
            return
        if self.gateway.red:
            self.gateway.emit("hello_ignored", f"session {self.session_id}: went RED during handshake delay")
            return
        self._answer_hello()

    def _answer_hello(self) -> None:
        stamp = datetime.fromtimestamp(self.gateway.wall(), UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"
        self.send(wire.server_hello(self.version, stamp))
        self._hello_answered = True

    def _start_api(self, fields: list[str]) -> None:
        gw = self.gateway
        try:
            cid = int(fields[2])
        except (IndexError, ValueError):
            raise SessionRefused("startApi without a numeric client id") from None
        self.client_id = cid
        gw.client_ids_seen.add(cid)
        busy = gw.busy_reason(cid)
        if busy:
            self._rejected = True
            gw.counters.sent_326 += 1
            self.error(-1, 326, TEXT_326)
            self.close(f"326: client id {cid} {busy}", flush=True)
            gw.emit("326", f"session {self.session_id}: client id {cid} {busy}")
            return
        self.handshaken_at = gw.now()
        gw.counters.handshakes += 1
        self.send(wire.next_valid_id(gw.next_valid_id(cid)), wire.managed_accounts(gw.accounts))
        for code, text in gw.handshake_notices():
            self.error(-1, code, text)
        self._events.append(Handshake(cid))
        gw.emit("handshake", f"session {self.session_id}: client id {cid}, server version {self.version}")

    def _dispatch(self, msg_id: int, fields: list[str]) -> None:
        gw = self.gateway
        stall = _SYNC_NAME_BY_ID.get(msg_id)
        if stall is not None and stall == gw.faults.stall_sync:
            gw.counters.requests_stalled += 1
            log.info("session %d: stalled %s", self.session_id, stall)
            self._events.append(Request(msg_id, served=False))
            return
        handler = registry.table().get(msg_id)
        if handler is None:
            gw.counters.malformed += 1
            log.warning("session %d: unknown message id %d", self.session_id, msg_id)
            self.error(-1, CODE_UNKNOWN_ID, f"Unknown message id {msg_id}")
            self._events.append(Request(msg_id, served=False))
            return
        queued = len(self._out)
        try:
            handler(self, fields)
        except (IndexError, ValueError) as exc:
            self._read_error(f"message {msg_id}: {type(exc).__name__}: {exc}")
            self._events.append(Request(msg_id, served=False))
            return
        served = len(self._out) > queued
        if served:
            gw.counters.requests_served += 1
        self._events.append(Request(msg_id, served))

    def _read_error(self, reason: str) -> None:
        self.gateway.counters.malformed += 1
        reason = _ascii(reason)
        log.warning("session %d: unreadable request: %s", self.session_id, reason)
        self.error(-1, CODE_READ_ERROR, f"Server error when reading an API client request: {reason}")
