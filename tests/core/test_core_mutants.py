"""Seeded mutants must fail the same property checks that the real core passes.

Each mutant is the real ConnectionCore with one deliberate bug; the Hypothesis state machine from
test_core_properties runs against it and must find a counterexample. Shrinking is skipped: we only
need to know that a failure is found, not the smallest one.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from test_core_properties import PROPERTY_SETTINGS, CoreMachine

from fsm.core import CONNECTED, IDLE, TABLE, ConnectionCore, Edge
from fsm.settings import Settings

S = 1_000_000_000


class Handshake31s(ConnectionCore):
    """Arms the handshake deadline at 31 s while the settings say 30 s."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._m.handshake_ns += 1 * S


class NewClientIdOnRetry(ConnectionCore):
    """Picks a new client id for every retry (what peers do after a 326)."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        m = self._m
        spawn = m._spawn

        def spawn_with_new_id() -> None:
            m.cid = settings.client_id + m.attempts
            spawn()

        m._spawn = spawn_with_new_id  # transitions resolves "_spawn" on the model at call time


class DisconnectEdge(ConnectionCore):
    """Has a `disconnect` edge CONNECTED -> IDLE."""

    _table = (*TABLE, Edge(CONNECTED, "disconnect", IDLE))


class AlwaysRespawnsAtOnce(ConnectionCore):
    """Treats every worker exit as the end of a stable session (no backoff for crash loops)."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._m.stable_session = lambda: True  # type: ignore[method-assign]


class UncappedInWindows(ConnectionCore):
    """Ignores maintenance windows when it backs off (a nightly reset waits up to 120 s)."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        super().__init__(settings, rng=rng)
        self._m.maintenance_cap_s = 1e9


MUTANTS = {
    "handshake deadline": (Handshake31s, r"handshake deadline armed 31\.0 s|SendConnect\.timeout 31\.0"),
    "client id": (NewClientIdOnRetry, "client id"),
    "disconnect": (DisconnectEdge, "disconnect"),
    "fast respawn": (AlwaysRespawnsAtOnce, "without a stable session"),
    "maintenance cap": (UncappedInWindows, "inside a window the retry is"),
}

FIND_SETTINGS = settings(PROPERTY_SETTINGS, max_examples=2000, phases=[Phase.generate])


@pytest.mark.parametrize("name", sorted(MUTANTS))
def test_mutant_is_caught(name: str) -> None:
    core_cls, message = MUTANTS[name]
    machine = type(f"{core_cls.__name__}Machine", (CoreMachine,), {"core_cls": core_cls})
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(machine, settings=FIND_SETTINGS)


def test_real_core_passes_the_same_machine() -> None:
    """Control: the unmutated core under the same settings raises nothing (a short run)."""
    run_state_machine_as_test(CoreMachine, settings=settings(FIND_SETTINGS, max_examples=100))
