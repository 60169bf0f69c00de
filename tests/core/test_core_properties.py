"""Hypothesis stateful test of the sans-IO core against the rules in DESIGN §3.

`Driver` is a fake, honest driver with an integer-ns clock: it performs the core's actions on an
independent model of the world (workers, sessions) and checks every rule after every step, on
the armed deadlines as well as on observed dwell. The exhaustive walk and the mutant tests reuse
it, so a seeded bug must fail these same checks.
"""

from __future__ import annotations

import itertools
import random
from datetime import time
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from fsm.core import (
    EVENTS,
    HANDSHAKE_FAILURES,
    TIMERS,
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
SETTINGS = Settings(client_id=7)
CID = SETTINGS.client_id
HANDSHAKE_NS = 30 * S
STABLE_NS = 60 * S
MIN_SESSION_NS = 5 * S
CAP_NS = 5 * S  # maintenance_backoff_max
WINDOW = Window("test-window", time(23, 0), time(1, 0), ZoneInfo("UTC"))  # the core only names it
JITTER = SETTINGS.backoff_jitter
IDLE, SPAWNING, HANDSHAKING, CONNECTED, RED = State
RUNNING = (SPAWNING, HANDSHAKING, CONNECTED, RED)

# The spec's edges, written from DESIGN §3 by hand (not derived from fsm.core.TABLE), so an edge
# added to the table is caught. Internal (no state change) edges do not appear in history.
SPEC_EDGES = {
    (IDLE, "start", SPAWNING),
    (SPAWNING, "worker_ready", HANDSHAKING),
    (SPAWNING, "worker_exited", RED),
    (SPAWNING, "spawn_timeout", RED),
    (HANDSHAKING, "handshake_ok", CONNECTED),
    (HANDSHAKING, "handshake_timeout", RED),
    (HANDSHAKING, "handshake_failed", RED),
    (HANDSHAKING, "session_lost", RED),
    (HANDSHAKING, "worker_exited", RED),
    (CONNECTED, "probe_timeout", RED),
    (CONNECTED, "probe_failed", RED),
    (CONNECTED, "connectivity_lost", RED),
    (CONNECTED, "session_lost", RED),
    (CONNECTED, "worker_exited", RED),
    (CONNECTED, "worker_exited", SPAWNING),  # fast respawn after a stable session
    (RED, "handshake_ok", CONNECTED),
    (RED, "probe_ok", CONNECTED),
    (RED, "connectivity_restored", CONNECTED),
    (RED, "worker_ready", HANDSHAKING),
    (RED, "probe_timeout", RED),
    (RED, "probe_failed", RED),
    (RED, "session_lost", RED),
    (RED, "worker_exited", RED),
    (RED, "worker_exited", SPAWNING),  # fast respawn: stable session, then 1100, then exit
    (RED, "retry", SPAWNING),
} | {(s, "shutdown", IDLE) for s in RUNNING}

ACTION_TYPES = (SpawnWorker, SendConnect, SendProbe, RetireWorker, ReapZombies, NotifyDataLost)


def _backoff_edges() -> list[int]:
    out, b = [], 1.0
    while True:
        for x in (b * (1 - JITTER), b, b * (1 + JITTER)):
            out += [round(x * S) - 1, round(x * S), round(x * S) + 1]
        if b >= 120.0:
            return out
        b = min(b * 1.6, 120.0)


SPECIAL_STEPS = sorted(
    {
        0,
        1,
        HANDSHAKE_NS - 1,
        HANDSHAKE_NS,
        HANDSHAKE_NS + 1,
        20 * S - 1,
        20 * S,
        20 * S + 1,
        10 * S - 1,
        10 * S,
        10 * S + 1,
        5 * S - 1,
        5 * S,
        5 * S + 1,
        STABLE_NS - 1,
        STABLE_NS,
        STABLE_NS + 1,
        *_backoff_edges(),
    }
)
time_steps = st.one_of(
    st.sampled_from(SPECIAL_STEPS),
    st.integers(0, 2 * S),
    st.integers(0, 300 * S),
)


def call(core: ConnectionCore, event: str, now: int, arg: object = None) -> list:
    """Fire one input by name (unknown names, e.g. a mutant's extra edge, go straight in)."""
    if event == "worker_ready":
        return core.worker_ready(now, 4242 if arg is None else arg)
    if event == "handshake_failed":
        return core.handshake_failed(now, Reason.refused if arg is None else arg)
    if event == "connectivity_restored":
        return core.connectivity_restored(now, bool(arg))
    if event == "maintenance":
        return core.maintenance(now, WINDOW if arg else None)
    if event in EVENTS:
        return getattr(core, event)(now)
    return core._handle(event, now)


def _ends_a_session(t: Transition) -> bool:
    """A failure the backoff is for: into DEGRADED_RED or a worker exit (a 1100 keeps the
    session, so it is not one yet)."""
    return (t.dest is RED or t.event == "worker_exited") and t.event != "connectivity_lost"


class Driver:
    """Fake integer-ns clock and world model around a core; check() asserts every rule."""

    def __init__(self, core_cls: type[ConnectionCore] = ConnectionCore, seed: int = 0) -> None:
        self.core = core_cls(SETTINGS, rng=random.Random(seed))
        self.now = 0
        self.live = 0  # workers spawned and not yet reported exited
        self.session_at: int | None = None  # handshake_ok time of the live worker's session
        self.socket_lost = False
        self.seen = 0  # history records already checked
        self.last_dest = IDLE
        self.last_at = 0
        self.backoff = 0
        self.retry_at: int | None = None  # last observed retry deadline
        self.armed_at = self.armed_backoff = 0
        self.checked_until = 0  # history position of the last backoff check
        # the respawn rule, tracked from history on our own: a spawn sooner than the smallest
        # backoff after a failure needs a worker exit that ended a stable session
        self.tracked = 0  # history records folded into the fields below
        self.connected_since: int | None = None
        self.stable_seen = False  # this worker's session stayed CONNECTED for STABLE_NS
        self.failure: tuple[int, str] | None = None  # first failure since the session was up
        # maintenance windows: every record carries the window in force; inside one a retry
        # is due within CAP_NS, and a retry may come as early as the capped backoff allows
        self.window: Window | None = None
        self.tagged = 0  # history records whose window tag was checked
        self.window_since_armed = False

    # ---- stimuli ----
    def fire(self, event: str, arg: object = None) -> bool:
        """Fire an event, valid or not; an invalid one must raise and change nothing."""
        core, now = self.core, self.now
        before = self.snapshot()
        expected = core.accepts(event, now)
        if event == "maintenance":
            self.check_tags()
        try:
            actions = call(core, event, now, arg)
        except InvalidEvent:
            assert not expected, f"accepts({event!r}) said yes but {event} raised"
            assert self.snapshot() == before, f"invalid {event} changed the core"
            return False
        assert expected, f"accepts({event!r}) said no but {event} was taken"
        if event == "worker_exited":
            assert self.live == 1, "worker_exited accepted with no live worker"
            self.live -= 1
            self.session_at, self.socket_lost = None, False
        elif event == "worker_ready":
            assert self.live == 1, "worker_ready accepted with no live worker"
        elif event == "session_lost":
            self.socket_lost = True
        elif event == "handshake_ok":
            self.session_at, self.socket_lost = now, False
        elif event == "maintenance":
            self.check_tags()  # expiries it fired first ran under the old window
            self.window = WINDOW if arg else None
            self.window_since_armed |= self.window is not None
        self.perform(actions)
        return True

    def advance(self, dt: int, tick: bool = True) -> None:
        """Move the clock, ticking at every deadline on the way (as the manager's timer does)."""
        target = self.now + dt
        while (d := self.core.next_deadline()) is not None and d <= target:
            self.now = max(self.now, d)
            self.perform(self.core.tick(self.now))
            self.check()
        self.now = target
        if tick:
            self.perform(self.core.tick(self.now))

    def advance_healthy(self, dt: int) -> None:
        """Move the clock like advance(), answering every probe as a healthy Gateway does."""
        target = self.now + dt
        while True:
            if self.core._m.probe_deadline is not None and self.core.accepts("probe_ok", self.now):
                self.fire("probe_ok")
            d = self.core.next_deadline()
            if d is None or d > target:
                break
            self.advance(max(0, d - self.now))
            self.check()
        self.advance(target - self.now)

    def to_deadline(self) -> None:
        """Stand exactly on the next deadline without ticking: inputs now race the timer."""
        d = self.core.next_deadline()
        if d is not None and d > self.now:
            self.now = d

    def perform(self, actions: list) -> None:
        core = self.core
        new = list(core.history)[self.seen :]
        retired_by = {t.event for t in new}
        for a in actions:
            assert isinstance(a, ACTION_TYPES), f"unknown action {a!r}"
            assert "disconnect" not in type(a).__name__.lower(), f"disconnect action {a!r}"
            if isinstance(a, (SpawnWorker, ReapZombies, SendConnect)):
                assert a.client_id == CID, f"client id {a.client_id} != {CID} in {a!r}"
            if isinstance(a, SpawnWorker):
                assert self.live == 0, "SpawnWorker while a worker is alive"
                self.check_respawn()
                self.live += 1
                self.session_at, self.socket_lost = None, False
            elif isinstance(a, SendConnect):
                assert core.state is HANDSHAKING
                assert a.timeout * S == core.next_deadline() - self.now <= HANDSHAKE_NS, (
                    f"SendConnect.timeout {a.timeout} is not the budget left"
                )
            elif isinstance(a, SendProbe):  # from a session state (maybe left later this step)
                assert (
                    core.state is CONNECTED
                    or core.reason is Reason.connectivity_lost
                    or any(t.source in (CONNECTED, RED) for t in new)
                ), f"SendProbe in {core.state}"
            elif isinstance(a, RetireWorker):
                assert isinstance(a.reason, Reason)
                assert self.live == 1, "RetireWorker with no live worker"
                assert retired_by & {"retry", "shutdown"}, f"RetireWorker not from retry/shutdown: {new}"
                if "retry" in retired_by and self.session_at is not None and not self.socket_lost:
                    assert self.now - self.session_at >= MIN_SESSION_NS, (
                        f"fast close: retired a {(self.now - self.session_at) / S:.3f} s old session"
                    )

    def track(self) -> None:
        """Fold new history into connected_since / stable_seen / failure."""
        history = list(self.core.history)
        for t in history[self.tracked :]:
            if t.source is CONNECTED and self.connected_since is not None:
                self.stable_seen |= t.at_ns - self.connected_since >= STABLE_NS
                self.connected_since = None
            if t.dest is CONNECTED:
                self.connected_since = t.at_ns
            if t.dest in (IDLE, CONNECTED):  # stopped, or the session is back
                self.failure = None
            elif self.failure is None and _ends_a_session(t):
                self.failure = (t.at_ns, t.event)
        self.tracked = len(history)

    def check_respawn(self) -> None:
        """At a SpawnWorker: no respawn closer to its failure than the smallest backoff unless
        the worker exited after a stable session; then the new worker starts unstable."""
        self.track()
        if self.failure is not None:
            at, event = self.failure
            gap = self.now - at
            if gap < (1 - JITTER) * SETTINGS.backoff_initial * S:
                assert event == "worker_exited" and self.stable_seen, (
                    f"respawned {gap / S:.3f} s after {event} without a stable session"
                )
        self.failure, self.stable_seen, self.connected_since = None, False, None

    def check_tags(self) -> None:
        history = list(self.core.history)
        name = self.window.name if self.window is not None else None
        for t in history[self.tagged :]:
            assert t.window == name, f"{t} is tagged {t.window!r}, the window in force is {name!r}"
            assert not t.expected or t.window is not None, f"{t} expected outside a window"
        self.tagged = len(history)

    def snapshot(self) -> tuple:
        c = self.core
        return (
            c.state,
            c.reason,
            c.next_deadline(),
            len(c.history),
            tuple(c.history)[-1:],
            c.metrics(self.now),
        )

    # ---- the rules, after every step ----
    def check(self) -> None:
        core, now = self.core, self.now
        names = set(core._machine.events)
        assert not any("disconnect" in n for n in names), f"disconnect event in {sorted(names)}"
        assert not hasattr(core, "disconnect"), "the core has a disconnect method"
        assert self.live <= 1, f"{self.live} live workers"
        deadline = core.next_deadline()
        m = core.metrics(now)
        # Only a retry may be overdue: losing a young session can pull it back into the past
        # (min_session no longer applies); the driver's next tick fires it at once.
        assert deadline is None or deadline >= now or deadline == m["retry_at_ns"], (
            "a deadline passed without firing"
        )
        history = list(core.history)
        for t in history[self.seen :]:
            assert (t.source, t.event, t.dest) in SPEC_EDGES, f"undeclared edge {t}"
            assert t.source == self.last_dest, f"history chain broken at {t}"
            assert self.last_at <= t.at_ns <= now, f"history time not monotonic at {t}"
            if t.source is HANDSHAKING:
                assert t.at_ns - self.last_at <= HANDSHAKE_NS, f"HANDSHAKING lasted past 30 s: {t}"
            if t.event == "retry":
                assert self.retry_at is not None and t.at_ns >= self.retry_at, (
                    f"retry at {t.at_ns} before its backoff deadline {self.retry_at}"
                )
                floor = self.armed_backoff
                if self.window_since_armed:  # a window caps the base at CAP / (1 + jitter)
                    floor = min(floor, CAP_NS / (1 + JITTER))
                assert t.at_ns - self.armed_at >= (1 - JITTER) * floor - 1, (
                    f"retry {(t.at_ns - self.armed_at) / S} s after arming a "
                    f"{self.armed_backoff / S} s backoff (window: {self.window_since_armed})"
                )
            self.last_dest, self.last_at = t.dest, t.at_ns
        self.seen = len(history)
        if core.state is HANDSHAKING:
            entry = history[-1].at_ns
            assert deadline is not None and deadline - entry <= HANDSHAKE_NS, (
                f"handshake deadline armed {(deadline - entry) / S} s after entry"
            )
            assert now - entry <= HANDSHAKE_NS, "HANDSHAKING outlived its deadline"
        if m["backoff_ns"] < self.backoff:
            assert self.stable_since_last_check(history, now), (
                f"backoff shrank {self.backoff} -> {m['backoff_ns']} without a stable session"
            )
        self.check_tags()
        if m["retry_at_ns"] is not None and self.retry_at is None:  # newly armed
            self.armed_at, self.armed_backoff = now, m["backoff_ns"]
            # armed on entering DEGRADED_RED, under the window that transition was tagged with: a
            # maintenance input fires its due expiries under the old window before it changes it
            armed_by = next((t for t in reversed(history) if t.dest is RED), None)
            self.window_since_armed = self.window is not None or (
                armed_by is not None and armed_by.window is not None
            )
            assert m["backoff_ns"] > 0, "a retry deadline armed with no backoff"
        if self.window is not None and m["retry_at_ns"] is not None:
            held = 0  # a young session holds the retry back (min_session)
            if self.session_at is not None and self.live and not self.socket_lost:
                held = self.session_at + MIN_SESSION_NS
            assert m["retry_at_ns"] <= max(now + CAP_NS, held), (
                f"inside a window the retry is {(m['retry_at_ns'] - now) / S} s away"
            )
        self.retry_at = m["retry_at_ns"]
        self.backoff = m["backoff_ns"]
        self.checked_until = now

    def stable_since_last_check(self, history: list, now: int) -> bool:
        """Was the core CONNECTED for stable_period without a break since the last check?"""
        spans = [(a.at_ns, b.at_ns) for a, b in itertools.pairwise(history) if a.dest is CONNECTED]
        if history and history[-1].dest is CONNECTED:
            spans.append((history[-1].at_ns, now))
        return any(end - start >= STABLE_NS and end >= self.checked_until for start, end in spans)


class CoreMachine(RuleBasedStateMachine):
    """Rules fire every event, valid or not, and move a clock biased to the spec's constants."""

    core_cls: type[ConnectionCore] = ConnectionCore

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(self.core_cls)
        self.extra = sorted(set(self.d.core._machine.events) - set(EVENTS) - set(TIMERS))

    @rule(
        event=st.sampled_from(EVENTS),
        pid=st.integers(1, 99999),
        reason=st.sampled_from(sorted(HANDSHAKE_FAILURES)),
        data_lost=st.booleans(),
    )
    def fire(self, event: str, pid: int, reason: Reason, data_lost: bool) -> None:
        arg = {
            "worker_ready": pid,
            "handshake_failed": reason,
            "connectivity_restored": data_lost,
            "maintenance": data_lost,
        }
        self.d.fire(event, arg.get(event))

    @rule(data=st.data())
    def fire_valid(self, data: st.DataObject) -> None:
        """Mostly-valid inputs, so runs get deep (random events alone rarely reach CONNECTED)."""
        valid = [e for e in EVENTS if self.d.core.accepts(e, self.d.now)]
        event = data.draw(st.sampled_from(valid or list(EVENTS)))
        arg = {
            "worker_ready": data.draw(st.integers(1, 99999)),
            "handshake_failed": data.draw(st.sampled_from(sorted(HANDSHAKE_FAILURES))),
            "connectivity_restored": data.draw(st.booleans()),
            "maintenance": data.draw(st.booleans()),
        }.get(event)
        self.d.fire(event, arg)

    @precondition(lambda self: self.extra)
    @rule(data=st.data())
    def fire_other(self, data: st.DataObject) -> None:
        """Events outside the public set: none in the real core, a mutant's extra edge."""
        self.d.fire(data.draw(st.sampled_from(self.extra)))

    @rule(dt=time_steps)
    def advance(self, dt: int) -> None:
        self.d.advance(dt)

    @rule()
    def progress(self) -> None:
        """The Gateway cooperates: take the next step towards a session, or wait for the timer
        that leads there (random events alone rarely get a session stable)."""
        core = self.d.core
        for event in ("start", "worker_ready", "handshake_ok"):
            if core.accepts(event, self.d.now):
                self.d.fire(event)
                return
        if core._m.retire_sent:
            self.d.fire("worker_exited")
        elif (d := core.next_deadline()) is not None:
            self.d.advance(max(0, d - self.d.now))

    @rule(dt=st.sampled_from([STABLE_NS - 1, STABLE_NS, 2 * STABLE_NS]))
    def healthy(self, dt: int) -> None:
        """A healthy Gateway for a while: probes answered, so sessions get stable."""
        self.d.advance_healthy(dt)

    @rule(offset=st.sampled_from([-1, 0]))
    def near_deadline(self, offset: int) -> None:
        """Land on the armed deadline (or 1 ns before it) without ticking."""
        d = self.d.core.next_deadline()
        if d is None or d + offset <= self.d.now:
            return
        if offset == 0:
            self.d.to_deadline()
        else:
            self.d.advance(d - 1 - self.d.now, tick=False)

    @invariant()
    def rules_hold(self) -> None:
        self.d.check()


PROPERTY_SETTINGS = settings(
    max_examples=800,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
CoreMachine.TestCase.settings = PROPERTY_SETTINGS
TestCoreProperties = CoreMachine.TestCase


def test_spec_edges_match_the_table() -> None:
    """The hand-written spec and the table agree, so the stateful test is about the real thing."""
    from fsm.core import TABLE

    table = {
        (src, e.event, e.dest)
        for e in TABLE
        if e.dest is not None
        for src in (e.source if isinstance(e.source, tuple) else (e.source,))
    }
    assert table == SPEC_EDGES


@pytest.mark.parametrize("seed", range(3))
def test_long_random_walk(seed: int) -> None:
    """A few long seeded walks: backoff growth up to the cap and many retries, beyond what the
    50-step Hypothesis runs reach."""
    rng = random.Random(seed)
    d = Driver(seed=seed)
    for _ in range(3000):
        if rng.random() < 0.5:
            event = rng.choice(EVENTS)
            arg = {
                "worker_ready": rng.randrange(1, 99999),
                "handshake_failed": rng.choice(sorted(HANDSHAKE_FAILURES)),
                "connectivity_restored": rng.random() < 0.5,
                "maintenance": rng.random() < 0.5,
            }.get(event)
            d.fire(event, arg)
        else:
            d.advance(rng.choice(SPECIAL_STEPS) if rng.random() < 0.5 else rng.randrange(3 * S))
        d.check()
    assert d.core.metrics(d.now)["attempts"] > 10
