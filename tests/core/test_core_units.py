"""Scenario tests of the core: each pins one rule of DESIGN §3 with exact integer times."""

from __future__ import annotations

import functools
import logging
import random
import time
from datetime import time as clock
from zoneinfo import ZoneInfo

import pytest

from fsm import core as core_module
from fsm.core import (
    TABLE,
    ConnectionCore,
    NotifyDataLost,
    ReapZombies,
    Reason,
    RetireWorker,
    SendConnect,
    SendProbe,
    SpawnWorker,
    State,
    Transition,
)
from fsm.errors import InvalidEvent
from fsm.maintenance import Window
from fsm.settings import Settings

S = 1_000_000_000
IDLE, SPAWNING, HANDSHAKING, CONNECTED, RED = State


class NoJitter(random.Random):
    """uniform() returns the midpoint, so backoff delays are exactly the base."""

    def uniform(self, a: float, b: float) -> float:
        return (a + b) / 2


class Shortest(random.Random):
    """uniform() returns its low end: the shortest jittered delay."""

    def uniform(self, a: float, b: float) -> float:
        return a


def new(**overrides) -> ConnectionCore:
    return ConnectionCore(Settings(client_id=3, **overrides), rng=NoJitter())


def connected(c: ConnectionCore, t: int = 0) -> int:
    """Drive a fresh core to CONNECTED; returns the time it got there."""
    assert c.start(t) == [SpawnWorker(3)]
    c.worker_ready(t + S // 2, pid=111)
    assert c.handshake_ok(t + S) == []
    assert c.state is CONNECTED
    return t + S


def events(c: ConnectionCore) -> list[tuple]:
    return [(t.source, t.event, t.dest) for t in c.history]


def test_happy_path_actions() -> None:
    c = new(host="127.0.0.1", port=4001, readonly=False)
    assert c.start(0) == [SpawnWorker(3)]
    assert c.next_deadline() == 20 * S  # spawn timeout
    assert c.worker_ready(S, pid=42) == [SendConnect("127.0.0.1", 4001, 3, False, 30.0)]
    assert c.next_deadline() == 31 * S
    assert c.handshake_ok(2 * S) == []
    assert c.next_deadline() == 12 * S  # first probe
    assert c.tick(12 * S) == [SendProbe()]
    assert c.probe_ok(12 * S + 1000) == []
    m = c.metrics(13 * S)
    assert m["state"] == "CONNECTED" and m["worker_pid"] == 42 and m["sessions"] == 1
    assert m["last_handshake_latency_ns"] == S
    assert m["time_in_state_ns"] == {
        "IDLE": 0,
        "SPAWNING": S,
        "HANDSHAKING": S,
        "CONNECTED": 11 * S,
        "DEGRADED_RED": 0,
    }


def test_handshake_deadline_is_exactly_entry_plus_timeout() -> None:
    c = new(handshake_timeout=45)
    c.start(0)
    c.worker_ready(7, pid=1)
    assert c.next_deadline() == 7 + 45 * S
    assert c.tick(7 + 45 * S - 1) == [] and c.state is HANDSHAKING
    c.tick(7 + 45 * S)
    assert c.state is RED and c.reason is Reason.api_unresponsive
    assert c.history[-1].at_ns - c.history[-2].at_ns == 45 * S


def test_handshake_ok_on_the_deadline_goes_through_red() -> None:
    """The deadline fires first (HANDSHAKING never outlives it); the live session is then kept."""
    c = new()
    c.start(0)
    c.worker_ready(0, pid=1)
    c.handshake_ok(30 * S)
    assert events(c)[-2:] == [(HANDSHAKING, "handshake_timeout", RED), (RED, "handshake_ok", CONNECTED)]
    assert c.metrics(30 * S)["handshake_timeouts"] == 1


def test_late_handshake_ok_after_worker_failure_is_refused() -> None:
    c = new()
    c.start(0)
    c.worker_ready(0, pid=1)
    c.tick(30 * S)
    c.session_lost(30 * S + 1)
    with pytest.raises(InvalidEvent, match="session_alive"):
        c.handshake_ok(30 * S + 2)


def test_326_reaps_zombies_and_keeps_the_client_id() -> None:
    c = new()
    c.start(0)
    c.worker_ready(0, pid=1)
    assert c.handshake_failed(S, Reason.client_id_in_use) == []
    assert c.reason is Reason.client_id_in_use
    assert c.next_deadline() == 2 * S  # 1 s backoff (no jitter)
    assert c.tick(2 * S) == [RetireWorker(Reason.client_id_in_use)]
    assert c.state is SPAWNING and c.next_deadline() is None  # waits for the old worker
    assert c.worker_exited(3 * S) == [ReapZombies(3), SpawnWorker(3)]
    assert c.metrics(3 * S)["client_id_in_use"] == 1


def test_a_gateway_too_old_backs_off_at_the_max_an_unknown_host_as_refused() -> None:
    c = new()
    c.start(0)
    c.worker_ready(0, pid=1)
    c.handshake_failed(S, Reason.gateway_too_old)  # it will not upgrade itself: ask seldom
    assert c.reason is Reason.gateway_too_old and c.next_deadline() == S + 120 * S
    assert not c.history[-1].expected
    c.tick(121 * S)
    c.worker_exited(121 * S)
    c.worker_ready(122 * S, pid=2)
    c.handshake_failed(123 * S, Reason.unknown_host)  # the next failure stays at the max
    assert c.reason is Reason.unknown_host and c.next_deadline() == 123 * S + 120 * S
    fresh = new()
    fresh.start(0)
    fresh.worker_ready(0, pid=1)
    fresh.handshake_failed(S, Reason.unknown_host)  # a name that may resolve again: as refused
    assert fresh.next_deadline() == 2 * S
    assert fresh.metrics(S)["red_by_reason"]["unknown_host"] == 1


def test_no_second_worker_while_one_is_alive() -> None:
    c = new()
    t = connected(c)
    c.shutdown(t)
    c.start(t + 1)  # old worker still exiting
    assert c.state is SPAWNING and c.metrics(t + 1)["attempts"] == 1
    with pytest.raises(InvalidEvent):
        c.worker_ready(t + 2, pid=9)  # a retiring worker cannot be the new one
    assert c.worker_exited(t + 3) == [SpawnWorker(3)]


def test_backoff_grows_then_caps_and_resets_only_after_stable_period() -> None:
    c = new(probe_interval=100, probe_timeout=50)  # no probes inside the stable period
    t = 0
    c.start(t)
    delays = []
    for _ in range(14):
        c.worker_exited(t)
        assert c.state is RED
        delays.append(c.next_deadline() - t)
        t = c.next_deadline()
        c.tick(t)
        assert c.state is SPAWNING
    expected, b = [], 1.0
    for _ in range(14):
        expected.append(round(b * S))
        b = min(b * 1.6, 120.0)
    assert delays == expected and delays[-1] == 120 * S
    c.worker_ready(t, pid=1)
    c.handshake_ok(t + 1)
    c.tick(t + 1 + 60 * S - 1)
    assert c.metrics(t)["failures"] == 14  # 1 ns short of stable: no reset
    c.tick(t + 1 + 60 * S)
    assert c.metrics(t)["failures"] == 0
    c.probe_failed(t + 1 + 60 * S)
    assert c.next_deadline() - (t + 1 + 60 * S) == S


def test_short_sessions_do_not_reset_the_backoff() -> None:
    c = new()
    t = connected(c)
    for n in range(1, 4):
        c.probe_failed(t + 59 * S)
        assert c.metrics(t)["failures"] == n
        t = c.next_deadline()
        c.tick(t)
        c.worker_exited(t)
        c.worker_ready(t, pid=1)
        c.handshake_ok(t)


def test_jitter_comes_from_the_injected_rng() -> None:
    for seed in range(20):
        c = ConnectionCore(Settings(), rng=random.Random(seed))
        c.start(0)
        c.worker_exited(0)
        delay = c.next_deadline()
        assert 0.8 * S <= delay <= 1.2 * S
    a, b = (ConnectionCore(Settings(), rng=random.Random(5)) for _ in range(2))
    for c in (a, b):
        c.start(0)
        c.worker_exited(0)
    assert a.next_deadline() == b.next_deadline()


def test_young_session_is_never_retired() -> None:
    """min_session pushes the retry out: no connect -> fast close from our side."""
    c = new()
    t = connected(c)
    c.probe_failed(t + S)  # backoff 1 s would retry at t + 2 s
    assert c.next_deadline() == t + 5 * S
    assert c.tick(t + 5 * S - 1) == []
    assert c.tick(t + 5 * S) == [RetireWorker(Reason.probe_failed)]


def test_connectivity_lost_keeps_the_session_and_probes() -> None:
    c = new()
    t = connected(c)
    c.connectivity_lost(t)
    assert c.state is RED and c.reason is Reason.connectivity_lost
    assert c.next_deadline() == t + 10 * S  # probing continues, no backoff armed
    assert c.tick(t + 10 * S) == [SendProbe()]
    c.probe_ok(t + 10 * S + 1)
    assert c.state is RED
    assert c.connectivity_restored(t + 11 * S, data_lost=True) == [NotifyDataLost()]
    assert c.state is CONNECTED
    c.connectivity_lost(t + 12 * S)
    assert c.connectivity_restored(t + 13 * S, data_lost=False) == []


def test_failed_probe_during_1100_arms_the_backoff() -> None:
    c = new()
    t = connected(c)
    c.connectivity_lost(t + 6 * S)
    c.tick(t + 10 * S)  # probe sent
    c.tick(t + 15 * S)  # unanswered
    assert c.state is RED and c.reason is Reason.probe_failed
    assert c.next_deadline() == t + 16 * S
    assert events(c)[-1] == (RED, "probe_timeout", RED)
    assert c.metrics(t)["red_episodes"] == 1


def test_late_probe_ok_revives_and_late_worker_ready_handshakes() -> None:
    c = new()
    t = connected(c)
    c.tick(t + 10 * S)
    c.tick(t + 15 * S)
    assert c.reason is Reason.probe_failed
    c.probe_ok(t + 15 * S + 1)
    assert c.state is CONNECTED
    d = new()
    d.start(0)
    d.tick(20 * S)
    assert d.reason is Reason.spawn_timeout
    assert d.worker_ready(20 * S + 1, pid=5)[0].timeout == 30.0
    assert d.state is HANDSHAKING


def test_shutdown_from_every_state_and_idle_noop() -> None:
    for prefix in (
        [],
        ["start"],
        ["start", "ready"],
        ["start", "ready", "ok"],
        ["start", "ready", "ok", "lost"],
    ):
        c = new()
        steps = {
            "start": lambda: c.start(0),
            "ready": lambda: c.worker_ready(0, pid=1),
            "ok": lambda: c.handshake_ok(0),
            "lost": lambda: c.session_lost(0),
        }
        for p in prefix:
            steps[p]()
        out = c.shutdown(1)
        assert c.state is IDLE and c.next_deadline() is None
        assert out == ([RetireWorker(Reason.shutdown)] if prefix else [])
        assert c.shutdown(2) == []


def test_invalid_event_changes_nothing_even_with_an_expiry_due() -> None:
    c = new()
    c.start(0)
    c.worker_ready(0, pid=1)
    before = (c.state, list(c.history), c.next_deadline(), c.metrics(30 * S))
    with pytest.raises(InvalidEvent, match="handshake_failed is not valid in DEGRADED_RED"):
        c.handshake_failed(30 * S, Reason.refused)  # the expiry fires first, then it is stale
    assert (c.state, list(c.history), c.next_deadline(), c.metrics(30 * S)) == before
    assert not c.accepts("handshake_failed", 30 * S) and c.accepts("handshake_failed")
    with pytest.raises(InvalidEvent, match="no probe_ok edge leaves HANDSHAKING"):
        c.probe_ok(S)


def test_inputs_never_fire_a_retry() -> None:
    """A retry spawns a new worker; an input describes the old one, so only tick() retries."""
    c = new()
    c.start(0)
    c.worker_exited(0)
    with pytest.raises(InvalidEvent):
        c.worker_exited(5 * S)  # stale: the worker is already gone
    assert c.state is RED
    assert c.tick(5 * S) == [SpawnWorker(3)]


def test_time_must_be_int_and_monotonic() -> None:
    c = new()
    c.start(10)
    with pytest.raises(ValueError, match="backwards"):
        c.worker_ready(9, pid=1)
    with pytest.raises(TypeError):
        c.tick(10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        c.handshake_failed(11, Reason.shutdown)


def test_no_disconnect_anywhere() -> None:
    c = new()
    names = set(c._machine.events) | {e.event for e in TABLE} | set(dir(c))
    assert not [n for n in names if "disconnect" in n.lower()]
    assert not [n for n in dir(core_module) if "disconnect" in n.lower()]
    assert not c.accepts("disconnect")
    with pytest.raises(InvalidEvent):
        c._handle("disconnect", 0)


def test_model_binds_every_event(caplog: pytest.LogCaptureFixture) -> None:
    """transitions skips binding a trigger whose name the model already uses, with only a log."""
    with caplog.at_level(logging.WARNING, logger="transitions"):
        c = new()
    assert not caplog.records
    for name in c._machine.events:
        assert isinstance(getattr(c._m, name), functools.partial), f"{name} not bound"


def test_history_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(core_module, "HISTORY_LIMIT", 5)
    c = new()
    t = connected(c)
    for i in range(5):
        c.connectivity_lost(t + i)
        c.connectivity_restored(t + i, data_lost=False)
    assert len(c.history) == 5 and c.history[-1].event == "connectivity_restored"


def test_event_rate() -> None:
    """The core must sustain >= 20 000 events/s; printed (pytest -s), not asserted."""
    c = ConnectionCore(Settings(), rng=random.Random(0))
    t, n = 0, 0
    start = time.perf_counter()
    for _ in range(2000):
        c.start(t)
        c.worker_ready(t, pid=1)
        c.handshake_ok(t)
        t = c.next_deadline()
        c.tick(t)
        c.probe_ok(t)
        c.connectivity_lost(t)
        c.connectivity_restored(t, data_lost=True)
        c.shutdown(t)
        c.worker_exited(t)
        n += 9
    rate = n / (time.perf_counter() - start)
    print(f"\ncore: {rate:,.0f} events/s ({1e6 / rate:.1f} us/event)")


# ---- fast respawn after our own crash (issue 15) -------------------------------------------------


def stable(c: ConnectionCore, t: int) -> int:
    """Keep a fresh core's session up for stable_period (probes off); returns the time."""
    t = connected(c, t)
    assert c.tick(t + 60 * S) == [] and c.metrics(t)["failures"] == 0
    return t + 60 * S


def test_worker_exit_after_a_stable_session_respawns_at_once() -> None:
    c = new(probe_interval=100, probe_timeout=50)
    t = stable(c, 0)
    assert c.worker_exited(t + S) == [SpawnWorker(3)]
    assert c.state is SPAWNING and c.history[-1] == Transition(
        t + S, CONNECTED, "worker_exited", SPAWNING, Reason.worker_exited
    )
    m = c.metrics(t + S)
    assert (m["fast_respawns"], m["retries"], m["red_episodes"], m["attempts"]) == (1, 0, 0, 2)
    assert c.next_deadline() == t + S + 20 * S  # only the spawn timeout: no probe, no retry


def test_worker_exit_after_an_unstable_session_backs_off() -> None:
    c = new(probe_interval=100, probe_timeout=50)
    t = connected(c)
    assert c.worker_exited(t + 60 * S - 1) == []  # 1 ns short of stable
    assert c.state is RED and c.next_deadline() == t + 61 * S - 1
    assert c.tick(t + 61 * S - 2) == []
    assert c.tick(t + 61 * S - 1) == [SpawnWorker(3)]
    assert c.metrics(t)["fast_respawns"] == 0


def test_a_crash_loop_backs_off_after_the_one_fast_respawn() -> None:
    """Stable, crash (at once), crash again before the next stable period (1 s, then 1.6 s);
    a new stable period earns one more immediate respawn."""
    c = new(probe_interval=100, probe_timeout=50)
    t = stable(c, 0)
    assert c.worker_exited(t) == [SpawnWorker(3)]
    delays = []
    for _ in range(2):
        c.worker_ready(t, pid=2)
        c.handshake_ok(t)
        t += 30 * S
        assert c.worker_exited(t) == []
        delays.append(c.next_deadline() - t)
        t = c.next_deadline()
        assert c.tick(t) == [SpawnWorker(3)]
    assert delays == [S, round(1.6 * S)]
    c.worker_ready(t, pid=3)
    c.handshake_ok(t)
    c.tick(t + 60 * S)
    assert c.worker_exited(t + 60 * S) == [SpawnWorker(3)]
    assert c.metrics(t)["fast_respawns"] == 2


def test_worker_exit_during_1100_after_a_stable_session_respawns_at_once() -> None:
    c = new(probe_interval=100, probe_timeout=50)
    t = stable(c, 0)
    c.connectivity_lost(t)
    assert c.worker_exited(t + S) == [SpawnWorker(3)]
    assert (c.history[-1].source, c.history[-1].dest) == (RED, SPAWNING)


def test_the_gateway_closing_a_stable_session_still_backs_off() -> None:
    """Only our own process exiting is fast: a closed socket or a failed probe is the Gateway."""
    for lose in ("session_lost", "probe_failed"):
        c = new(probe_interval=100, probe_timeout=50)
        t = stable(c, 0)
        getattr(c, lose)(t)
        assert c.worker_exited(t) == []
        assert c.state is RED and c.next_deadline() == t + S


# ---- maintenance windows (issue 15) ---------------------------------------------------------------

NIGHTLY = Window("ib-reset", clock(0, 15), clock(1, 45), ZoneInfo("America/New_York"))


def test_inside_a_window_the_gateways_failures_are_expected_and_ours_are_not() -> None:
    c = new(probe_interval=100, probe_timeout=50)
    t = connected(c)
    assert c.maintenance(t, NIGHTLY) == [] and c.window is NIGHTLY
    c.connectivity_lost(t + S)
    assert c.history[-1].window == "ib-reset" and c.history[-1].expected
    c.connectivity_restored(t + 2 * S, data_lost=False)
    assert c.history[-1].expected  # the way back out of it, too
    c.session_lost(t + 3 * S)
    assert c.history[-1].reason is Reason.peer_closed and c.history[-1].expected
    assert c.metrics(t)["maintenance_window"] == "ib-reset"
    d = new(probe_interval=100, probe_timeout=50)
    u = connected(d)
    d.maintenance(u, NIGHTLY)
    d.worker_exited(u + S)
    assert d.history[-1].window == "ib-reset" and not d.history[-1].expected  # our own crash
    c.maintenance(t + 4 * S, None)
    c.worker_exited(t + 4 * S)
    c.tick(c.next_deadline())
    assert c.history[-1].window is None and not c.history[-1].expected
    assert c.metrics(t)["maintenance_window"] is None


def test_inside_a_window_every_retry_is_due_within_the_cap() -> None:
    """The base is held to 5 s / 1.2, so with +-20 % jitter no retry waits more than 5 s."""
    c = new()
    c.maintenance(0, NIGHTLY)
    c.start(0)
    t, delays = 0, []
    for _ in range(8):
        c.worker_exited(t)
        delays.append(c.next_deadline() - t)
        t = c.next_deadline()
        c.tick(t)
    assert delays == [S, round(1.6 * S), round(2.56 * S), round(4.096 * S)] + [round(5 / 1.2 * S)] * 4
    assert c.metrics(t)["failures"] == 8  # the count goes on: after the window the backoff resumes
    for seed in range(50):  # with real jitter: never over the cap
        j = ConnectionCore(Settings(), rng=random.Random(seed))
        j.maintenance(0, NIGHTLY)
        j.start(0)
        t = 0
        for _ in range(10):
            j.worker_exited(t)
            assert 0 < j.next_deadline() - t <= 5 * S
            t = j.next_deadline()
            j.tick(t)


def test_a_window_opening_pulls_a_long_backoff_in_and_min_session_still_holds() -> None:
    c = new(probe_interval=100, probe_timeout=50)
    c.start(0)
    t = 0
    for _ in range(12):  # grow the backoff outside any window
        c.worker_exited(t)
        t = c.next_deadline()
        c.tick(t)
    c.worker_exited(t)
    assert c.next_deadline() - t > 60 * S
    c.maintenance(t + S, NIGHTLY)
    assert c.next_deadline() == t + S + round(5 / 1.2 * S)
    c._m.rng = Shortest()  # asked again, the jitter could only pull it in: nothing moves
    c.maintenance(t + S + S // 2, NIGHTLY)
    assert c.next_deadline() == t + S + round(5 / 1.2 * S)
    # a young session is still never retired: the retry waits for min_session
    d = new(probe_interval=100, probe_timeout=50)
    u = connected(d)
    d.maintenance(u, NIGHTLY)
    d.probe_failed(u + S // 10)
    assert d.next_deadline() == u + 5 * S


def test_maintenance_is_an_input_in_every_state_and_checks_its_argument() -> None:
    c = new()
    assert c.accepts("maintenance") and c.maintenance(0, NIGHTLY) == [] and c.state is IDLE
    assert c.maintenance(1, NIGHTLY) == [] and list(c.history) == []  # no state change, no record
    with pytest.raises(TypeError, match="Window"):
        c.maintenance(2, "ib-reset")  # type: ignore[arg-type]
    assert c.maintenance(3, None) == [] and c.window is None
