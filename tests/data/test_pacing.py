"""worker.pacing against the simulator's own reading of IB's rules (gatewaysim.pacing), which
answers 162 for every violation: whatever requests arrive, whenever, the slots the worker gives
them never make the Gateway refuse one, even when each arrives up to the margin late."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewaysim.pacing import HistoricalPacing, Limits
from worker.pacing import Budget, HistoricalPacer, HistoricalRules

CONTRACTS = (265598, 272093)
SHAPES = ("1 D", "2 D", "3 D")  # a request is (contract, duration, what): few, so identical ones recur

requests = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=30, allow_nan=False),  # gap before asking
        st.sampled_from(CONTRACTS),
        st.sampled_from(SHAPES),
        st.sampled_from(("TRADES", "BID_ASK")),
        st.floats(min_value=0, max_value=0.99),  # how late it arrives, as a share of the margin
    ),
    min_size=1,
    max_size=90,
)


def _schedule(pacer: HistoricalPacer, reqs: list[tuple[float, int, str, str, float]]) -> list[tuple]:
    now, booked = 0.0, []
    for gap, con_id, shape, what, late in reqs:
        now += gap
        request, contract, weight = (con_id, shape, what), (con_id, what), 2 if what == "BID_ASK" else 1
        slot = pacer.slot(now, request, contract, weight)
        assert slot.at >= now
        assert (slot.at == now) == (not slot.held_by)
        pacer.book(slot.at, request, contract, weight)
        booked.append((slot.at + late * pacer.rules.margin, request, contract, weight))
    return booked


@settings(max_examples=300, deadline=None)
@given(reqs=requests)
def test_no_schedule_the_worker_makes_provokes_a_162(reqs: list[tuple[float, int, str, str, float]]) -> None:
    gateway = HistoricalPacing(Limits())
    for arrival, request, contract, weight in sorted(_schedule(HistoricalPacer(), reqs), key=lambda b: b[0]):
        assert gateway.check(arrival, request, contract, 5, weight) is None


def test_a_late_arrival_without_margin_is_refused_by_the_gateway() -> None:
    """The mutant without a margin: slots exactly at the rules' edges, and a request that
    arrives 10 ms late makes the sixth one a violation."""
    pacer = HistoricalPacer(HistoricalRules(margin=0.0))
    gateway = HistoricalPacing(Limits())
    for n in range(6):
        slot = pacer.slot(0.0, ("AAPL", n), "AAPL")
        pacer.book(slot.at, ("AAPL", n), "AAPL")
    # the sixth got the first slot 2 s after the first request; the first arrives 10 ms late
    assert slot.at == 2.0
    assert gateway.check(0.01, ("AAPL", 0), "AAPL", 5) is None
    for n in range(1, 5):
        assert gateway.check(0.0 + n / 1000, ("AAPL", n), "AAPL", 5) is None
    assert gateway.check(2.0, ("AAPL", 5), "AAPL", 5) is not None


def test_five_per_contract_then_two_seconds_and_the_rules_are_named() -> None:
    pacer = HistoricalPacer()
    slots = []
    for n in range(7):
        s = pacer.slot(0.0, ("AAPL", n), "AAPL")
        pacer.book(s.at, ("AAPL", n), "AAPL")
        slots.append(s)
    assert [s.at for s in slots[:5]] == [0.0] * 5
    assert slots[5].at == slots[6].at == pytest.approx(2.25)
    assert "at most 5 requests for one contract" in slots[5].held_by[0]
    other = pacer.slot(0.0, ("MSFT", 0), "MSFT")  # another contract is not held up behind AAPL
    assert other.at == 0.0


def test_identical_requests_wait_fifteen_seconds_and_sixty_fill_ten_minutes() -> None:
    pacer = HistoricalPacer()
    pacer.book(0.0, "same", "AAPL")
    again = pacer.slot(1.0, "same", "AAPL")
    assert again.at == pytest.approx(15.25) and "identical" in again.held_by[0]
    pacer = HistoricalPacer()
    for n in range(60):
        pacer.book(n * 2.5, ("r", n), ("c", n))  # spread out: only the 10-minute rule bites
    last = pacer.slot(150.0, ("r", 60), ("c", 60))
    assert last.at == pytest.approx(600.25) and "60 requests in 600 s" in last.held_by[0]
    assert pacer.booked() == 60


def test_a_cancelled_booking_frees_its_slot() -> None:
    pacer = HistoricalPacer()
    pacer.book(0.0, "same", "AAPL")
    pacer.cancel(0.0, "same")
    assert pacer.slot(0.5, "same", "AAPL").at == 0.5


def test_budget_counts_holders_once_and_refuses_past_its_limit() -> None:
    b = Budget(2)
    assert b.acquire("a") and b.acquire("a") and b.acquire("b")
    assert not b.acquire("c") and b.refused == 1 and b.in_use == 2
    b.release("a")
    assert b.acquire("c")
