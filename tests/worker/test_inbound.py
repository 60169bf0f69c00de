"""Units of the inbound gate on a real (unconnected) ib_async IB: what may reach ib_async before
and after the Gateway's hello, and what is a violation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from ib_async import IB

from gatewaysim import wire
from worker.inbound import HANDSHAKE_FRAME_MAX, MAX_FRAME, Inbound, read_hello
from worker.protocol import Code

HELLO = wire.server_hello(178, "20250102 09:30:00 EST")


class Gate:
    """An IB whose socket path runs through an Inbound; bytes are fed as the Connection gets them."""

    def __init__(self) -> None:
        self.ib = IB()
        self.arrivals: list[float] = []
        self.violations: list[tuple[str, str]] = []
        self.inbound = Inbound(self.ib, self.arrivals.append, lambda c, m: self.violations.append((c, m)))

    def feed(self, data: bytes) -> None:
        self.ib.client.conn.data_received(data)  # the same path the socket takes

    @property
    def codes(self) -> list[str]:
        return [c for c, _ in self.violations]


@pytest.fixture
def gate() -> Iterator[Callable[[], Gate]]:
    made: list[Gate] = []

    def make() -> Gate:
        made.append(Gate())
        return made[-1]

    yield make
    for g in made:  # back to DISCONNECTED, so IB.__del__'s disconnect() finds nothing to do
        g.ib.client.reset()


def test_a_hello_in_single_bytes_reaches_ib_async_whole(gate: Callable[[], Gate]) -> None:
    g = gate()
    g.ib.client.connState = g.ib.client.CONNECTING
    rest = wire.next_valid_id(7) + wire.managed_accounts(["DU1"])
    for i in range(len(HELLO)):
        g.feed(HELLO[i : i + 1])
    g.feed(rest)
    assert g.violations == []
    assert g.ib.client.serverVersion() == 178 and g.ib.client.isReady()
    assert len(g.arrivals) == 2  # bytes reach ib_async (and count as life) once the hello is whole


@pytest.mark.parametrize(
    ("first", "code"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", Code.NOT_A_GATEWAY),
        (bytes(64), Code.NOT_A_GATEWAY),
        (wire.frame(b"abc\0def\0"), Code.NOT_A_GATEWAY),
        (wire.frame(b"178\0"), Code.NOT_A_GATEWAY),
        (wire.frame(b"178\0t\0extra\0"), Code.NOT_A_GATEWAY),
        (wire.server_hello(999, "t"), Code.NOT_A_GATEWAY),
        (wire.server_hello(100, "t"), Code.SERVER_VERSION_TOO_OLD),
        (wire.server_hello(156, "t"), Code.SERVER_VERSION_TOO_OLD),
    ],
)
def test_a_first_message_that_is_no_usable_hello(gate: Callable[[], Gate], first: bytes, code: str) -> None:
    g = gate()
    g.feed(first)
    g.feed(HELLO)  # nothing after a violation is read
    assert g.codes == [code] and g.arrivals == []
    assert g.ib.client.serverVersion() == 0  # ib_async never saw any of it


def test_frame_bounds_before_and_after_the_session_is_up(gate: Callable[[], Gate]) -> None:
    g = gate()
    g.feed(HELLO + HANDSHAKE_FRAME_MAX.to_bytes(4, "big") + b"x")
    assert g.violations == []  # exactly the bound is fine
    g = gate()
    g.feed(HELLO + (HANDSHAKE_FRAME_MAX + 1).to_bytes(4, "big"))
    assert g.codes == [Code.NOT_A_GATEWAY]
    g = gate()
    g.feed(HELLO)
    g.inbound.session_up()
    g.feed((HANDSHAKE_FRAME_MAX * 2).to_bytes(4, "big") + b"x")
    assert g.violations == []
    g.feed(b"y" * 100)
    assert g.violations == [] and len(g.arrivals) == 3
    g = gate()
    g.feed(HELLO)
    g.inbound.session_up()
    g.feed((MAX_FRAME + 1).to_bytes(4, "big"))
    assert g.codes == [Code.NOT_A_GATEWAY] and str(MAX_FRAME) in g.violations[0][1]


def test_read_hello() -> None:
    assert read_hello(b"178\x0020250102 09:30:00 EST\x00") == (178, "20250102 09:30:00 EST")
    assert read_hello(b"178\x00") is None
    assert read_hello(b"1780000000\x00t\x00") is None  # no version has that many digits


def test_unreadable_bytes_fail_a_connect_but_not_a_live_session(gate: Callable[[], Gate]) -> None:
    junk = wire.frame(b"x\0")  # before the API is ready ib_async reads the first field as an int
    g = gate()
    g.feed(HELLO + junk)
    assert g.codes == [Code.NOT_A_GATEWAY] and "ValueError" in g.violations[0][1]
    g = gate()
    g.feed(HELLO)
    g.inbound.session_up()
    g.feed(junk)
    assert g.violations == [] and len(g.arrivals) == 2  # logged, as ib_async's dispatch would
