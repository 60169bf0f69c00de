"""The simulator's wire codec, byte for byte against the reference captures."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaysim import wire
from gatewaysim.faults import Faults
from gatewaysim.instruments import by_con_id


def test_client_hello_matches_capture() -> None:
    # shared/reference/tws-wire-protocol.md 1.2: what ib_async 2.1.0 sends
    assert wire.client_hello() == bytes.fromhex("41504900 00000009") + b"v157..178"


def test_start_api_matches_capture() -> None:
    assert wire.start_api(7) == bytes.fromhex("00000008") + b"71\x002\x007\x00\x00"


def test_server_hello_is_two_nul_terminated_fields() -> None:
    msg = wire.server_hello(178, "20250101 12:00:00 EST")
    assert msg == bytes.fromhex("0000001a") + b"178\x0020250101 12:00:00 EST\x00"


def test_error_field_count_follows_version() -> None:
    # at >= 166 the 6th field (advancedOrderRejectJson) must be there, even if empty
    assert wire.decode_fields(wire.error_msg(178, -1, 2104, "ok")[4:]) == ["4", "2", "-1", "2104", "ok", ""]
    assert wire.decode_fields(wire.error_msg(165, -1, 2104, "ok")[4:]) == ["4", "2", "-1", "2104", "ok"]


def test_error_text_must_be_ascii() -> None:
    with pytest.raises(ValueError):
        wire.error_msg(178, -1, 326, "d\u00e9j\u00e0")


def test_startup_messages_have_exact_field_counts() -> None:
    # ib_async unpacks 9 and 15 as exactly 3 fields, 61 as exactly 16
    assert wire.next_valid_id(1)[4:].split(b"\0")[:-1] == [b"9", b"1", b"1"]
    assert wire.managed_accounts(["DU1", "DU2"])[4:].split(b"\0")[:-1] == [b"15", b"1", b"DU1,DU2"]
    ins = by_con_id(265598)
    pos = wire.position("DU1", ins, 100.0, 150.25)
    assert len(pos[4:].split(b"\0")[:-1]) == 16
    assert wire.completed_orders_end()[4:] == b"102\0"
    assert len(wire.portfolio_value("DU1", ins, 1.0, 2.0, 1.5)[4:].split(b"\0")[:-1]) == 20
    fill = wire.Fill("e1", "DU1", ins, "BOT", 1.0, 2.0, "20250101 13:30:00 UTC")
    assert len(wire.execution(178, 3, fill)[4:].split(b"\0")[:-1]) == 32
    assert len(wire.execution(177, 3, fill)[4:].split(b"\0")[:-1]) == 31


def test_frame_refuses_empty_payload() -> None:
    with pytest.raises(ValueError):
        wire.frame(b"")


@pytest.mark.parametrize(
    "text,expected",
    [
        (b"v157..178", wire.Hello(157, 178, "")),
        (b"v157..178 +PACEAPI", wire.Hello(157, 178, "+PACEAPI")),
        (b"v176", wire.Hello(176, 176, "")),
    ],
)
def test_parse_hello(text: bytes, expected: wire.Hello) -> None:
    assert wire.parse_hello(text) == expected


@pytest.mark.parametrize("text", [b"157..178", b"v178..157", b"vabc", b"v1\xff", b""])
def test_parse_hello_rejects(text: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.parse_hello(text)


def test_negotiate_takes_the_lower_max_and_refuses_a_higher_min() -> None:
    assert wire.negotiate(178, wire.Hello(157, 178)) == 178
    assert wire.negotiate(178, wire.Hello(157, 200)) == 178
    assert wire.negotiate(176, wire.Hello(157, 178)) == 176
    assert wire.negotiate(178, wire.Hello(179, 200)) is None


def test_frame_reader_rejects_bad_prefix_early() -> None:
    r = wire.FrameReader()
    with pytest.raises(wire.WireError, match="prefix"):
        r.feed(b"GET / HTTP/1.1\r\n")
    r = wire.FrameReader()
    assert r.feed(b"AP") == []  # a partial but correct prefix is fine


def test_frame_reader_rejects_absurd_length() -> None:
    r = wire.FrameReader()
    with pytest.raises(wire.WireError, match="exceeds"):
        r.feed(wire.HELLO_PREFIX + struct.pack(">I", wire.MAX_FRAME + 1))


def test_frame_reader_rejects_empty_frame() -> None:
    with pytest.raises(wire.WireError, match="empty"):
        wire.FrameReader(expect_prefix=False).feed(b"\0\0\0\0")


def test_decode_fields_rejects_non_utf8() -> None:
    with pytest.raises(wire.WireError, match="UTF-8"):
        wire.decode_fields(b"49\0\xff\xfe\0")


@given(
    st.lists(
        st.lists(
            st.text(
                alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20
            ),
            min_size=1,
            max_size=6,
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(min_value=1, max_value=64),
)
def test_frame_reader_round_trips_any_chunking(msgs: list[list[str]], chunk: int) -> None:
    stream = wire.HELLO_PREFIX + b"".join(wire.encode_msg(*m) for m in msgs)
    r = wire.FrameReader()
    payloads: list[bytes] = []
    for i in range(0, len(stream), chunk):
        payloads += r.feed(stream[i : i + chunk])
    assert [wire.decode_fields(p) for p in payloads] == msgs
    assert r.pending == 0


def test_faults_from_cli() -> None:
    f = Faults()
    f = f.with_cli("silent").with_cli("red_on_fast_close=0.5").with_cli("client_id_hold=inf")
    f = f.with_cli("stall_sync=executions").with_cli("handshake-delay=2")
    assert f == Faults(
        red_on_fast_close=0.5,
        silent=True,
        handshake_delay=2.0,
        stall_sync="executions",
        client_id_hold=math.inf,
    )
    for bad in ("nope", "stall_sync=bogus", "handshake_delay=-1", "red_on_fast_close=x", "client_id_hold"):
        with pytest.raises(ValueError):
            f.with_cli(bad)


def test_order_faults_from_cli() -> None:
    f = Faults().with_cli("read_only_api").with_cli("reject_orders=3").with_cli("drop-on-place=before_ack")
    f = f.with_cli("fill_while_away=on").with_cli("partial_fills").with_cli("partial_fills=off")
    assert f == Faults(read_only_api=True, reject_orders=3, drop_on_place="before_ack", fill_while_away=True)
    assert (
        f.with_cli("drop_on_place=off").drop_on_place is None
        and Faults().with_cli("reject_orders").reject_orders == 1
    )
    for bad in ("drop_on_place=sometimes", "reject_orders=x", "reject_orders=-1"):
        with pytest.raises(ValueError):
            Faults().with_cli(bad)
