"""Reconciliation, pure: each request resolves to exactly one of done / not done / in doubt,
by order_ref -> perm_id -> order_id, and no execution is ever handed out twice."""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm.reconcile import BrokerView, Pending, reconcile
from worker.orders_protocol import Execution, OrderState


def order(
    ref: str, status: str = "Submitted", *, order_id: int = 5, perm_id: int = 900, **kw: object
) -> OrderState:
    base = OrderState(
        order_ref=ref, order_id=order_id, perm_id=perm_id, status=status, filled=0.0, remaining=10.0,
        avg_fill_price=0.0, action="BUY", quantity=10.0, order_type="LMT", limit_price=100.0,
        stop_price=None, tif="DAY", con_id=265598, symbol="AAPL", account="DU1", client_id=7,
    )  # fmt: skip
    return msgspec.structs.replace(base, **kw)


def fill(
    exec_id: str, ref: str, *, perm_id: int = 900, order_id: int = 5, shares: float = 10, price: float = 99.0
) -> Execution:
    return Execution(
        exec_id=exec_id, order_ref=ref, order_id=order_id, perm_id=perm_id, time=f"2026-11-25T16:00:0{len(exec_id) % 10}+00:00",
        account="DU1", con_id=265598, symbol="AAPL", side="BOT", shares=shares, price=price, cum_qty=shares,
        avg_price=price, commission=1.0, commission_currency="USD", realized_pnl=0.0,
    )  # fmt: skip


def place(ref: str, *, settled: bool = True, order_id: int = 0, perm_id: int = 0) -> Pending:
    return Pending(ref, 1, "place", settled, order_id, perm_id)


def test_a_placement_is_found_by_ref_then_perm_id_then_order_id() -> None:
    broker = BrokerView(
        open_orders=[
            order("by-ref", perm_id=901, order_id=11),
            order("", perm_id=902, order_id=12),
            order("renamed", perm_id=903, order_id=13),
        ],
        completed_orders=[order("done", "Filled", order_id=0, perm_id=904, filled=10.0, remaining=0.0)],
    )
    pending = [
        place("by-ref"),
        place("by-perm", perm_id=902),
        place("by-id", order_id=13),
        place("done", order_id=14),
        place("lost"),
        place("flying", settled=False),
        place("by-ref-wrong-perm", perm_id=999),  # the journal's perm id rules out the stranger
    ]
    known = {p.ref: (p.order_id, p.perm_id) for p in pending}
    r = reconcile(pending, known, broker, delivered=())
    got = {x.ref: (x.kind, x.state.perm_id if x.state else None) for x in r.resolutions}
    assert got == {
        "by-ref": ("done", 901),
        "by-perm": ("done", 902),
        "by-id": ("done", 903),
        "done": ("done", 904),
        "lost": ("not_done", None),
        "flying": ("in_doubt", None),
        "by-ref-wrong-perm": ("not_done", None),
    }
    assert r.states["done"].order_id == 14  # a completed order carries no id: the journal's


def test_a_completed_order_takes_its_average_price_and_id_from_the_fills() -> None:
    broker = BrokerView(
        completed_orders=[order("x", "Filled", order_id=0, perm_id=910, filled=10.0, remaining=0.0)],
        executions=[
            fill("e.1", "x", perm_id=910, order_id=21, shares=4, price=10.0),
            fill("e.2", "x", perm_id=910, order_id=21, shares=6, price=20.0),
        ],
    )
    r = reconcile([place("x")], {"x": (0, 0)}, broker, delivered=["e.1"])
    s = r.resolutions[0].state
    assert s is not None and (s.order_id, s.avg_fill_price, s.status) == (21, 16.0, "Filled")
    assert [x.exec_id for x in r.fills] == ["e.2"]  # e.1 was delivered before


def test_fills_alone_prove_a_placement_and_the_status_is_not_guessed() -> None:
    broker = BrokerView(executions=[fill("e.9", "only-fills", perm_id=920, shares=3)])
    [res] = reconcile([place("only-fills")], {"only-fills": (0, 0)}, broker, ()).resolutions
    assert res.kind == "done" and res.state is not None
    assert (res.state.status, res.state.filled, res.state.perm_id) == ("Unknown", 3, 920)


def test_modify_and_cancel() -> None:
    live = order("m", perm_id=930, quantity=5.0)
    broker = BrokerView(
        open_orders=[live, order("w", perm_id=931)],
        completed_orders=[
            order("c", "Cancelled", perm_id=932, order_id=0),
            order("f", "Filled", perm_id=933, order_id=0),
        ],
    )
    pending = [
        Pending("m", 2, "modify", False, 5, 930, {"quantity": 5.0, "limit_price": None}),  # took
        Pending("w", 2, "modify", False, 5, 931, {"quantity": 7.0}),  # not yet
        Pending("w", 3, "cancel", True, 5, 931),  # its session ended and the order still works
        Pending("c", 2, "cancel", False, 5, 932),
        Pending("f", 2, "cancel", False, 5, 933),  # it filled: the cancel can never take
        Pending("gone", 2, "cancel", False, 5, 934),
    ]
    known = {p.ref: (p.order_id, p.perm_id) for p in pending}
    got = [
        (p.ref, p.seq, x.kind)
        for p, x in zip(pending, reconcile(pending, known, broker, ()).resolutions, strict=True)
    ]
    assert got == [
        ("m", 2, "done"), ("w", 2, "in_doubt"), ("w", 3, "not_done"), ("c", 2, "done"),
        ("f", 2, "not_done"), ("gone", 2, "in_doubt"),
    ]  # fmt: skip


# ------------------------------------------------------------------------------ property


@dataclass(frozen=True)
class Truth:
    """One journalled placement and what the broker really holds for it."""

    ref: str
    where: str  # absent | open | completed | fills_only
    settled: bool
    knows_perm: bool
    ref_kept: bool  # the broker echoes the ref (else only the perm id can match it)
    fills: int


truths = st.lists(
    st.builds(
        Truth,
        ref=st.sampled_from([f"r{i}" for i in range(12)]),
        where=st.sampled_from(["absent", "open", "completed", "fills_only"]),
        settled=st.booleans(),
        knows_perm=st.booleans(),
        ref_kept=st.booleans(),
        fills=st.integers(0, 3),
    ),
    max_size=12,
    unique_by=lambda t: t.ref,
)


def world(ts: list[Truth]) -> tuple[list[Pending], dict[str, tuple[int, int]], BrokerView, dict[str, int]]:
    opened, completed, execs, perms = [], [], [], {}
    pending = []
    for n, t in enumerate(ts):
        perm = 1000 + n
        perms[t.ref] = perm
        shown = t.ref if t.ref_kept else ""
        findable = t.where != "absent" and (t.ref_kept or t.knows_perm)
        if t.where == "open":
            opened.append(order(shown, perm_id=perm, order_id=100 + n))
        elif t.where == "completed":
            completed.append(order(shown, "Filled", perm_id=perm, order_id=0))
        if t.where != "absent":
            fills_here = t.fills if t.where != "fills_only" else max(1, t.fills)
            execs += [fill(f"x{n}.{k}", shown, perm_id=perm, order_id=100 + n) for k in range(fills_here)]
        pending.append(Pending(t.ref, n + 1, "place", t.settled, 0, perm if t.knows_perm and findable else 0))
    known = {p.ref: (p.order_id, p.perm_id) for p in pending}
    return pending, known, BrokerView(opened, completed, execs), perms


@settings(max_examples=300, deadline=None)
@given(ts=truths, delivered_share=st.floats(0, 1), rounds=st.integers(1, 3))
def test_every_request_resolves_to_exactly_one_truth_and_no_fill_twice(
    ts: list[Truth], delivered_share: float, rounds: int
) -> None:
    pending, known, broker, perms = world(ts)
    all_ids = [x.exec_id for x in broker.executions]
    delivered = set(all_ids[: int(len(all_ids) * delivered_share)])
    handed: list[str] = []
    for _ in range(rounds):  # reconcile after each new session: the delivered set grows
        r = reconcile(pending, known, broker, delivered)
        assert [(x.ref, x.seq) for x in r.resolutions] == [(p.ref, p.seq) for p in pending]
        for t, x in zip(ts, r.resolutions, strict=True):
            traceable = t.where != "absent" and (t.ref_kept or t.knows_perm)
            if traceable:
                assert x.kind == "done" and x.state is not None and x.state.perm_id == perms[t.ref]
            else:
                assert x.state is None and x.kind == ("not_done" if t.settled else "in_doubt")
        ids = [x.exec_id for x in r.fills]
        assert len(ids) == len(set(ids)) and not set(ids) & delivered
        handed += ids
        delivered |= set(ids)
    assert sorted(handed) == sorted(set(all_ids) - set(all_ids[: int(len(all_ids) * delivered_share)]))
