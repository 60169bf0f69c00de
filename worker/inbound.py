"""The Gateway's bytes on their way into ib_async: stamped on arrival, policed until the session is up.

ib_async 2.1.0's Connection hands every chunk read from the socket to Client._onSocketHasData,
which appends it to one bytes buffer (a copy of all that is pending, per chunk) and cuts frames
(a 4-byte big-endian length, then the payload) from it. Fed a stream that is not a Gateway, that
buffer grows until the handshake deadline while every chunk re-copies it: a peer streaming bytes
pinned the worker at 100 % CPU and ~370 MiB for the whole 30 s. And a Gateway too old for
ib_async is noticed by it only in a log line, after which it waits out the deadline.

Inbound sits between the two (the Connection's hasData event is re-routed through it):

- every chunk stamps the arrival for the session's liveness (`on_arrival`);
- until the Gateway's hello (the first frame: "<server version>\\0<connection time>\\0") has
  arrived, at most HELLO_MAX_BYTES are held here and nothing reaches ib_async; a first frame that
  is longer or does not read as a version and a time is `not_a_gateway`, a version below what
  ib_async speaks is `server_version_too_old`, both as soon as the frame is in;
- after it, the frame ib_async is assembling may not declare more than HANDSHAKE_FRAME_MAX until
  the session is up (nothing in the start-up sync comes close), nor more than MAX_FRAME after
  (IB's own limit, the official API's MAX_MSG_LEN); bytes ib_async fails to read are a violation
  until the session is up, and logged after (as ib_async's event dispatch would).

On a violation reading stops (`pause_reading`: TCP flow control holds the peer back, nothing is
closed) and `on_violation(code, message)` reports it once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from ib_async import IB
from ib_async.client import Client

from worker import ibapi
from worker.protocol import Code

log = logging.getLogger("worker.inbound")

HELLO_MAX_BYTES: Final = 1024  # a real hello is ~30 bytes: "178\0" + "20250102 09:30:00 EST\0"
HANDSHAKE_FRAME_MAX: Final = 1 << 20
MAX_FRAME: Final = 0xFFFFFF  # IB's MAX_MSG_LEN (16 MiB - 1)


def read_hello(frame: bytes) -> tuple[int, str] | None:
    """(server version, connection time) from the hello's payload, or None if it is not one."""
    fields = frame.split(b"\0")
    if len(fields) != 3 or fields[2] or not fields[0].isdigit() or len(fields[0]) > 6:
        return None
    return int(fields[0]), fields[1].decode("ascii", "replace")


class Inbound:
    """One IB connection's inbound gate (see the module docstring)."""

    def __init__(
        self,
        ib: IB,
        on_arrival: Callable[[float], None],
        on_violation: Callable[[str, str], None],
    ) -> None:
        self._ib = ib
        self._on_arrival = on_arrival
        self._on_violation = on_violation
        self._hello: bytearray | None = bytearray()  # None once the hello has passed
        self._frame_max = HANDSHAKE_FRAME_MAX
        self.stopped = False
        self.bytes_received = 0
        self._feed = ibapi.reroute_socket_data(ib, self.data_received)

    def session_up(self) -> None:
        """The session is connected: frames up to IB's own limit are now fine."""
        self._frame_max = MAX_FRAME

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        now = time.monotonic()
        self.bytes_received += len(data)
        if self._hello is not None:
            data = self._through_hello(data)
            if not data:
                return
        try:
            self._feed(data)
        except Exception as exc:
            log.exception("ib_async failed on the Gateway's bytes")
            if self._frame_max < MAX_FRAME:  # still connecting: it was not a Gateway
                why = f"ib_async could not read the stream ({type(exc).__name__}: {exc})"
                self._violate(Code.NOT_A_GATEWAY, why)
                return
            # a live session: carry on, as ib_async's own event dispatch would (it logs and goes on)
        pending = ibapi.pending_frame_length(self._ib)
        if pending is not None and pending > self._frame_max:
            self._violate(
                Code.NOT_A_GATEWAY,
                f"the peer announced a {pending}-byte message; a Gateway sends at most "
                f"{self._frame_max} bytes {'during the handshake' if self._frame_max < MAX_FRAME else 'per message'}",
            )
            return
        self._on_arrival(now)

    def _through_hello(self, data: bytes) -> bytes:
        """Hold bytes until the hello frame is complete; return what may go on to ib_async."""
        assert self._hello is not None
        buf = self._hello
        room = 4 + HELLO_MAX_BYTES - len(buf)
        buf += data[:room]
        overflow = data[room:]  # non-empty only once the hello frame is surely complete
        if len(buf) < 4:
            return b""
        size = int.from_bytes(buf[:4], "big")
        if size > HELLO_MAX_BYTES:
            self._violate(
                Code.NOT_A_GATEWAY,
                f"the peer's first message announces {size} bytes ({bytes(buf[:4])!r}); a Gateway's "
                f"hello is a server version and a time in under {HELLO_MAX_BYTES} bytes",
            )
            return b""
        if len(buf) < 4 + size:
            return b""
        hello = read_hello(bytes(buf[4 : 4 + size]))
        if hello is None:
            self._violate(
                Code.NOT_A_GATEWAY,
                f"the peer's first message is not a Gateway hello (server version, time): "
                f"{bytes(buf[4 : 4 + size])[:80]!r}",
            )
            return b""
        version, _when = hello
        if version < Client.MinClientVersion:
            self._violate(
                Code.SERVER_VERSION_TOO_OLD,
                f"the Gateway speaks API server version {version}; ib_async {ibapi.VERSION} needs "
                f"{Client.MinClientVersion}..{Client.MaxClientVersion}: update the Gateway/TWS",
            )
            return b""
        if version > Client.MaxClientVersion:
            self._violate(
                Code.NOT_A_GATEWAY,
                f"the peer chose server version {version}, outside the offered "
                f"{Client.MinClientVersion}..{Client.MaxClientVersion}",
            )
            return b""
        self._hello = None
        return bytes(buf) + overflow

    def _violate(self, code: str, message: str) -> None:
        self.stopped = True
        self._hello = None
        ibapi.pause_reading(self._ib)
        log.warning("%s: %s; reading from the peer stopped (the socket stays open)", code, message)
        self._on_violation(code, message)
