"""`ibgw demo`: a scripted day at the Gateway, against the built-in simulator, in under a minute.

Everything is real except the Gateway: a real `ConnectionManager` (anyio), real worker processes
running the real `ib_async`, real TCP on loopback to `gatewaysim`, real signals. Each step injects
one fault and then waits — with a deadline — for the manager's history (or the simulator's state)
to show the expected outcome; nothing is synchronised by sleeping. The exit status is 0 only if
every step ended as scripted and the day's invariants held (no disconnect issued; one client id).
"""

from __future__ import annotations

import math
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.abc

from fsm import ConnectionManager, Notice, Reason, Settings, State, StateChange, Subscription, Transition
from fsm.cli.changes import describe
from fsm.cli.demo import waits
from fsm.cli.demo.children import TraderProcess, end_all
from fsm.cli.demo.record import Check, DayReport, Kind, Phase, Recovery, Status, Step, TimelineRow
from fsm.cli.demo.views import DemoView
from fsm.cli.demo.waits import Pulse, StepFailed
from fsm.hosts import normalise_address
from fsm.lockfile import lock_path, read_lock
from fsm.pids import ProcessId, pid_alive, process_id
from gatewaysim import GatewaySim, SimEvent

DEMO_CLIENT_ID = 17

# Short timers so the day fits in under a minute; the handshake budget stays the real 30 s (the
# RED step never waits it out: the operator's restart ends the hanging handshake).
DEMO_TIMERS: dict[str, float] = {
    "probe_interval": 0.5,
    "probe_timeout": 0.4,
    "backoff_initial": 0.25,
    "backoff_multiplier": 1.6,
    "backoff_jitter": 0.2,
    "backoff_max": 1.0,
    "stable_period": 3.0,
    "min_session": 1.0,
    "retire_grace": 1.0,
    "kill_grace": 1.0,
    "spawn_timeout": 20.0,
    "request_timeout": 10.0,
}


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long each kind of wait may take (seconds). Generous: a loaded 2-core CI box spawns
    Python slowly."""

    spawn_and_connect: float = 40.0
    detect: float = 10.0


# The simulator's events worth a line of the story (the rest only wake the waits).
SIM_KINDS = frozenset(
    {
        "RED",
        "restart",
        "handshake",
        "326",
        "client_close",
        "server_close",
        "hold",
        "hold_expired",
        "hello_ignored",
        "connectivity",
        "down",
        "up",
        "drop_all",
    }
)


class Story:
    """The demo's clock and its narrator: every line goes to the view, every event wakes the
    waits."""

    def __init__(self, view: DemoView) -> None:
        self.view = view
        self.t0 = time.monotonic_ns()
        self.pulse = Pulse()

    def t(self, ns: int | None = None) -> float:
        """Seconds since the demo started (the manager's and the simulator's clock too)."""
        return ((time.monotonic_ns() if ns is None else ns) - self.t0) / 1e9

    def say(self, text: str, kind: Kind, *, at: float | None = None) -> None:
        self.view.line(self.t() if at is None else at, text, kind)

    def sim_event(self, ev: SimEvent) -> None:
        if ev.kind in SIM_KINDS:
            self.say(f"gateway: {ev.kind} {ev.detail}", Kind.SIM, at=self.t(round(ev.at * 1e9)))
        self.pulse.wake()


class Day:
    """The scripted day: its steps in order, each a method returning what it found."""

    def __init__(
        self,
        story: Story,
        sim: GatewaySim,
        settings: Settings,
        tg: anyio.abc.TaskGroup,
        *,
        pace: float,
        deadlines: Deadlines,
    ) -> None:
        self.story = story
        self.view = story.view
        self.sim = sim
        self.settings = settings
        self.pace = pace
        self.deadlines = deadlines
        self._tg = tg
        self._stack = AsyncExitStack()  # the running manager, until it shuts down
        self.managers: list[ConnectionManager] = []  # the trader's, then the restarted trader's
        self.notices: list[Notice] = []
        self.recoveries: list[Recovery] = []
        self.checks: tuple[Check, ...] = ()
        self.wall = 0.0
        self._trader: TraderProcess | None = None
        self._stale_worker: ProcessId | None = None  # what the killed trader left behind
        self._red_at_ns = 0  # when step 2 saw DEGRADED_RED (step 3 counts the outage from it)
        self._disconnects = 0
        self._client_ids: list[int] = []
        self._youngest: float | None = None
        script: tuple[tuple[Step, Callable[[], Awaitable[str]]], ...] = (
            (
                Step("connect", "start the manager; IDLE -> SPAWNING -> HANDSHAKING -> CONNECTED"),
                self.connect,
            ),
            (
                Step(
                    "Gateway API goes RED",
                    "the API layer stops answering while TCP still accepts; the probe must notice",
                ),
                self.red,
            ),
            (
                Step(
                    "operator restart",
                    "restart the Gateway: the hanging handshake ends; reconnect with the same client id",
                ),
                self.restart,
            ),
            (
                Step("worker crash", "SIGKILL our worker; respawn; reconnect with the same client id"),
                self.crash,
            ),
            (
                Step(
                    "stale worker holding the client id",
                    "a trader dies hard and leaves its worker holding the id; the restarted trader's "
                    "manager reaps it; 326 -> backoff -> same id",
                ),
                self.zombie,
            ),
            (
                Step("nightly 1100 -> 1102", "upstream connectivity lost and restored; session kept"),
                self.nightly,
            ),
            (Step("clean shutdown", "retire the worker by process exit; never disconnect"), self.shutdown),
        )
        self._steps = tuple(run for _, run in script)
        self.phases = tuple(Phase(n, len(script), step) for n, (step, _) in enumerate(script, 1))

    # ------------------------------------------------------------------------------ playing
    @property
    def manager(self) -> ConnectionManager:
        """The trader's current manager."""
        if not self.managers:
            raise StepFailed("no manager has been started")
        return self.managers[-1]

    @property
    def ok(self) -> bool:
        return all(p.status == Status.OK for p in self.phases) and all(c.ok for c in self.checks)

    async def play(self) -> None:
        """Every step in order; after the first failure the rest are skipped. Whatever happens,
        the manager shuts down and no child process of the demo is left."""
        failed = False
        try:
            try:
                for phase, step in zip(self.phases, self._steps, strict=True):
                    if failed:
                        phase.status = Status.SKIPPED
                        continue
                    phase.status, phase.started = Status.RUNNING, self.story.t()
                    self.view.phase(phase)
                    try:
                        phase.detail = await step()
                        phase.status = Status.OK
                    except StepFailed as exc:
                        phase.status, phase.detail, failed = Status.FAILED, str(exc), True
                    except Exception as exc:  # a bug or an unexpected error: report, clean up
                        phase.status, failed = Status.FAILED, True
                        phase.detail = f"{type(exc).__name__}: {exc}"
                    phase.ended = self.story.t()
                    self.view.phase(phase)
                    if self.pace and not failed and phase.number < phase.of:
                        await anyio.sleep(self.pace)  # a beat for the viewer; nothing waits on it
            finally:
                # Shuts down whichever manager is still running (its __aexit__ shields itself;
                # a scope opened here would break the nesting of the manager's task group).
                await self._stack.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await end_all(self._trader, self._stale_worker)
        if not failed:
            await self._settle_sim()

    async def _start_manager(self) -> ConnectionManager:
        m = ConnectionManager(self.settings)
        self._tg.start_soon(self._follow, m.subscribe())  # before start: the first transitions too
        self.managers.append(m)
        self.view.watch(m)
        await self._stack.enter_async_context(m)
        return m

    async def _follow(self, sub: Subscription) -> None:
        """Tell every change the manager publishes and wake the step that waits for it."""
        async for item in sub:
            at = self.story.t(item.at_ns)
            if isinstance(item, StateChange):
                self.story.say(describe(item), Kind.TRANSITION, at=at)
            else:
                self.notices.append(item)
                self.story.say(describe(item), Kind.NOTICE, at=at)
            self.story.pulse.wake()
        self.story.pulse.wake()

    def _mark(self) -> int:
        return len(self.manager.history)

    async def _transition(
        self, pred: Callable[[Transition], bool], *, since: int, timeout: float, what: str
    ) -> Transition:
        return await waits.transition(
            self.manager, self.story.pulse, pred, since=since, timeout=timeout, what=what
        )

    async def _connected(
        self, since: int, *, timeout: float | None = None, what: str = "CONNECTED"
    ) -> Transition:
        return await self._transition(
            lambda t: t.dest == State.CONNECTED,
            since=since,
            timeout=self.deadlines.spawn_and_connect if timeout is None else timeout,
            what=what,
        )

    # -------------------------------------------------------------------------------- steps
    async def connect(self) -> str:
        m = await self._start_manager()
        tr = await self._connected(0)
        took = self.story.t(tr.at_ns) - self.story.t(m.history[0].at_ns)
        pos = await m.request("positions")
        return (
            f"CONNECTED in {took:.2f} s (worker pid {m.worker_pid}); "
            f"positions: {len(pos.get('positions', []))} rows"
        )

    async def red(self) -> str:
        since = self._mark()
        t_fault = self.story.t()
        self.story.say("gateway API layer goes RED (TCP still accepts; nothing answers)", Kind.ACTION)
        self.sim.go_red()
        red = await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.probe_failed,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (probe_failed)",
        )
        detected = self.story.t(red.at_ns) - t_fault
        self._red_at_ns = red.at_ns
        since = self._mark()
        hs = await self._transition(
            lambda t: t.dest == State.HANDSHAKING,
            since=since,
            timeout=self.deadlines.spawn_and_connect,
            what="a retry reaching the RED Gateway (HANDSHAKING)",
        )
        # The Gateway accepted the TCP connection and read the hello, and will never answer it.
        await waits.sim_event(
            self.sim, "hello_ignored", after=hs.at_ns / 1e9 - 0.001, timeout=self.deadlines.detect
        )
        self.recoveries.append(
            Recovery(
                "Gateway RED detected by the probe",
                detected,
                f"probe every {DEMO_TIMERS['probe_interval']:g} s, "
                f"timeout {DEMO_TIMERS['probe_timeout']:g} s",
            )
        )
        return (
            f"probe failed {detected:.2f} s after the Gateway went RED; the retry's "
            f"handshake hangs (TCP accepted, hello read, never answered)"
        )

    async def restart(self) -> str:
        since = self._mark()
        t_restart = self.story.t()
        self.story.say("operator restarts the Gateway (in real life: with 2FA)", Kind.ACTION)
        self.sim.restart()
        ended = await self._transition(
            lambda t: t.source == State.HANDSHAKING and t.dest == State.DEGRADED_RED,
            since=since,
            timeout=self.deadlines.detect,
            what="the hanging handshake to end",
        )
        back = await self._connected(since)
        after = self.story.t(back.at_ns) - t_restart
        outage = (back.at_ns - self._red_at_ns) / 1e9
        self.recoveries.append(
            Recovery(
                "Gateway RED -> operator restart -> CONNECTED",
                after,
                f"counted from the restart; outage {outage:.2f} s in all",
            )
        )
        return (
            f"handshake ended by the restart ({ended.reason}); CONNECTED {after:.2f} s after "
            f"the restart, same client id"
        )

    async def crash(self) -> str:
        m = self.manager
        await m.request("positions")  # the trader is working when the worker dies
        await self._let_session_age()
        pid = m.worker_pid
        if pid is None:
            raise StepFailed("no worker to kill")
        since = self._mark()
        t_kill = self.story.t()
        self.story.say(f"SIGKILL our worker pid {pid}", Kind.ACTION)
        os.kill(pid, signal.SIGKILL)
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.worker_exited,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (worker_exited)",
        )
        back = await self._connected(since)
        took = self.story.t(back.at_ns) - t_kill
        if m.worker_pid == pid:
            raise StepFailed("CONNECTED with the killed worker's pid?")
        self.recoveries.append(
            Recovery("worker SIGKILL -> CONNECTED", took, f"respawned as pid {m.worker_pid}")
        )
        return f"detected at once, respawned as pid {m.worker_pid}, CONNECTED {took:.2f} s after the kill"

    async def zombie(self) -> str:
        from fsm.cli.doctor import Level, diagnose

        s = self.settings
        say = self.story.say
        # 1. The trader is restarted (a deploy): a clean stop, the worker retired by process exit.
        say("the trader stops for a redeploy (clean shutdown)", Kind.ACTION)
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        # 2. Its next run is a separate process that connects, then dies hard with its worker hung.
        trader = self._trader = await TraderProcess.start(s)
        say(f"the trader starts again as process {trader.pid} (`ibgw run`, same client id)", Kind.ACTION)
        self._tg.start_soon(trader.relay, lambda text: say(f"[trader pid {trader.pid}] {text}", Kind.CHILD))
        with anyio.move_on_after(self.deadlines.spawn_and_connect) as scope:
            await trader.connected.wait()
        if scope.cancelled_caught:
            raise StepFailed(f"the trader process {trader.pid} did not reach CONNECTED")
        rec = read_lock(lock_path(s.state_dir, normalise_address(s.host), s.port, s.client_id))
        if rec is None or rec.worker is None or rec.manager_pid != trader.pid:
            raise StepFailed(f"no lock record naming the trader's worker: {rec}")
        self._stale_worker = rec.worker
        stale = rec.worker.pid
        # The trader runs for a while before it dies (see _let_session_age).
        await self._let_session_age()
        say(f"its worker pid {stale} hangs (SIGSTOP) and the trader process is killed (SIGKILL)", Kind.ACTION)
        os.kill(stale, signal.SIGSTOP)
        await trader.kill()
        await waits.sim_state(
            self.sim,
            lambda g: any(x.client_id == s.client_id and x.handshaken for x in g.sessions),
            timeout=self.deadlines.detect,
            what=f"a session for client id {s.client_id}",
        )
        say(f"stale worker {stale} still holds client id {s.client_id} at the Gateway", Kind.ACTION)
        # What `ibgw doctor` (passive: kernel socket table and state dir only) sees right now.
        report = await anyio.to_thread.run_sync(diagnose, s.port, s.state_dir)
        for f in report.findings:
            if f.level == Level.ATTENTION:
                say(f"ibgw doctor: {f.message}", Kind.DOCTOR)
        # The Gateway also keeps the id reserved for a moment after that socket closes (the
        # Gateway-side CLOSE_WAIT behaviour), until we let it go below.
        self.sim.client_id_hold(math.inf)
        # 3. The trader restarts: its manager finds the dead manager's worker in the lock file.
        t_start = self.story.t()
        say("the trader restarts: a new manager for the same client id", Kind.ACTION)
        m = await self._start_manager()
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.client_id_in_use,
            since=0,
            timeout=self.deadlines.spawn_and_connect,
            what="DEGRADED_RED (client_id_in_use, 326)",
        )
        say("the Gateway lets go of the client id", Kind.ACTION)
        self.sim.client_id_hold(None)
        back = await self._connected(0)
        took = self.story.t(back.at_ns) - t_start
        if int(m.metrics().get("zombies_reaped", 0)) < 1:
            raise StepFailed("the stale worker was not reaped by the manager")
        if pid_alive(stale, rec.worker.create_time):
            raise StepFailed(f"stale worker {stale} is still alive")
        n326 = self.sim.counters.sent_326
        self.recoveries.append(
            Recovery(
                "stale worker -> reaped -> 326 -> CONNECTED",
                took,
                f"{n326} x 326, same client id {s.client_id}",
            )
        )
        return (
            f"stale worker {stale} proven ours (lock file, command line, start time, TCP to "
            f"the port) and ended; {n326} x 326 from the Gateway; CONNECTED {took:.2f} s "
            f"after the restart with client id {s.client_id}"
        )

    async def nightly(self) -> str:
        m = self.manager
        pid = m.worker_pid
        since = self._mark()
        t_lost = self.story.t()
        self.story.say("nightly reset: the Gateway loses IB's servers (1100)", Kind.ACTION)
        self.sim.connectivity_lost()
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.connectivity_lost,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (connectivity_lost)",
        )
        # Farm notices arrive during the night too: recorded and published, never a loss.
        n_since = len(self.notices)
        self.story.say("market data farm flaps (2103, then 2104)", Kind.ACTION)
        self.sim.farm_flap()
        await waits.notice(
            self.notices,
            self.story.pulse,
            lambda n: n.kind == "farm" and n.code == 2104,
            since=n_since,
            timeout=self.deadlines.detect,
            what="farm notice 2104",
        )
        if m.state != State.DEGRADED_RED or m.worker_pid != pid:
            raise StepFailed(f"a farm notice moved the manager ({m.state}, worker {m.worker_pid})")
        self.story.say("connectivity restored, data maintained (1102)", Kind.ACTION)
        t_restored = self.story.t()
        self.sim.connectivity_restored(False)
        back = await self._connected(since, timeout=self.deadlines.detect, what="CONNECTED after 1102")
        if m.worker_pid != pid:
            raise StepFailed(f"the worker was replaced ({pid} -> {m.worker_pid}); 1100 must keep it")
        took = self.story.t(back.at_ns) - t_restored
        self.recoveries.append(
            Recovery(
                "nightly 1100 -> 1102 -> CONNECTED",
                took,
                f"counted from the 1102; session kept, worker {pid} not replaced",
            )
        )
        return (
            f"session kept through {self.story.t(back.at_ns) - t_lost:.2f} s of 1100 and a farm "
            f"flap (same worker pid {pid}); CONNECTED {took * 1000:.0f} ms after 1102"
        )

    async def shutdown(self) -> str:
        m = self.manager
        pid = m.worker_pid
        worker = process_id(pid) if pid is not None else None
        t_stop = self.story.t()
        self.story.say("the trader shuts down", Kind.ACTION)
        await self._stack.aclose()
        if m.state != State.IDLE:
            raise StepFailed(f"state after shutdown is {m.state}")
        if worker is not None and pid_alive(worker.pid, worker.create_time):
            raise StepFailed(f"worker {pid} is still alive after shutdown")
        await waits.sim_state(
            self.sim, lambda g: not g.sessions, timeout=self.deadlines.detect, what="no session"
        )
        return f"IDLE; worker {pid} exited on stdin EOF in {self.story.t() - t_stop:.2f} s; no session left"

    async def _let_session_age(self) -> None:
        """Scenario pacing before a crash we stage ourselves, not synchronisation: let the live
        session reach min_session first. Ending a session just after its handshake is the fast
        close that turns a real Gateway RED, and the demo must not stage one either."""
        age = self._session_age(self.settings.client_id)
        if age is not None and age < self.settings.min_session:
            await anyio.sleep(self.settings.min_session - age)

    def _session_age(self, client_id: int) -> float | None:
        """Seconds since the handshake of the Gateway's live session for this client id."""
        for x in self.sim.sessions:
            if x.client_id == client_id and x.handshaken_at is not None:
                return time.monotonic() - x.handshaken_at
        return None

    async def _settle_sim(self) -> None:
        """Let the simulator finish classifying the last closes (it asks psutil after EOF)."""
        with anyio.move_on_after(5):
            await self.sim.wait_until(lambda g: len(g.client_closes) >= g.counters.client_closes, 5)

    # ------------------------------------------------------------------------------- report
    def finish(self) -> None:
        """Judge the day's invariants from what the Gateway saw, and stop the clock."""
        sim = self.sim
        self._disconnects = sum(1 for c in sim.client_closes if c.peer_alive)
        self._client_ids = sorted(sim.client_ids_seen)
        ages = [c.age for c in sim.client_closes if c.handshaken]
        self._youngest = min(ages) if ages else None
        floor = DEMO_TIMERS["min_session"] - 0.05  # the sim dates a close when it reads the EOF
        self.checks = (
            Check("disconnects issued: 0 (no live process ever closed its session)", self._disconnects == 0),
            Check(f"client ids used: exactly one ({DEMO_CLIENT_ID})", self._client_ids == [DEMO_CLIENT_ID]),
            Check(
                "no fast close: every session lived at least min_session",
                self._youngest is None or self._youngest >= floor,
            ),
        )
        self.wall = self.story.t()

    def report(self) -> DayReport:
        return DayReport(self.phases, self._timeline(), self._summary(), self.ok)

    def _timeline(self) -> tuple[TimelineRow, ...]:
        rows = [
            TimelineRow(
                self.story.t(tr.at_ns),
                f"#{i}",
                str(tr.source),
                tr.event,
                str(tr.dest),
                str(tr.reason) if tr.reason else "-",
            )
            for i, m in enumerate(self.managers, 1)
            for tr in m.history
        ]
        return tuple(sorted(rows, key=lambda r: r.t))

    def _summary(self) -> tuple[str, ...]:
        sim, c = self.sim, self.sim.counters
        ours = sum(int(m.metrics().get("sessions", 0)) for m in self.managers)
        rest = c.handshakes - ours
        reaped = sum(int(m.metrics().get("zombies_reaped", 0)) for m in self.managers)
        ids = self._client_ids
        out = [
            f"wall time: {self.wall:.1f} s",
            f"sessions: {c.handshakes} handshake(s) at the Gateway: {ours} by the in-process managers"
            + (f", {rest} by the trader process killed in step 5" if rest else ""),
            "recoveries:",
            *(f"  {r.what}: {r.seconds:.2f} s ({r.how})" for r in self.recoveries),
            f"326s sent by the Gateway: {c.sent_326}; stale workers reaped: {reaped}; "
            f"Gateway RED episodes: {c.red_episodes}",
            f"disconnects issued: {self._disconnects} (the Gateway saw {len(sim.client_closes)} "
            f"closes, {len(sim.client_closes) - self._disconnects} by process exit)",
        ]
        if self._youngest is not None:
            out.append(
                f"youngest session at its close: {self._youngest:.2f} s after its handshake "
                f"(min_session {DEMO_TIMERS['min_session']:g} s: no fast close)"
            )
        one = "exactly one" if len(ids) == 1 else f"{len(ids)}, NOT one"
        out.append(f"client ids used: {one} ({', '.join(map(str, ids))})")
        out.append(
            "verdict: every step ended as scripted"
            if self.ok
            else "verdict: FAILED — "
            + "; ".join(
                [f"step {p.number} {p.title}: {p.status}" for p in self.phases if p.status != Status.OK]
                + [chk.text for chk in self.checks if not chk.ok]
            )
        )
        return tuple(out)


async def play(view: DemoView, *, pace: float, deadlines: Deadlines) -> bool:
    """Serve the simulator, play the day against it, show the report; True if it all held."""
    story = Story(view)
    sim = GatewaySim(on_event=story.sim_event)
    try:
        with tempfile.TemporaryDirectory(prefix="ibgw-demo-") as state_dir:
            async with anyio.create_task_group() as tg:
                await tg.start(sim.serve)
                settings = Settings(
                    host="127.0.0.1",
                    port=sim.port,
                    client_id=DEMO_CLIENT_ID,
                    state_dir=Path(state_dir),
                    maintenance=(),  # the scripted day plays the same at IB's reset hour
                ).replace(**DEMO_TIMERS)
                day = Day(story, sim, settings, tg, pace=pace, deadlines=deadlines)
                view.start(settings, sim, tg)
                try:
                    await day.play()
                finally:
                    day.finish()
                    tg.cancel_scope.cancel()
    finally:
        view.stop()  # give the terminal back, whatever happened
    report = day.report()
    view.final(report)
    return report.ok
