"""Sans-IO state machine for one IB Gateway connection.

In the style of h11 and Open vSwitch's reconnect.py: the core holds state, timers and counters and
does no I/O. Every input carries `now` (monotonic integer ns; float clocks produce false deadline
failures) and returns the actions the driver must perform, in order. `next_deadline()` says when
to call `tick(now)`.

Rules the table below encodes (each one a property test in tests/test_core_*.py):

- No disconnect event or action exists. A session ends only when its worker process exits, which
  the core asks for (`RetireWorker`) only on `retry` after backoff or on `shutdown`.
- Every spawn uses the one client id; after a 326 the retry reaps our own zombies first.
- HANDSHAKING ends at entry + handshake_timeout at the latest (integer ns, no rounding slack).
- Backoff is gRPC's (1 s, x1.6, +-20 % jitter, max 120 s), grows per failed attempt and resets
  only after `stable_period` continuously CONNECTED (OVS's rule), so flapping cannot turn into
  rapid connect -> close cycles. A Gateway too old for ib_async goes straight to the max. A session younger than `min_session` is never retired.
- Fast respawn: a worker that exits after its session was stable (CONNECTED for stable_period)
  is respawned at once (guard `stable_session`): the Gateway was fine, our process was not. The
  new worker has no stable session yet, so a second failure backs off as above and a crash loop
  can never cycle faster than the backoff.
- Maintenance windows (IB's nightly reset, the Gateway's daily restart) are an input:
  `maintenance(now, window)` with `fsm.maintenance.in_window(settings, wall)`. Inside one, state
  changes carry the window (`Transition.expected` for the Gateway's and IB's reasons) and every
  retry is due within `maintenance_backoff_max`, so the session is back as soon as the Gateway is.
- At most one live worker: a retry retires the old one and spawns only after `worker_exited`.

Time order: an input first fires the *expiries* due at its `now` (spawn, handshake and probe
timeouts), so no state outlives its deadline and a late `handshake_ok` lands in DEGRADED_RED,
where it is taken if the session lives. Timers that act (probe_due, retry, backoff_reset) fire
only on tick(): an input describes the worker the driver knew, never one a retry would spawn.
An event with no edge from the resulting state, or whose guards all fail, raises InvalidEvent and
changes nothing, not even the due expiries: a failed guard is never a silent no-op.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from typing import Any

from transitions import Machine, MachineError
from transitions import State as _MachineState

from .core_types import (
    GATEWAY_REASONS,
    HANDSHAKE_FAILURES,
    Action,
    Edge,
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
from .core_types import machine_transitions as _machine_transitions
from .errors import InvalidEvent
from .maintenance import Window
from .settings import Settings

__all__ = [
    "EVENTS",
    "EXPIRIES",
    "GATEWAY_REASONS",
    "HANDSHAKE_FAILURES",
    "HISTORY_LIMIT",
    "TABLE",
    "TIMERS",
    "Action",
    "ConnectionCore",
    "Edge",
    "NotifyDataLost",
    "ReapZombies",
    "Reason",
    "RetireWorker",
    "SendConnect",
    "SendProbe",
    "SpawnWorker",
    "State",
    "Transition",
    "_machine_transitions",  # for fsm.diagram, which draws TABLE
]


# ---- the transition table ------------------------------------------------------------------------


IDLE, SPAWNING, HANDSHAKING, CONNECTED, RED = State
RUNNING = (SPAWNING, HANDSHAKING, CONNECTED, RED)
EVERYWHERE = (IDLE, *RUNNING)

TABLE: tuple[Edge, ...] = (
    # source       event                    dest          guards                                  do
    Edge(IDLE, "start", SPAWNING),
    Edge(IDLE, "worker_exited", None, ("retiring",), ("_worker_gone",)),
    Edge(IDLE, "shutdown", None),
    # SPAWNING: first let a retired worker exit, then spawn; the fresh worker says ready
    Edge(SPAWNING, "worker_exited", None, ("retiring",), ("_worker_gone", "_spawn")),
    Edge(SPAWNING, "worker_ready", HANDSHAKING, ("!retiring",), ("_worker_up",)),
    Edge(SPAWNING, "worker_exited", RED, ("!retiring",), ("_worker_gone",)),
    Edge(SPAWNING, "spawn_timeout", RED, ("spawn_deadline_passed",)),
    # HANDSHAKING: the one connect, with the whole budget armed on entry
    Edge(HANDSHAKING, "handshake_ok", CONNECTED, ("within_handshake_deadline",), ("_session_up",)),
    Edge(HANDSHAKING, "handshake_timeout", RED, ("handshake_deadline_passed",)),
    Edge(HANDSHAKING, "handshake_failed", RED),
    Edge(HANDSHAKING, "session_lost", RED, (), ("_session_gone",)),
    Edge(HANDSHAKING, "worker_exited", RED, (), ("_worker_gone",)),
    # CONNECTED: probe, and reset the backoff once stable
    Edge(CONNECTED, "probe_due", None, ("probe_is_due",), ("_send_probe",)),
    Edge(CONNECTED, "probe_ok", None, (), ("_probe_answered",)),
    Edge(CONNECTED, "backoff_reset", None, ("stable_period_elapsed",), ("_reset_backoff",)),
    Edge(CONNECTED, "connectivity_restored", None, (), ("_restored",)),
    Edge(CONNECTED, "probe_timeout", RED, ("probe_overdue",)),
    Edge(CONNECTED, "probe_failed", RED),
    Edge(CONNECTED, "connectivity_lost", RED),
    Edge(CONNECTED, "session_lost", RED, (), ("_session_gone",)),
    Edge(CONNECTED, "worker_exited", SPAWNING, ("stable_session",), ("_worker_gone", "_count_fast")),
    Edge(CONNECTED, "worker_exited", RED, (), ("_worker_gone",)),
    # DEGRADED_RED: late good news that fits the reason revives a live session; else retry
    Edge(RED, "handshake_ok", CONNECTED, ("session_alive", "handshake_was_late"), ("_session_up",)),
    Edge(RED, "probe_ok", CONNECTED, ("session_alive", "probe_was_late"), ("_probe_answered",)),
    Edge(RED, "connectivity_restored", CONNECTED, ("session_alive", "awaiting_restore"), ("_restored",)),
    Edge(RED, "worker_ready", HANDSHAKING, ("worker_alive", "spawn_was_late"), ("_worker_up",)),
    # ... while waiting for 1101/1102 the session is kept and probed; losing it arms the backoff
    Edge(RED, "probe_due", None, ("probe_is_due",), ("_send_probe",)),
    Edge(RED, "probe_ok", None, ("awaiting_restore",), ("_probe_answered",)),
    Edge(RED, "probe_timeout", RED, ("probe_overdue",)),
    Edge(RED, "probe_failed", RED, ("awaiting_restore",)),
    Edge(RED, "session_lost", RED, ("awaiting_restore",), ("_session_gone",)),
    Edge(RED, "session_lost", None, ("session_alive", "!awaiting_restore"), ("_session_gone",)),
    Edge(
        RED,
        "worker_exited",
        SPAWNING,
        ("awaiting_restore", "stable_session"),
        ("_worker_gone", "_count_fast"),
    ),
    Edge(RED, "worker_exited", RED, ("awaiting_restore",), ("_worker_gone",)),
    Edge(RED, "worker_exited", None, ("worker_alive", "!awaiting_restore"), ("_worker_gone",)),
    Edge(RED, "retry", SPAWNING, ("backoff_elapsed", "min_session_elapsed"), ("_count_retry",)),
    # shutdown from anywhere: retire the worker by process exit
    Edge(RUNNING, "shutdown", IDLE),
    # a maintenance window opens or closes: tags what follows, caps the backoff
    Edge(EVERYWHERE, "maintenance", None, (), ("_set_window",)),
)

EVENTS = (
    "start",
    "worker_ready",
    "handshake_ok",
    "handshake_failed",
    "worker_exited",
    "session_lost",
    "connectivity_lost",
    "connectivity_restored",
    "probe_ok",
    "probe_failed",
    "shutdown",
    "maintenance",
)
"""Inputs from the driver (each a ConnectionCore method); the rest of TABLE's events are timers."""

TIMERS = ("spawn_timeout", "handshake_timeout", "probe_timeout", "retry", "backoff_reset", "probe_due")
"""Events fired by tick(); on equal deadlines, earlier in this tuple fires first."""
EXPIRIES = TIMERS[:3]
"""The timers an input fires first when due (they decide how the input is read)."""

_REASON_OF = {
    "spawn_timeout": Reason.spawn_timeout,
    "handshake_timeout": Reason.api_unresponsive,
    "probe_timeout": Reason.probe_failed,
    "probe_failed": Reason.probe_failed,
    "session_lost": Reason.peer_closed,
    "worker_exited": Reason.worker_exited,
    "connectivity_lost": Reason.connectivity_lost,
}

# transitions logs every callback at INFO: at ~10 callbacks per event that floods an embedding
# trader's logs. Our own history and the manager's log lines say what happened.
logging.getLogger("transitions.core").setLevel(logging.WARNING)

HISTORY_LIMIT = 10_000
"""Newest transitions kept; a flapping connection at max backoff makes ~3 000 a day."""


def _ns(seconds: float) -> int:
    return round(seconds * 1_000_000_000)


class _Model:
    """The transitions model: fields, guards (named conditions) and edge/state actions.

    Guard and field names must differ from event names: transitions binds events onto the model
    and silently skips a name that is taken."""

    def __init__(self, settings: Settings, rng: random.Random) -> None:
        self.settings = settings
        self.rng = rng
        self.cid = settings.client_id
        self.handshake_ns = _ns(settings.handshake_timeout)
        self.spawn_ns = _ns(settings.spawn_timeout)
        self.probe_interval_ns = _ns(settings.probe_interval)
        self.probe_timeout_ns = _ns(settings.probe_timeout)
        self.stable_ns = _ns(settings.stable_period)
        self.min_session_ns = _ns(settings.min_session)
        self.state = IDLE  # set again by Machine
        self.now = 0
        self.out: list[Action] = []
        # scratch for the event being processed
        self.event = ""
        self.source = IDLE
        self.prev_reason: Reason | None = None
        self.pending: Reason | None = None
        self.arg_pid: int | None = None
        self.arg_data_lost = False
        self.arg_window: Window | None = None
        self.window: Window | None = None  # the maintenance window in force
        self.maintenance_cap_s = settings.maintenance_backoff_max
        # worker and session
        self.reason: Reason | None = None
        self.alive = False  # a worker is spawned and not reported exited
        self.retire_sent = False  # RetireWorker issued for it
        self.pid: int | None = None
        self.socket_closed = False  # session_lost seen for this worker
        self.session_stable = False  # this worker's session stayed CONNECTED for stable_period
        self.session_started: int | None = None
        self.handshake_started = 0
        self.reap_pending = False
        # armed deadlines (absolute ns), None when not armed
        self.spawn_deadline: int | None = None
        self.handshake_deadline: int | None = None
        self.probe_due_at: int | None = None
        self.probe_deadline: int | None = None
        self.stable_at: int | None = None
        self.retry_at: int | None = None
        # backoff and counters
        self.failures = 0
        self.backoff_s = 0.0
        self.entered_at: int | None = None  # None until the first transition: no IDLE time since boot
        self.time_in = dict.fromkeys(State, 0)
        self.history: deque[Transition] = deque(maxlen=HISTORY_LIMIT)
        self.attempts = self.sessions = self.retries = self.fast_respawns = self.red_episodes = 0
        self.probes_sent = 0
        self.red_by_reason = dict.fromkeys(Reason, 0)
        self.last_handshake_latency: int | None = None

    # -- guards (named on the diagram's edges) --
    def retiring(self) -> bool:
        """RetireWorker was issued and the worker has not exited yet."""
        return self.retire_sent

    def worker_alive(self) -> bool:
        """A worker is spawned and not reported exited."""
        return self.alive

    def session_alive(self) -> bool:
        """The worker lives, is not being retired, and its socket was not reported lost."""
        return self.alive and not self.retire_sent and not self.socket_closed

    def within_handshake_deadline(self) -> bool:
        """now < HANDSHAKING entry + handshake_timeout."""
        return self.handshake_deadline is not None and self.now < self.handshake_deadline

    def handshake_deadline_passed(self) -> bool:
        """now >= HANDSHAKING entry + handshake_timeout."""
        return self.handshake_deadline is not None and self.now >= self.handshake_deadline

    def spawn_deadline_passed(self) -> bool:
        """The worker did not say ready within spawn_timeout."""
        return self.spawn_deadline is not None and self.now >= self.spawn_deadline

    def probe_is_due(self) -> bool:
        """probe_interval has passed since the last probe was sent."""
        return self.probe_due_at is not None and self.now >= self.probe_due_at

    def probe_overdue(self) -> bool:
        """The outstanding probe got no answer within probe_timeout."""
        return self.probe_deadline is not None and self.now >= self.probe_deadline

    def stable_period_elapsed(self) -> bool:
        """CONNECTED continuously for stable_period."""
        return self.stable_at is not None and self.now >= self.stable_at

    def backoff_elapsed(self) -> bool:
        """The backoff armed on entering DEGRADED_RED has run out."""
        return self.retry_at is not None and self.now >= self.retry_at

    def stable_session(self) -> bool:
        """The worker's session stayed CONNECTED for stable_period: the Gateway was fine."""
        return self.session_stable or self.stable_period_elapsed()

    def min_session_elapsed(self) -> bool:
        """No live session younger than min_session would be retired (no fast close)."""
        return self.now >= self.min_session_end()

    def handshake_was_late(self) -> bool:
        """In DEGRADED_RED because the handshake deadline passed."""
        return self.reason is Reason.api_unresponsive

    def probe_was_late(self) -> bool:
        """In DEGRADED_RED because a probe went unanswered."""
        return self.reason is Reason.probe_failed

    def awaiting_restore(self) -> bool:
        """In DEGRADED_RED for 1100: keep the session, wait for 1101/1102."""
        return self.reason is Reason.connectivity_lost

    def spawn_was_late(self) -> bool:
        """In DEGRADED_RED because the worker was slow to start."""
        return self.reason is Reason.spawn_timeout

    def min_session_end(self) -> int:
        if self.session_started is None or not self.session_alive():
            return 0
        return self.session_started + self.min_session_ns

    # -- edge actions --
    def _worker_up(self) -> None:
        self.pid = self.arg_pid

    def _worker_gone(self) -> None:
        self.alive = self.retire_sent = self.socket_closed = False
        self.pid = self.session_started = None

    def _spawn(self) -> None:
        if self.reap_pending:
            self.out.append(ReapZombies(self.cid))
            self.reap_pending = False
        self.out.append(SpawnWorker(self.cid))
        self.alive = True
        self.session_stable = False
        self.spawn_deadline = self.now + self.spawn_ns
        self.attempts += 1

    def _session_up(self) -> None:
        self.session_started = self.now
        self.sessions += 1
        self.last_handshake_latency = self.now - self.handshake_started

    def _session_gone(self) -> None:
        self.socket_closed = True

    def _send_probe(self) -> None:
        self.out.append(SendProbe())
        self.probes_sent += 1
        self.probe_due_at = self.now + self.probe_interval_ns
        self.probe_deadline = self.now + self.probe_timeout_ns

    def _probe_answered(self) -> None:
        self.probe_deadline = None

    def _restored(self) -> None:
        if self.arg_data_lost:
            self.out.append(NotifyDataLost())

    def _set_window(self) -> None:
        opened = self.window is None and self.arg_window is not None
        self.window = self.arg_window
        if opened and self.retry_at is not None:  # a long backoff armed before it: pull it in
            self.retry_at = min(self.retry_at, self.now + self._delay_ns())

    def _reset_backoff(self) -> None:
        self.failures = 0
        self.backoff_s = 0.0
        self.stable_at = None
        self.session_stable = True

    def _count_retry(self) -> None:
        self.retries += 1

    def _count_fast(self) -> None:
        self.fast_respawns += 1

    # -- state entry/exit (state timers are armed on entry and dropped on exit) --
    def _enter_idle(self) -> None:
        self.probe_due_at = self.probe_deadline = None
        if self.alive and not self.retire_sent:
            self.out.append(RetireWorker(Reason.shutdown))
            self.retire_sent = True

    def _enter_spawning(self) -> None:
        self.probe_due_at = self.probe_deadline = None
        if not self.alive:
            self._spawn()
        elif not self.retire_sent:
            if self.prev_reason is None:
                raise RuntimeError("internal: a live worker retired with no reason")
            self.out.append(RetireWorker(self.prev_reason))
            self.retire_sent = True

    def _exit_spawning(self) -> None:
        self.spawn_deadline = None

    def _enter_handshaking(self) -> None:
        self.handshake_started = self.now
        self.handshake_deadline = self.now + self.handshake_ns
        s = self.settings
        self.out.append(SendConnect(s.host, s.port, self.cid, s.readonly, self.handshake_ns / 1e9))

    def _exit_handshaking(self) -> None:
        self.handshake_deadline = None

    def _enter_connected(self) -> None:
        self.stable_at = self.now + self.stable_ns
        if self.probe_due_at is None:
            self.probe_due_at = self.now + self.probe_interval_ns

    def _exit_connected(self) -> None:
        self.stable_at = None

    def _enter_red(self) -> None:
        if self.source is not RED:
            self.red_episodes += 1
        reason = self.pending
        if reason is None:
            raise RuntimeError(f"internal: {self.event} entered DEGRADED_RED with no reason")
        self.reason = reason
        self.red_by_reason[reason] += 1
        if reason is Reason.client_id_in_use:
            self.reap_pending = True
        if reason is not Reason.connectivity_lost:
            self.probe_due_at = self.probe_deadline = None
            if self.retry_at is None:
                self._arm_backoff()

    def _exit_red(self) -> None:
        self.retry_at = None
        self.reason = None

    def _arm_backoff(self) -> None:
        """gRPC connection backoff: the base grows x multiplier per failure up to max, then
        +-jitter is applied to it (so at the cap a delay is 96-144 s), dispersing retries."""
        s = self.settings
        self.failures += 1
        if self.reason is Reason.gateway_too_old:  # it will not upgrade itself: ask seldom
            self.backoff_s = s.backoff_max
        elif self.failures == 1:
            self.backoff_s = s.backoff_initial
        else:
            self.backoff_s = min(self.backoff_s * s.backoff_multiplier, s.backoff_max)
        self.retry_at = self.now + self._delay_ns()

    def _delay_ns(self) -> int:
        """The jittered backoff; inside a maintenance window its base is held to
        cap / (1 + jitter), so even the jittered delay stays within the cap."""
        jitter = self.settings.backoff_jitter
        base = self.backoff_s
        if self.window is not None:
            base = min(base, self.maintenance_cap_s / (1 + jitter))
        delay = _ns(base * (1 + self.rng.uniform(-jitter, jitter)))
        if self.window is not None:
            delay = min(delay, _ns(self.maintenance_cap_s))  # float rounding
        return max(1, delay)

    def _record(self) -> None:
        """Last entry callback of every state: time accounting and history."""
        if self.state is RED:
            reason = self.reason
        elif self.event == "shutdown":
            reason = Reason.shutdown
        else:
            reason = self.pending or self.prev_reason
        if self.entered_at is not None:
            self.time_in[self.source] += self.now - self.entered_at
        self.entered_at = self.now
        window = self.window.name if self.window is not None else None
        self.history.append(Transition(self.now, self.source, self.event, self.state, reason, window))


_STATE_HOOKS = {
    IDLE: ("_enter_idle", None),
    SPAWNING: ("_enter_spawning", "_exit_spawning"),
    HANDSHAKING: ("_enter_handshaking", "_exit_handshaking"),
    CONNECTED: ("_enter_connected", "_exit_connected"),
    RED: ("_enter_red", "_exit_red"),
}


class ConnectionCore:
    """The connection state machine. Feed it inputs with `now`; perform the actions it returns."""

    _table: tuple[Edge, ...] = TABLE

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self._m = m = _Model(settings, rng if rng is not None else random.Random())
        states = [
            _MachineState(s, on_enter=[enter, "_record"], on_exit=[exit_] if exit_ else None)
            for s, (enter, exit_) in _STATE_HOOKS.items()
        ]
        self._machine = Machine(
            model=m,
            states=states,
            initial=IDLE,
            transitions=_machine_transitions(self._table),
            auto_transitions=False,
            send_event=False,
        )
        self._events = self._machine.events

    # -- observation --
    @property
    def state(self) -> State:
        return self._m.state

    @property
    def reason(self) -> Reason | None:
        """Why the machine is in DEGRADED_RED; None in every other state."""
        return self._m.reason

    @property
    def window(self) -> Window | None:
        """The maintenance window in force (last given to maintenance()), or None."""
        return self._m.window

    @property
    def client_id(self) -> int:
        return self._m.cid

    @property
    def history(self) -> deque[Transition]:
        """The newest HISTORY_LIMIT state changes, oldest first."""
        return self._m.history

    def next_deadline(self) -> int | None:
        """When tick() has something to do (absolute ns), or None. It can already be past (a
        retry held back for a young session that has since been lost): then tick at once."""
        armed = [d for d in self._deadlines() if d is not None]
        return min(armed) if armed else None

    def accepts(self, event: str, now: int | None = None) -> bool:
        """Would `event` be valid now? With `now`, the expiries due by then are taken into
        account, exactly as the input itself would. Lets a driver drop stale inputs quietly."""
        if event not in EVENTS:
            return False
        m = self._m
        if now is None or now < m.now or not self._expiry_due(now):
            return self._may(event)
        saved = self._save()
        try:
            m.now = now
            m.out = []
            self._fire_due(EXPIRIES)
            return self._may(event)
        finally:
            self._restore(saved)

    def metrics(self, now: int) -> dict[str, Any]:
        """Counters and durations (ns) for status files and dashboards; JSON-ready."""
        m = self._m
        time_in = {s.value: t for s, t in m.time_in.items()}
        if m.entered_at is not None:
            time_in[m.state.value] += max(0, now - m.entered_at)
        return {
            "state": m.state.value,
            "reason": m.reason.value if m.reason else None,
            "since_ns": m.entered_at,
            "client_id": m.cid,
            "worker_alive": m.alive,
            "worker_pid": m.pid,
            "attempts": m.attempts,
            "sessions": m.sessions,
            "retries": m.retries,
            "fast_respawns": m.fast_respawns,
            "maintenance_window": m.window.name if m.window is not None else None,
            "red_episodes": m.red_episodes,
            "red_by_reason": {r.value: n for r, n in m.red_by_reason.items()},
            "client_id_in_use": m.red_by_reason[Reason.client_id_in_use],
            "handshake_timeouts": m.red_by_reason[Reason.api_unresponsive],
            "probes_sent": m.probes_sent,
            "last_handshake_latency_ns": m.last_handshake_latency,
            "failures": m.failures,
            "backoff_ns": _ns(m.backoff_s),
            "retry_at_ns": self._retry_due(),
            "next_deadline_ns": self.next_deadline(),
            "time_in_state_ns": time_in,
        }

    # -- inputs --
    def start(self, now: int) -> list[Action]:
        return self._handle("start", now)

    def worker_ready(self, now: int, pid: int) -> list[Action]:
        self._m.arg_pid = pid
        return self._handle("worker_ready", now)

    def handshake_ok(self, now: int) -> list[Action]:
        return self._handle("handshake_ok", now)

    def handshake_failed(self, now: int, reason: Reason) -> list[Action]:
        reason = Reason(reason)
        if reason not in HANDSHAKE_FAILURES:
            raise ValueError(f"handshake_failed reason must be one of {sorted(HANDSHAKE_FAILURES)}")
        return self._handle("handshake_failed", now, reason)

    def worker_exited(self, now: int) -> list[Action]:
        return self._handle("worker_exited", now)

    def session_lost(self, now: int) -> list[Action]:
        return self._handle("session_lost", now)

    def connectivity_lost(self, now: int) -> list[Action]:
        return self._handle("connectivity_lost", now)

    def connectivity_restored(self, now: int, data_lost: bool) -> list[Action]:
        self._m.arg_data_lost = data_lost
        return self._handle("connectivity_restored", now)

    def probe_ok(self, now: int) -> list[Action]:
        return self._handle("probe_ok", now)

    def probe_failed(self, now: int) -> list[Action]:
        return self._handle("probe_failed", now)

    def shutdown(self, now: int) -> list[Action]:
        """From any state to IDLE, retiring a live worker; in IDLE a no-op."""
        return self._handle("shutdown", now)

    def maintenance(self, now: int, window: Window | None) -> list[Action]:
        """The maintenance window in force from `now` (None: none), as
        `fsm.maintenance.in_window(settings, wall)` says; call it at start and at every
        `next_change()`. Valid in every state; a repeat changes nothing."""
        if window is not None and not isinstance(window, Window):
            raise TypeError(f"window must be a fsm.maintenance.Window or None, got {window!r}")
        self._m.arg_window = window
        return self._handle("maintenance", now)

    def tick(self, now: int) -> list[Action]:
        """Fire every deadline due at `now` (call it at next_deadline())."""
        m = self._m
        self._check_time(now)
        m.now = now
        out: list[Action] = []
        m.out = out
        self._fire_due(TIMERS)
        return out

    # -- internals --
    def _handle(self, event: str, now: int, reason: Reason | None = None) -> list[Action]:
        m = self._m
        self._check_time(now)
        if event not in self._events:
            raise InvalidEvent(event, m.state.value, "not an event of this machine")
        out: list[Action] = []
        m.out = out
        if self._expiry_due(now):
            saved = self._save()
            m.now = now
            self._fire_due(EXPIRIES)
            if not self._fire(event, reason):
                error = self._invalid(event)
                self._restore(saved)
                raise error
        else:
            before = m.now
            m.now = now
            if not self._fire(event, reason):
                m.now = before
                raise self._invalid(event)
        return out

    def _check_time(self, now: int) -> None:
        if type(now) is not int:
            raise TypeError(f"now must be int nanoseconds, got {type(now).__name__}")
        if now < self._m.now:
            raise ValueError(f"time went backwards: {now} < {self._m.now}")

    def _deadlines(self) -> tuple[int | None, ...]:
        """Armed deadlines in TIMERS order (None = not armed)."""
        m = self._m
        return (
            m.spawn_deadline,
            m.handshake_deadline,
            m.probe_deadline,
            self._retry_due(),
            m.stable_at,
            m.probe_due_at,
        )

    def _expiry_due(self, now: int) -> bool:
        m = self._m
        return any(
            d is not None and d <= now for d in (m.spawn_deadline, m.handshake_deadline, m.probe_deadline)
        )

    def _retry_due(self) -> int | None:
        m = self._m
        return None if m.retry_at is None else max(m.retry_at, m.min_session_end())

    def _fire(self, event: str, reason: Reason | None = None) -> bool:
        m = self._m
        m.event = event
        m.source = m.state
        m.prev_reason = m.reason
        m.pending = reason or _REASON_OF.get(event)
        try:
            return self._events[event].trigger(m)
        except MachineError:
            return False

    def _fire_due(self, timers: tuple[str, ...]) -> None:
        """Fire the due `timers`, earliest first, until none is due (each firing re-arms past now)."""
        m = self._m
        while True:
            due = [
                (d, i)
                for i, d in enumerate(self._deadlines())
                if d is not None and d <= m.now and TIMERS[i] in timers
            ]
            if not due:
                return
            event = TIMERS[min(due)[1]]
            if not self._fire(event):
                raise RuntimeError(f"internal: {event} due but refused in {m.state}")

    def _may(self, event: str) -> bool:
        return bool(self._m.may_trigger(event))  # type: ignore[attr-defined]  # bound by Machine

    def _invalid(self, event: str) -> InvalidEvent:
        m = self._m
        edges = [
            e
            for e in self._table
            if e.event == event
            and (m.state in e.source if isinstance(e.source, tuple) else m.state is e.source)
        ]
        if not edges:
            detail = f"no {event} edge leaves {m.state.value}"
        else:
            guards = " | ".join(" & ".join(e.guards) for e in edges)
            detail = f"guards fail ({guards})"
        if m.reason is not None:
            detail += f" [reason {m.reason.value}]"
        return InvalidEvent(event, m.state.value, detail)

    def _save(self) -> tuple[Any, ...]:
        m = self._m
        return (dict(vars(m)), dict(m.time_in), dict(m.red_by_reason), list(m.history), m.rng.getstate())

    def _restore(self, saved: tuple[Any, ...]) -> None:
        fields, time_in, red_by_reason, history, rng_state = saved
        m = self._m
        vars(m).update(fields)
        m.time_in.clear()
        m.time_in.update(time_in)
        m.red_by_reason.clear()
        m.red_by_reason.update(red_by_reason)
        m.history.clear()
        m.history.extend(history)
        m.rng.setstate(rng_state)
