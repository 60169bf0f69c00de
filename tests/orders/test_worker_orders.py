"""The worker's order commands against the simulator's broker: a real worker process, the real
ib_async 2.1.0, real TCP. Every answer is checked against the simulator's book."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
from support.orders import LOW, OrderWorker, state_of

from gatewaysim.threaded import ThreadedSim
from worker.orders_protocol import ExecutionsResult, OrderEvent, OrdersResult
from worker.protocol import Code, data_as

FIELDS = ("order_id", "perm_id", "status", "quantity", "lmt_price", "placed", "filled", "client_id")


def book(sim: ThreadedSim, ref: str) -> list[dict[str, Any]]:
    """The simulator's orders with this orderRef, read on its own loop."""
    return sim.run(lambda: [{f: getattr(o, f) for f in FIELDS} for o in sim.sim.broker.orders_by_ref(ref)])


def placements(sim: ThreadedSim, ref: str) -> int:
    return sim.run(lambda: sim.sim.broker.placements[ref])


def error_of(resp: Any) -> tuple[str, int | None]:
    assert not resp.ok, resp
    return resp.error.code, resp.error.ib_code


def test_a_resting_order_is_acknowledged_with_the_brokers_ids(sim: ThreadedSim, worker: OrderWorker) -> None:
    st = state_of(worker.place("w-rest", tif="GTC"))
    [o] = book(sim, "w-rest")
    assert (st.order_id, st.perm_id, st.client_id) == (o["order_id"], o["perm_id"], 7)
    assert (st.status, st.quantity, st.limit_price, st.tif, st.symbol, st.remaining) == (
        "Submitted", 10.0, LOW, "GTC", "AAPL", 10.0,
    )  # fmt: skip
    assert worker.call("ping", timeout=5.0).ok  # everything before it has been written
    assert worker.statuses("w-rest") == []  # held while the command waited: its answer said them
    assert placements(sim, "w-rest") == 1
    again = worker.place("w-rest")  # the same ref twice in one session: refused, nothing sent
    assert error_of(again) == ("duplicate_order_ref", None) and placements(sim, "w-rest") == 1


def test_a_market_order_fills_and_its_execution_comes_once_with_its_commission(
    sim: ThreadedSim, worker: OrderWorker
) -> None:
    st = state_of(worker.place("w-mkt", order_type="MKT", limit_price=None, action="SELL", quantity=5.0))
    assert st.perm_id and st.status in ("PreSubmitted", "Submitted", "Filled")
    ev = worker.wait_event_where(lambda e: e.event == OrderEvent.EXECUTION and e.data["order_ref"] == "w-mkt")
    [x] = sim.run(lambda: [x for x in sim.sim.broker.executions if x.order_ref == "w-mkt"])
    assert (ev.data["exec_id"], ev.data["side"], ev.data["shares"], ev.data["commission"]) == (
        x.exec_id,
        "SLD",
        5.0,
        1.0,
    )
    assert ev.data["perm_id"] == st.perm_id and ev.data["time"].endswith("+00:00")
    if st.status != "Filled":  # the fill came after the answer: an event says it
        worker.wait_event_where(lambda e: e.event == OrderEvent.ORDER_STATUS and e.data["status"] == "Filled")

    done = data_as(worker.call("completed_orders", timeout=5.0), OrdersResult).orders
    [c] = [o for o in done if o.order_ref == "w-mkt"]
    assert (c.status, c.filled, c.perm_id, c.remaining) == ("Filled", 5.0, st.perm_id, 0.0)
    mine = data_as(worker.call("executions", timeout=5.0), ExecutionsResult).executions
    assert [(e.exec_id, e.commission) for e in mine if e.order_ref == "w-mkt"] == [(x.exec_id, 1.0)]
    later = data_as(
        worker.call("executions", since="2030-01-01T00:00:00+00:00", timeout=5.0), ExecutionsResult
    )
    assert later.executions == []
    assert worker.call("ping", timeout=5.0).ok  # everything before it has been written
    assert [e.exec_id for e in worker.executions()] == [x.exec_id]  # the queries re-sent no event
    told = [st, *worker.statuses("w-mkt")]  # the answer, then each later change once
    assert [t.status for t in told].count("Filled") == 1 and told[-1].status == "Filled"
    assert all(a != b for a, b in itertools.pairwise(told))


def test_modify_changes_the_order_at_the_broker(sim: ThreadedSim, worker: OrderWorker) -> None:
    st = state_of(worker.place("w-mod"))
    new = state_of(worker.call("modify_order", order_id=st.order_id, order_ref="w-mod", quantity=7.0,
                               limit_price=LOW - 1, tif="GTC", timeout=5.0))  # fmt: skip
    assert (new.quantity, new.limit_price, new.tif, new.perm_id, new.status) == (
        7.0,
        LOW - 1,
        "GTC",
        st.perm_id,
        "Submitted",
    )
    [o] = book(sim, "w-mod")
    assert (o["quantity"], o["lmt_price"], o["placed"]) == (7.0, LOW - 1, 2)
    assert error_of(worker.call("modify_order", order_id=st.order_id, order_ref="other", quantity=1.0)) == (
        Code.BAD_REQUEST, None,
    )  # fmt: skip
    assert error_of(worker.call("modify_order", order_id=424242, order_ref="w-mod", quantity=1.0)) == (
        "order_not_found", None,
    )  # fmt: skip
    assert book(sim, "w-mod")[0]["placed"] == 2  # neither reached the broker


def test_cancel_and_the_cancel_codes(sim: ThreadedSim, worker: OrderWorker) -> None:
    st = state_of(worker.place("w-cxl"))
    gone = state_of(worker.call("cancel_order", order_id=st.order_id, timeout=5.0))
    assert (gone.status, gone.order_ref, gone.remaining) == ("Cancelled", "w-cxl", 0.0)
    assert book(sim, "w-cxl")[0]["status"] == "Cancelled"
    assert error_of(worker.call("cancel_order", order_id=st.order_id, timeout=5.0)) == (
        "order_rejected",
        10148,
    )
    assert error_of(worker.call("cancel_order", order_id=987654, timeout=5.0)) == ("order_rejected", 10147)
    assert [e.ib_code for e in worker.order_errors(987654)] == [10147]
    # a cancelled order cannot be modified: refused here, nothing sent
    assert error_of(worker.call("modify_order", order_id=st.order_id, order_ref="w-cxl", quantity=1.0)) == (
        "order_done", None,
    )  # fmt: skip
    assert book(sim, "w-cxl")[0]["placed"] == 1

    filled = state_of(worker.place("w-filled", order_type="MKT", limit_price=None))
    worker.wait_event_where(lambda e: e.event == OrderEvent.EXECUTION and e.data["order_ref"] == "w-filled")
    assert error_of(worker.call("cancel_order", order_id=filled.order_id, timeout=5.0)) == (
        "order_rejected",
        10148,
    )
    assert book(sim, "w-filled")[0]["status"] == "Filled"


@pytest.mark.parametrize(
    ("fault", "code"),
    [("reject_next_order", 201), ("read_only_api", 321)],
    ids=["201-rejected", "321-read-only-api"],
)
def test_each_refusal_is_order_rejected_with_the_brokers_code(
    sim: ThreadedSim, worker: OrderWorker, fault: str, code: int
) -> None:
    if fault == "reject_next_order":
        sim.call(fault)
    else:
        sim.call(fault, True)
    resp = worker.place(f"w-{code}")
    assert error_of(resp) == ("order_rejected", code)
    assert str(code) in resp.error.message
    assert book(sim, f"w-{code}") == []  # the broker holds nothing
    st = state_of(worker.place(f"w-{code}-after")) if fault != "read_only_api" else None
    assert st is None or st.status == "Submitted"  # the session goes on


@pytest.mark.parametrize(
    ("symbol", "code"), [("NOSUCH", "no_security_definition"), ("DUAL", "ambiguous_contract")]
)
def test_an_unknown_or_ambiguous_contract_is_refused_before_anything_is_sent(
    sim: ThreadedSim, worker: OrderWorker, symbol: str, code: str
) -> None:
    resp = worker.place(f"w-{symbol}", symbol=symbol)
    assert error_of(resp)[0] == code
    assert sim.run(lambda: dict(sim.sim.broker.placements)) == {}


def test_a_read_only_session_refuses_every_order_command_and_sends_nothing(sim: ThreadedSim) -> None:
    with OrderWorker(label="test-orders-ro") as w:
        w.wait_ready()
        w.connect_rw(sim.port, 8, readonly=True)
        answers = [
            w.place("ro-1"),
            w.call("modify_order", order_id=1, order_ref="ro-1", quantity=2.0),
            w.call("cancel_order", order_id=1),
        ]
        for resp in answers:
            assert error_of(resp) == ("read_only", None)
            assert "IBKR_READONLY=0" in resp.error.message
        assert sim.run(lambda: (dict(sim.sim.broker.placements), list(sim.sim.broker.orders))) == ({}, [])
        assert data_as(w.call("open_orders", timeout=5.0), OrdersResult).orders == []  # reading is fine


def test_open_orders_of_this_client_and_of_all(sim: ThreadedSim, worker: OrderWorker) -> None:
    mine = state_of(worker.place("w-open"))
    with OrderWorker(label="test-orders-other") as other:
        other.wait_ready()
        other.connect_rw(sim.port, 9)
        theirs = state_of(other.place("o-open"))
        own = data_as(worker.call("open_orders", timeout=5.0), OrdersResult).orders
        every = data_as(worker.call("open_orders", all_clients=True, timeout=5.0), OrdersResult).orders
    assert [(o.order_ref, o.perm_id, o.status) for o in own] == [("w-open", mine.perm_id, "Submitted")]
    assert {(o.order_ref, o.client_id) for o in every} == {("w-open", 7), ("o-open", 9)}
    assert theirs.client_id == 9


@pytest.mark.parametrize("mode", ["before_ack", "discard"])
def test_a_session_dropped_as_the_order_arrives_answers_session_lost(
    sim: ThreadedSim, worker: OrderWorker, mode: str
) -> None:
    sim.call("drop_on_place", mode)
    resp = worker.place(f"w-drop-{mode}")
    assert error_of(resp) == (Code.SESSION_LOST, None)
    assert placements(sim, f"w-drop-{mode}") == 1
    expected = ["Submitted"] if mode == "before_ack" else []
    assert [o["status"] for o in book(sim, f"w-drop-{mode}")] == expected


def test_every_order_wait_is_bounded_when_the_gateway_goes_mute(
    sim: ThreadedSim, worker: OrderWorker
) -> None:
    st = state_of(worker.place("w-mute"))
    sim.call("go_red")  # the session stays open; nothing is answered any more
    t0 = time.monotonic()
    rids = [
        worker.submit(
            "place_order",
            symbol="AAPL",
            action="BUY",
            quantity=1.0,
            order_type="MKT",
            order_ref="w-mute-2",
            timeout=0.5,
        ),
        worker.submit("modify_order", order_id=st.order_id, order_ref="w-mute", quantity=3.0, timeout=0.5),
        worker.submit("cancel_order", order_id=st.order_id, timeout=0.5),
        worker.submit("open_orders", timeout=0.5),
        worker.submit("open_orders", timeout=0.5),  # the second waits for the first's turn
        worker.submit("completed_orders", timeout=0.5),
        worker.submit("executions", timeout=0.5),
    ]
    answers = [worker.wait_response(rid, max(0.0, t0 + 0.5 + 2.0 - time.monotonic())) for rid in rids]
    assert [error_of(r) for r in answers] == [(Code.REQUEST_TIMEOUT, None)] * len(rids)
    assert "reconcile before sending it again" in answers[0].error.message
