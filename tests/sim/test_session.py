"""The sans-IO core without sockets: a Session takes bytes and returns bytes and events, timers
run on a test's clock, and the handler registry is one table that other modules extend."""

from __future__ import annotations

import pytest

from gatewaysim import Faults, Gateway, wire
from gatewaysim.registry import DuplicateHandler, handler, table
from gatewaysim.scheduler import Scheduler
from gatewaysim.session import Handshake, HelloRead, Request, Session, SessionRefused


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def decode(frames: list[bytes]) -> list[list[str]]:
    reader = wire.FrameReader(expect_prefix=False)
    return [wire.decode_fields(p) for p in reader.feed(b"".join(frames))]


def gateway(clock: Clock, **kw: object) -> Gateway:
    return Gateway(clock=clock, wall=lambda: 1_796_070_900.0, **kw)  # type: ignore[arg-type]


def test_bytes_in_bytes_and_events_out() -> None:
    gw = gateway(Clock(), server_version=176)
    s = gw.open_session(("127.0.0.1", 5555))
    woken: list[int] = []
    s.on_output = lambda: woken.append(1)

    assert s.receive_data(wire.client_hello()[:5]) == []  # a partial prefix is buffered
    assert s.receive_data(wire.client_hello()[5:]) == [HelloRead(176, ignored=False)]
    [hello] = decode(s.data_to_send())
    assert hello == ["176", "20261130 20:35:00 UTC"]

    events = s.receive_data(wire.start_api(7) + wire.encode_msg(wire.REQ_CURRENT_TIME, 1))
    assert events == [Handshake(7), Request(wire.REQ_CURRENT_TIME, served=True)]
    msgs = decode(s.data_to_send())
    assert msgs[:2] == [["9", "1", "1"], ["15", "1", "DU1234567"]]
    assert [m[3] for m in msgs if m[0] == "4"] == ["2104", "2106", "2158"]
    assert msgs[-1] == ["49", "1", "1796070900"]
    assert woken and s.data_to_send() == []
    assert [i.client_id for i in gw.sessions] == [7] and gw.counters.requests_served == 1


def test_refusals_raise_for_the_driver_to_close() -> None:
    gw = gateway(Clock())
    s = gw.open_session(("127.0.0.1", 5555))
    s.receive_data(wire.client_hello())
    with pytest.raises(SessionRefused):
        s.receive_data(wire.encode_msg(wire.REQ_CURRENT_TIME, 1))
    other = gw.open_session(("127.0.0.1", 5556))
    with pytest.raises(wire.WireError):
        other.receive_data(b"GET / HTTP/1.1\r\n")


def test_timers_deliver_unsolicited_output_and_the_handshake_delay() -> None:
    clock = Clock()
    gw = gateway(clock, faults=Faults(handshake_delay=0.5))
    s = gw.open_session(("127.0.0.1", 5555))
    assert s.receive_data(wire.client_hello()) == [HelloRead(178, ignored=False)]
    assert s.data_to_send() == []
    assert gw.scheduler.next_deadline() == 1000.5
    clock.t = 1000.5
    gw.scheduler.run_due(clock())
    assert decode(s.data_to_send())[0][0] == "178"
    s.receive_data(wire.start_api(3))
    s.data_to_send()

    pushed: list[int] = []
    timer = gw.scheduler.call_every(0.25, lambda: (pushed.append(1), s.send(wire.current_time(len(pushed)))))
    clock.t += 0.3
    gw.scheduler.run_due(clock())
    assert decode(s.data_to_send()) == [["49", "1", "1"]]
    clock.t += 10  # a late clock skips the missed runs instead of bursting them
    gw.scheduler.run_due(clock())
    assert len(pushed) == 2
    timer.cancel()
    clock.t += 1
    gw.scheduler.run_due(clock())
    assert len(pushed) == 2 and gw.scheduler.next_deadline() is None


def test_a_failing_timer_does_not_stop_the_others() -> None:
    ran: list[str] = []
    sched = Scheduler(lambda: 0.0, lambda: None)

    def boom() -> None:
        raise RuntimeError("bug")

    sched.call_at(1.0, boom)
    sched.call_at(1.0, lambda: ran.append("after"))
    sched.run_due(1.0)
    assert ran == ["after"]


def test_client_id_hold_expires_on_the_schedulers_clock() -> None:
    clock = Clock()
    gw = gateway(clock, faults=Faults(client_id_hold=2.0))
    s = gw.open_session(("127.0.0.1", 5555))
    s.receive_data(wire.client_hello() + wire.start_api(4))
    gw.session_ended(s, "EOF")
    assert gw.busy_reason(4) is not None
    clock.t += 2.0
    gw.scheduler.run_due(clock())
    assert gw.busy_reason(4) is None and gw.held_client_ids == {}


def test_registry_is_one_table_and_refuses_a_second_handler() -> None:
    handlers = table()
    assert handlers[wire.REQ_CURRENT_TIME].__module__ == "gatewaysim.handlers_account"
    with pytest.raises(DuplicateHandler, match="message id 49"):

        @handler(wire.REQ_CURRENT_TIME)
        def again(s: Session, f: list[str]) -> None:  # pragma: no cover - never registered
            raise AssertionError
