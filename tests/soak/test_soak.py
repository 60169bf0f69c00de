"""Soak: a random fault every 0.5-3 s and 24 concurrent callers, against the real manager, the
real worker with the real ib_async, and the simulator over real TCP, on asyncio and on trio.

Faults: worker SIGKILL, worker SIGSTOP (SIGCONT later, unless the manager ended it first), the
Gateway dropping every session, going down for a while, going RED (then restarted), losing IB's
servers (1100, then 1101 or 1102), holding the client id after a close, a farm flap. They overlap
freely. The callers loop over Gateway-bound requests (ping, positions, account_summary, accounts).

Asserted: every request has exactly one outcome (its data, of the shape its command returns, or
an IbgwError), none hangs; no probe failure unless a fault silencing the Gateway (SIGSTOP, RED)
was on then or within one probe timeout before; one client id in every spawned worker and at the
simulator, never two sessions of it at once; no close by a live process and no fast close at the
simulator; no worker process, file descriptor, lock or live status file left behind.

The seed is printed with the figures; IBGW_SOAK_SEED=<seed> replays the same fault and request
sequence (timing still varies), IBGW_SOAK_SECONDS sets the fault phase per backend (default 20 s:
both backends together take about a minute). Deselect locally with ``-m "not soak"``.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
import pytest
from conftest import WorkerLedger, open_fds
from support.manager import (
    FAST_CLOSE_WINDOW,
    assert_clean_exit,
    assert_session_invariants,
    fast_settings,
    poll_until,
)

from fsm.changes import StateChange
from fsm.core import State, Transition
from fsm.errors import IbgwError
from fsm.lockfile import lock_path
from fsm.manager import ConnectionManager
from fsm.pids import worker_label
from fsm.status import read_all
from gatewaysim import Faults, GatewaySim, SimEvent

pytestmark = [pytest.mark.anyio, pytest.mark.soak]

CID = 23
HOST = "127.0.0.1"
ACCOUNT = "DU1234567"
CALLERS = 24
COMMANDS = ("ping", "positions", "account_summary", "accounts")
FAULTS = (
    "sigkill",
    "sigstop",
    "drop_all",
    "down_for",
    "red_restart",
    "lost_1101",
    "lost_1102",
    "id_hold",
    "farm_flap",
)
SILENCING = ("sigstop", "red_restart")  # the Gateway (or our worker) answers nothing meanwhile
GAP = (0.5, 3.0)  # seconds between two faults
QUICK = 0.005  # a WorkerDied this fast came from a worker dead before the request was sent
HANG_GRACE = 5.0  # beyond wait + timeout, a call that has not returned counts as hung
SHAPES: dict[str, Callable[[dict[str, Any]], bool]] = {
    "ping": lambda d: isinstance(d.get("gateway_time"), float),
    "positions": lambda d: isinstance(d.get("positions"), list),
    "account_summary": lambda d: isinstance(d.get("rows"), list) and bool(d["rows"]),
    "accounts": lambda d: d.get("accounts") == [ACCOUNT],
}


@dataclass
class Calls:
    """Every request: started, and its one outcome (``ok`` or the error's class name)."""

    started: int = 0
    outcome: dict[int, str] = field(default_factory=dict)
    by_kind: Counter[str] = field(default_factory=Counter)
    by_command: Counter[str] = field(default_factory=Counter)
    ok_by_command: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)  # duplicates, hangs, untyped, misshapen
    slowest: float = 0.0
    quick_deaths: int = 0  # WorkerDied within QUICK s: sent to a worker that had already died

    def begin(self, command: str) -> int:
        self.started += 1
        self.by_command[command] += 1
        return self.started

    def end(self, n: int, command: str, kind: str, seconds: float) -> None:
        if n in self.outcome:
            self.problems.append(f"call {n}: a second outcome {kind} after {self.outcome[n]}")
            return
        self.outcome[n] = kind
        self.by_kind[kind] += 1
        if kind == "WorkerDied" and seconds < QUICK:
            self.quick_deaths += 1
        if kind == "ok":
            self.ok_by_command[command] += 1
        self.slowest = max(self.slowest, seconds)


async def caller(m: ConnectionManager, calls: Calls, rng: random.Random, stop: anyio.Event) -> None:
    """Gateway-bound requests in a loop; each waits a little for a session when there is none."""
    limit = m.settings.request_timeout
    while not stop.is_set():
        command = rng.choice(COMMANDS)
        wait = rng.uniform(0.5, 3.0)
        n = calls.begin(command)
        t0 = time.monotonic()
        kind = "ok"
        try:
            with anyio.fail_after(wait + limit + HANG_GRACE):
                data = await m.request(command, wait=wait)
        except IbgwError as exc:
            kind = type(exc).__name__
        except TimeoutError:
            kind = "HUNG"
            calls.problems.append(
                f"call {n} ({command}): no outcome within {wait + limit + HANG_GRACE:.1f} s"
            )
        except Exception as exc:  # any other class breaks the API's promise
            kind = f"untyped {type(exc).__name__}"
            calls.problems.append(f"call {n} ({command}): {exc!r}")
        else:
            if not SHAPES[command](data):
                calls.problems.append(f"call {n} ({command}): an answer of another shape: {data!r:.200}")
        calls.end(n, command, kind, time.monotonic() - t0)


@dataclass
class Window:
    """When a fault was in force (monotonic ns); ``end`` None while it still is."""

    kind: str
    start: int
    end: int | None = None


class Faulter:
    """Injects the faults, schedules their undoing, and remembers when each was in force."""

    def __init__(self, m: ConnectionManager, sim: GatewaySim, rng: random.Random, ledger: WorkerLedger):
        self.m, self.sim, self.rng, self.ledger = m, sim, rng, ledger
        self.counts: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()  # process faults with no worker safe to signal
        self.windows: list[Window] = []
        self._undo: dict[int, Callable[[], None]] = {}
        self._keys = itertools.count()
        self._tg: anyio.abc.TaskGroup | None = None
        self._hold_gen = 0

    async def run(self, seconds: float) -> None:
        """Faults for ``seconds``, then every one still in force undone."""
        end = time.monotonic() + seconds
        async with anyio.create_task_group() as self._tg:
            while time.monotonic() < end:
                await anyio.sleep(self.rng.uniform(*GAP))  # pacing between faults
                await self.inject(self.rng.choice(FAULTS))
            self.heal()
            self._tg.cancel_scope.cancel()

    def heal(self) -> None:
        undo, self._undo = self._undo, {}
        for fn in undo.values():
            fn()

    def _later(
        self, seconds: float, fn: Callable[[], None], over: Callable[[], bool] = lambda: False
    ) -> None:
        """Run ``fn`` after ``seconds``, or as soon as ``over()`` (the fault has ended by itself)."""
        key = next(self._keys)
        self._undo[key] = fn

        async def undo_later() -> None:
            with anyio.move_on_after(seconds):
                while not over():
                    await anyio.sleep(0.01)
            if (f := self._undo.pop(key, None)) is not None:
                f()

        assert self._tg is not None
        self._tg.start_soon(undo_later)

    def _window(self, kind: str) -> Window:
        w = Window(kind, time.monotonic_ns())
        self.windows.append(w)
        return w

    @staticmethod
    def _close(w: Window) -> None:
        if w.end is None:
            w.end = time.monotonic_ns()

    def _kill_safe(self) -> bool:
        """A worker signal now cannot make a fast close: no handshake in progress at a GREEN
        simulator, and every session there older than its fast-close window."""
        if self.m.worker_pid is None:
            return False
        now = time.monotonic()
        for s in self.sim.sessions:
            if s.handshaken_at is None and self.sim.green:
                return False
            if s.handshaken_at is not None and now - s.handshaken_at <= FAST_CLOSE_WINDOW + 0.1:
                return False
        return True

    async def _our_worker(self, kind: str) -> int | None:
        """The current worker once it is safe to signal (None: no such moment within 3 s)."""
        try:
            await poll_until(self._kill_safe, 3.0, "a worker safe to signal")
        except TimeoutError:
            self.skipped[f"{kind}: no safe moment"] += 1
            return None
        pid = self.m.worker_pid
        assert pid is not None
        self.ledger.see(pid)
        try:  # never signal what is not provably ours: our child, with our label
            p = psutil.Process(pid)
            ours = p.ppid() == os.getpid() and worker_label(HOST, self.sim.port, CID) in p.cmdline()
        except psutil.Error:  # exited (a zombie until the manager reaps it): nothing to signal
            self.skipped[f"{kind}: worker exiting"] += 1
            return None
        assert ours, p
        return pid

    async def inject(self, kind: str) -> None:
        sim, rng = self.sim, self.rng
        if kind in ("sigkill", "id_hold", "sigstop"):
            if kind == "id_hold":
                hold = rng.uniform(0.5, 1.5)
                sim.client_id_hold(hold)
                self._hold_gen += 1
                gen = self._hold_gen
                self._later(hold + 0.5, lambda: self._hold_off(gen))
                self._close_after(self._window(kind), hold + 0.5)
            if (pid := await self._our_worker(kind)) is None:
                return
            if kind == "sigstop":
                created = self.ledger.seen[pid][0]
                assert created is not None
                os.kill(pid, signal.SIGSTOP)
                w = self._window(kind)
                self._later(
                    rng.uniform(0.2, 2.0),
                    lambda: self._resume(pid, created, w),
                    lambda: self._gone(pid, created),
                )
            else:
                os.kill(pid, signal.SIGKILL)
        elif kind == "drop_all":
            sim.drop_all()
        elif kind == "down_for":
            seconds = rng.uniform(0.3, 1.5)
            sim.down_for(seconds)
            self._close_after(self._window(kind), seconds)
        elif kind == "red_restart":
            sim.go_red()
            w = self._window(kind)
            self._later(rng.uniform(0.5, 2.5), lambda: self._back(w), lambda: sim.green)
        elif kind in ("lost_1101", "lost_1102"):
            sim.connectivity_lost()
            w = self._window(kind)
            self._later(rng.uniform(0.3, 2.0), lambda: self._restored(w, kind == "lost_1101"))
        elif kind == "farm_flap":
            sim.farm_flap()
        else:  # pragma: no cover
            raise AssertionError(kind)
        self.counts[kind] += 1

    def _close_after(self, w: Window, seconds: float) -> None:
        self._later(seconds, lambda: self._close(w))

    @staticmethod
    def _gone(pid: int, created: float) -> bool:
        try:
            p = psutil.Process(pid)
            return p.create_time() != created or p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    def _resume(self, pid: int, created: float, w: Window) -> None:
        if not self._gone(pid, created):
            os.kill(pid, signal.SIGCONT)
        self._close(w)

    def _hold_off(self, gen: int) -> None:
        if gen == self._hold_gen:  # a later id_hold keeps it on for its own time
            self.sim.client_id_hold(None)

    def _back(self, w: Window) -> None:
        if self.sim.red:
            self.sim.restart()
        self._close(w)

    def _restored(self, w: Window, data_lost: bool) -> None:
        self.sim.connectivity_restored(data_lost)
        self._close(w)


async def watch_workers(m: ConnectionManager, ledger: WorkerLedger, handshake_ids: set[object]) -> None:
    """Record the worker of every state change (each spawn becomes ready through one) and the
    client id of every handshake."""
    async for item in m.subscribe():
        if isinstance(item, StateChange):
            ledger.see(m.worker_pid)
            if item.event == "handshake_ok" and m.last_handshake is not None:
                handshake_ids.add(m.last_handshake.get("client_id"))


def outages(history: list[Transition]) -> list[tuple[int, int]]:
    """(left CONNECTED, back in CONNECTED) pairs, in core ns."""
    out, left = [], None
    for t in history:
        if t.source == State.CONNECTED and t.dest != State.CONNECTED:
            left = t.at_ns
        elif t.dest == State.CONNECTED and t.source != State.CONNECTED and left is not None:
            out.append((left, t.at_ns))
            left = None
    return out


def recovery(outage: tuple[int, int], windows: list[Window]) -> float:
    """Seconds from the later of leaving CONNECTED and the end of the last fault that kept the
    Gateway out of reach, to CONNECTED again."""
    left, back = outage
    start = max([left] + [w.end for w in windows if w.end is not None and w.start <= back and w.end <= back])
    return max(0.0, (back - start) / 1e9)


async def test_soak_random_faults_with_24_callers(
    anyio_backend: str,
    tmp_path: Path,
    soak_seed: int,
    soak_seconds: float,
    soak_report: list[list[str]],
    worker_ledger: WorkerLedger,
) -> None:
    rng = random.Random(f"{soak_seed}:{anyio_backend}")
    fds_before = open_fds()
    t_start, t0_ns = time.monotonic(), time.monotonic_ns()
    most_sessions = 0
    calls = Calls()
    handshake_ids: set[object] = set()
    # The seed goes out first: a run that fails before its figures still names it.
    figures = [f"soak [{anyio_backend}] seed {soak_seed} (IBGW_SOAK_SEED={soak_seed} replays it)"]
    soak_report.append(figures)

    def on_sim_event(ev: SimEvent) -> None:
        nonlocal most_sessions
        if ev.kind == "handshake":
            live = [s for s in sim.sessions if s.handshaken and s.client_id == CID]
            most_sessions = max(most_sessions, len(live))

    sim = GatewaySim(faults=Faults(red_on_fast_close=FAST_CLOSE_WINDOW), on_event=on_sim_event)
    state_dir = tmp_path / "state"
    async with sim:
        settings = fast_settings(state_dir, sim.port, CID)
        async with ConnectionManager(settings) as m:
            await m.wait_connected(30)
            handshake_ids.add((m.last_handshake or {}).get("client_id"))  # before the watch began
            faulter = Faulter(m, sim, rng, worker_ledger)
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch_workers, m, worker_ledger, handshake_ids)
                for _ in range(CALLERS):
                    tg.start_soon(caller, m, calls, random.Random(rng.random()), stop)
                await faulter.run(soak_seconds)
                healed = time.monotonic_ns()
                await m.wait_connected(30)
                # The healed session serves every kind of request before the callers stop.
                before = Counter(calls.ok_by_command)
                await poll_until(
                    lambda: all(calls.ok_by_command[c] > before[c] for c in COMMANDS),
                    30,
                    "each command served",
                )
                stop.set()
                await poll_until(lambda: len(calls.outcome) == calls.started, 60, "every call's outcome")
                tg.cancel_scope.cancel()
            history, metrics = m.history, m.metrics()
            await assert_session_invariants(m, sim, CID)
        await assert_clean_exit(m, sim)
        closes = list(sim.client_closes)
    for c in closes:
        worker_ledger.see(c.pid)
    fds_after = open_fds()
    elapsed = time.monotonic() - t_start

    # -- figures, reported before anything is asserted ----------------------------------------
    def rel(ns: int | None) -> str:
        return "-" if ns is None else f"{(ns - t0_ns) / 1e9:.3f}"

    probe_ns = int(settings.probe_timeout * 1e9)
    silences = [w for w in faulter.windows if w.kind in SILENCING]
    probe_failures = [t for t in history if t.event in ("probe_timeout", "probe_failed")]
    unexplained = [
        f"{t.event} at {rel(t.at_ns)} s ({t.source} -> {t.dest})"
        for t in probe_failures
        if not any(w.start <= t.at_ns <= (w.end or healed) + probe_ns for w in silences)
    ]
    outs = outages(history)
    recoveries = [recovery(o, faulter.windows) for o in outs]
    back = [t.at_ns for t in history if t.dest == State.CONNECTED and t.at_ns >= healed]
    errors = {k: v for k, v in sorted(calls.by_kind.items()) if k != "ok"}
    figures[0] += f": {elapsed:.1f} s, faults for {soak_seconds:g} s, {CALLERS} callers"
    figures.extend(
        [
            f"  requests {calls.started} {dict(sorted(calls.by_command.items()))}: "
            f"ok {calls.by_kind['ok']}, errors {errors} (WorkerDied within {QUICK * 1000:g} ms: "
            f"{calls.quick_deaths}); slowest outcome {calls.slowest:.2f} s",
            f"  faults {faulter.counts.total()}: {dict(sorted(faulter.counts.items()))}"
            + (f"; skipped {dict(faulter.skipped)}" if faulter.skipped else ""),
            f"  probes sent {metrics['probes_sent']}, failed {len(probe_failures)} "
            f"(without a silencing fault: {len(unexplained)}); sessions {metrics['sessions']}, "
            f"workers spawned {metrics['workers_spawned']}",
            f"  outages {len(outs)}; recovery once the fault was over: max {max(recoveries, default=0):.2f} s, "
            f"median {statistics.median(recoveries or [0]):.2f} s; healed -> CONNECTED "
            f"{(back[0] - healed) / 1e9 if back else 0:.2f} s",
            f"  sim: handshakes {sim.counters.handshakes}, 326 sent {sim.counters.sent_326}, client closes "
            f"{len(closes)} (by a live process {sum(c.peer_alive is True for c in closes)}, pid unknown "
            f"{sum(c.peer_alive is None for c in closes)}), fast closes {sim.counters.fast_closes}, "
            f"most sessions at once {most_sessions}; fds {fds_before} -> {fds_after}",
        ]
    )

    # -- invariants -----------------------------------------------------------------------------
    assert calls.problems == [], calls.problems[:20]
    assert len(calls.outcome) == calls.started
    assert sum(calls.by_kind.values()) == calls.started
    # The manager's own counts agree: every answer we saw as data it counted once.
    assert metrics["requests_ok"] == calls.by_kind["ok"]
    assert metrics["requests_failed"] + metrics["requests_timed_out"] <= calls.started - calls.by_kind["ok"]
    assert unexplained == [], (
        unexplained,
        [f"{w.kind} {rel(w.start)}..{rel(w.end)} s" for w in faulter.windows],
    )
    assert sim.client_ids_seen == {CID}
    assert handshake_ids == {CID}
    assert worker_ledger.labels() == {worker_label(HOST, sim.port, CID)}
    assert most_sessions == 1
    assert all(c.client_id in (CID, None) for c in closes)
    assert [c for c in closes if c.peer_alive is True] == []
    assert sim.counters.fast_closes == 0
    assert worker_ledger.survivors() == []
    assert not lock_path(state_dir, HOST, sim.port, CID).exists()
    assert [s["path"] for s in read_all(state_dir) if s["manager_alive"] or not s["stopped"]] == []
    assert sorted(p.name for p in state_dir.iterdir() if "lock" in p.name) == []
    # <=, not ==: an fd of the previous test (a closing pipe or socket) may still be open at the start
    assert fds_after <= fds_before
