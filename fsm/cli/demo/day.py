"""`ibgw demo`: a scripted day at the Gateway, against the built-in simulator, in under a minute.

Everything is real except the Gateway: a real `ConnectionManager` (anyio), real worker processes
running the real `ib_async`, real TCP on loopback to `gatewaysim`, real signals. Each step injects
one fault and then waits — with a deadline — for the manager's history (or the simulator's state)
to show the expected outcome; nothing is synchronised by sleeping. The trader reads a quote
stream from the operator's restart to the redeploy and places orders into the faults
(`fsm.cli.demo.trading`). The
exit status is 0 only if every step ended as scripted and the day's invariants held (no
disconnect issued; one client id; every Gap followed by prices; no fill delivered twice).
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

from fsm import ConnectionManager, Gap, Notice, Reason, Settings, State, StateChange, Subscription, Transition
from fsm.cli.changes import describe
from fsm.cli.demo import report, waits
from fsm.cli.demo.children import TraderProcess, end_all
from fsm.cli.demo.record import Check, DayReport, Kind, Phase, Recovery, Status, Step
from fsm.cli.demo.report import GatewayRecord
from fsm.cli.demo.story import Story
from fsm.cli.demo.trading import OrderDesk, Outcome, QuoteTape, span
from fsm.cli.demo.views import DemoView
from fsm.cli.demo.waits import StepFailed
from fsm.hosts import normalise_address
from fsm.lockfile import lock_path, read_lock
from fsm.pids import ProcessId, pid_alive, process_id
from gatewaysim import GatewaySim
from gatewaysim.market import Market, Quotes

DEMO_CLIENT_ID = 17
SYMBOL = "AAPL"
TICK_RATE = 10.0  # the simulator's ticks per second: a Gap closes within a tenth of a second
# The trader's orders: one resting through the Gateway outage (it fills meanwhile), one in flight
# when the worker dies, one whose send is lost with its session.
REST_REF, CRASH_REF, LOST_REF = "demo-rest", "demo-crash", "demo-lost"
NIGHT_PUMPS = 3  # runs of the Gateway's market pump (one per tick) each nightly 1100 lasts

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
    resume: float = 10.0  # quotes, fills and order answers once a session is back


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
        self._red_at_ns = 0  # when the RED step saw DEGRADED_RED (the restart counts the outage from it)
        self.tape = QuoteTape(story, SYMBOL)
        self.desk = OrderDesk(story, SYMBOL)
        self._limit = 0.0  # the resting orders' limit: half the first bid, never reached today
        self.gateway = GatewayRecord.of(sim)  # judged again by finish()
        script: tuple[tuple[Step, Callable[[], Awaitable[str]]], ...] = (
            (
                Step(
                    "connect",
                    "start the manager; IDLE -> SPAWNING -> HANDSHAKING -> CONNECTED; read a quote; "
                    "place a resting order",
                ),
                self.connect,
            ),
            (
                Step(
                    "Gateway API goes RED",
                    "the API layer stops answering while TCP still accepts; the probe must notice; "
                    "the resting order fills at IB meanwhile",
                ),
                self.red,
            ),
            (
                Step(
                    "operator restart",
                    "restart the Gateway: the hanging handshake ends; reconnect with the same client id; "
                    "the fill from the outage delivered once; a quote stream for the rest of the day",
                ),
                self.restart,
            ),
            (
                Step(
                    "worker crash with an order in flight",
                    "SIGKILL our worker the instant the Gateway takes an order; respawn; the order "
                    "resolved as placed, exactly one at the broker",
                ),
                self.crash,
            ),
            (
                Step(
                    "order send lost",
                    "the session drops with the order and the order is lost: OrderNotPlaced; a retry is safe",
                ),
                self.lost_send,
            ),
            (
                Step(
                    "nightly 1100 -> 1101, 1100 -> 1102",
                    "session kept; 1101: data lost, the stream re-subscribed; 1102: nothing re-sent",
                ),
                self.nightly,
            ),
            (
                Step(
                    "stale worker holding the client id",
                    "the trader is redeployed; its next run dies hard and leaves its worker holding the "
                    "id; the restarted trader's manager reaps it; 326 -> backoff -> same id",
                ),
                self.zombie,
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
        self._tg.start_soon(self.desk.collect, m, len(self.managers))
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
        self.story.say(
            "the trader's manager runs with readonly=False: readonly is the default, and the demo "
            "turns it off against the simulator",
            Kind.ACTION,
        )
        m = await self._start_manager()
        tr = await self._connected(0)
        took = self.story.t(tr.at_ns) - self.story.t(m.history[0].at_ns)
        pos = await m.request("positions")
        q = await self.tape.one_quote(m, timeout=self.deadlines.resume)
        self._limit = round(0.5 * (q.bid or q.last or 1.0), 2)
        self.story.say(
            f"the trader places a BUY 10 {SYMBOL} LMT {self._limit:.2f} (half the bid: it rests)", Kind.ACTION
        )
        st = await self.desk.place(m, REST_REF, self._limit, timeout=self.deadlines.resume)
        return (
            f"CONNECTED in {took:.2f} s (worker pid {m.worker_pid}); "
            f"positions: {len(pos.get('positions', []))} rows; {REST_REF!r} {st.status}"
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
        cid = self.settings.client_id
        await waits.sim_state(
            self.sim,
            lambda g: g.session_of(cid) is None,
            timeout=self.deadlines.detect,
            what=f"no session of client id {cid}",
        )
        self.story.say(
            f"meanwhile the market reaches {REST_REF!r} at IB: it fills while no session of client id "
            f"{cid} is up to hear it",
            Kind.ACTION,
        )
        self.sim.fill_order(REST_REF)
        return (
            f"probe failed {detected:.2f} s after the Gateway went RED; the retry's "
            f"handshake hangs (TCP accepted, hello read, never answered); {REST_REF!r} filled at IB "
            f"meanwhile, unheard"
        )

    async def restart(self) -> str:
        m = self.manager
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
        fill = await self.desk.fill_delivered(REST_REF, timeout=self.deadlines.resume)
        if int(m.metrics().get("fills_recovered", 0)) < 1:
            raise StepFailed(f"the fill of {REST_REF!r} was not counted as recovered by reconciliation")
        # From here on the trader reads quotes until the redeploy.
        self.story.say(
            f'the trader opens m.stream("quotes", symbol="{SYMBOL}") for the rest of the day', Kind.ACTION
        )
        await self._tg.start(self.tape.run, m)
        await self.tape.first_quote(timeout=self.deadlines.resume)
        return (
            f"handshake ended by the restart ({ended.reason}); CONNECTED {after:.2f} s after the restart, "
            f"same client id; the outage's fill ({fill.side} {fill.shares:g} @ {fill.price:.2f}) found by "
            f"reconciliation and delivered once; quotes streaming"
        )

    async def crash(self) -> str:
        m = self.manager
        await m.request("positions")  # the trader is working when the worker dies
        await self._let_session_age()
        pid = m.worker_pid
        if pid is None:
            raise StepFailed("no worker to kill")
        since, gap_n = self._mark(), len(self.tape.gaps) + 1
        killed: list[float] = []

        def kill() -> None:
            killed.append(self.story.t())
            self.story.say(
                f"the Gateway has taken the order: SIGKILL our worker pid {pid}, before any answer",
                Kind.ACTION,
            )
            os.kill(pid, signal.SIGKILL)

        self.story.on_sim_event(lambda ev: ev.kind == "order" and repr(CRASH_REF) in ev.detail, kill)
        self.story.say(
            f"the trader places {CRASH_REF!r}; our worker dies the instant the Gateway takes it", Kind.ACTION
        )
        st = await self.desk.place(
            m, CRASH_REF, self._limit, timeout=self.deadlines.spawn_and_connect, outcome=Outcome.RESOLVED
        )
        if not killed:
            raise StepFailed(f"{CRASH_REF!r} was answered before the worker could be killed")
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.worker_exited,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (worker_exited)",
        )
        back = await self._connected(since)
        took = self.story.t(back.at_ns) - killed[0]
        if m.worker_pid == pid:
            raise StepFailed("CONNECTED with the killed worker's pid?")
        at_broker = self.sim.broker.orders_by_ref(CRASH_REF)
        sent = self.sim.broker.placements[CRASH_REF]
        if len(at_broker) != 1 or at_broker[0].perm_id != st.perm_id or sent != 1:
            raise StepFailed(
                f"{CRASH_REF!r}: {len(at_broker)} order(s) at the broker, sent {sent} time(s), "
                f"perm id {st.perm_id} returned"
            )
        gap = await self._quotes_back(gap_n, Reason.worker_exited)
        self.recoveries.append(
            Recovery("worker SIGKILL -> CONNECTED", took, f"respawned as pid {m.worker_pid}")
        )
        return (
            f"respawned as pid {m.worker_pid}, CONNECTED {took:.2f} s after the kill; place_order returned "
            f"the live order ({st.status}, perm id {st.perm_id}): one at the broker, sent once; quotes "
            f"again after a {span(gap):.2f} s Gap"
        )

    async def lost_send(self) -> str:
        m = self.manager
        since, gap_n = self._mark(), len(self.tape.gaps) + 1
        self.story.say(
            "the Gateway drops the session as it reads the next placeOrder, and the order with it "
            "(drop_on_place=discard)",
            Kind.ACTION,
        )
        self.sim.drop_on_place("discard")
        t_send = self.story.t()
        await self.desk.place_lost(m, LOST_REF, self._limit, timeout=self.deadlines.spawn_and_connect)
        took = self.story.t() - t_send
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.peer_closed,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (peer_closed)",
        )
        if self.sim.broker.orders_by_ref(LOST_REF) or self.sim.broker.placements[LOST_REF] != 1:
            raise StepFailed(f"{LOST_REF!r} reached the broker after all")
        self.story.say(
            f"no trace of {LOST_REF!r} at the broker: a retry is safe, with the same ref", Kind.ACTION
        )
        await self.desk.place(m, LOST_REF, self._limit, timeout=self.deadlines.resume)
        if len(self.sim.broker.orders_by_ref(LOST_REF)) != 1:
            raise StepFailed(
                f"{LOST_REF!r}: {len(self.sim.broker.orders_by_ref(LOST_REF))} orders at the broker"
            )
        gap = await self._quotes_back(gap_n, Reason.peer_closed)
        self.recoveries.append(
            Recovery(
                "order send lost with its session -> OrderNotPlaced",
                took,
                "counted from the send; the next session's reconciliation found no trace of it",
            )
        )
        return (
            f"OrderNotPlaced {took:.2f} s after the send (nothing at the broker); the same ref then placed "
            f"once; quotes again after a {span(gap):.2f} s Gap"
        )

    async def _quotes_back(self, n: int, reason: Reason) -> Gap:
        """The stream's `n`-th Gap, for `reason`, with prices after it."""
        gap = await self.tape.resumed(n, timeout=self.deadlines.resume)
        if gap.reason != reason:
            raise StepFailed(f"quotes: Gap {n} was for {gap.reason}, not {reason}")
        return gap

    def _quote_feeds(self) -> set[tuple[int, int]]:
        """The Gateway's live quote subscriptions (session id, request id)."""
        return {key for key, st in self.sim.component(Market).streams.items() if isinstance(st, Quotes)}

    async def zombie(self) -> str:
        from fsm.cli.doctor import Level, diagnose

        s = self.settings
        say = self.story.say
        # 1. The trader is restarted (a deploy): a clean stop, the worker retired by process exit.
        say("the trader stops for a redeploy: it leaves its quote stream, then shuts down", Kind.ACTION)
        await self.tape.close(self.manager)
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
        since, gap_n = self._mark(), len(self.tape.gaps) + 1
        t_lost = self.story.t()
        await self._lose_connectivity(since)
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
        await self._night()
        feeds = self._quote_feeds()
        self.story.say(
            "connectivity restored, market data lost (1101): IB dropped every subscription", Kind.ACTION
        )
        gap, after = await self._restore(since, gap_n, data_lost=True)
        resubscribed = self._quote_feeds()
        if not resubscribed or resubscribed & feeds:
            raise StepFailed(f"the stream was not subscribed again after 1101 ({feeds} -> {resubscribed})")
        self.recoveries.append(
            Recovery("nightly 1100 -> 1101: prices again", after, "counted from the 1101; re-subscribed")
        )

        since, gap_n = self._mark(), len(self.tape.gaps) + 1
        await self._lose_connectivity(since)
        await self._night()
        self.story.say("connectivity restored, data maintained (1102)", Kind.ACTION)
        gap2, after = await self._restore(since, gap_n, data_lost=False)
        if self._quote_feeds() != resubscribed:
            raise StepFailed("the stream was subscribed again after 1102 (IB kept it)")
        if m.worker_pid != pid:
            raise StepFailed(f"the worker was replaced ({pid} -> {m.worker_pid}); 1100 must keep it")
        self.recoveries.append(
            Recovery(
                "nightly 1100 -> 1102: prices again",
                after,
                f"counted from the 1102; nothing re-sent; session kept, worker {pid} not replaced",
            )
        )
        return (
            f"session kept through {self.story.t() - t_lost:.2f} s of night, a farm flap, 1101 and 1102 "
            f"(same worker pid {pid}); after 1101 the stream was re-subscribed, after 1102 nothing was "
            f"re-sent; quotes again after Gaps of {span(gap):.2f} s and {span(gap2):.2f} s"
        )

    async def _lose_connectivity(self, since: int) -> None:
        self.story.say("the Gateway loses IB's servers (1100)", Kind.ACTION)
        self.sim.connectivity_lost()
        await self._transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.connectivity_lost,
            since=since,
            timeout=self.deadlines.detect,
            what="DEGRADED_RED (connectivity_lost)",
        )

    async def _night(self) -> None:
        """The night lasts NIGHT_PUMPS runs of the Gateway's market pump (each sends nothing
        while IB is unreachable): long enough for its Gap to show."""
        counters = self.sim.component(Market).counters
        target = counters.pumps + NIGHT_PUMPS
        await waits.sim_state(
            self.sim, lambda _: counters.pumps >= target, timeout=self.deadlines.detect, what="market pumps"
        )

    async def _restore(self, since: int, gap_n: int, *, data_lost: bool) -> tuple[Gap, float]:
        """1101 or 1102: CONNECTED again in the same session, and the stream's `gap_n`-th Gap,
        which must end with a quote the worker read after the restore was sent (nothing came
        during the night); with how long after the restore that quote came (s)."""
        code = 1101 if data_lost else 1102
        sent = time.time()  # the clock the worker stamps quotes with
        self.sim.connectivity_restored(data_lost)
        await self._connected(since, timeout=self.deadlines.detect, what=f"CONNECTED after {code}")
        gap = await self._quotes_back(gap_n, Reason.connectivity_lost)
        after = gap.until.timestamp() - sent
        if after < 0:
            raise StepFailed(f"a quote read {-after:.3f} s before the {code} ended the night's Gap")
        return gap, after

    async def shutdown(self) -> str:
        m = self.manager
        # The restarted trader knows its orders from the journal; asking the broker about them is a
        # reconciliation, which finds the day's fill again: it was delivered before the restart,
        # so it must not be recovered nor delivered twice.
        self.story.say(
            "the restarted trader asks the broker about the day's orders (order_status)", Kind.ACTION
        )
        await self.desk.statuses(m, timeout=self.deadlines.resume)
        if int(m.metrics().get("fills_recovered", 0)):
            raise StepFailed("the restarted trader's reconciliation took a delivered fill for a new one")
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
        return (
            f"every order as the broker has it, nothing delivered again; IDLE; worker {pid} exited on stdin EOF "
            f"in {self.story.t() - t_stop:.2f} s; no session left"
        )

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
        """Judge the day's invariants from what the Gateway (and the trader) saw; stop the clock."""
        self.gateway = GatewayRecord.of(self.sim)
        self.checks = (
            *self.gateway.checks(DEMO_CLIENT_ID, self.settings.min_session),
            *self.tape.checks(),
            *self.desk.checks(self.sim, DEMO_CLIENT_ID),
        )
        self.desk.recovered = sum(int(m.metrics().get("fills_recovered", 0)) for m in self.managers)
        self.wall = self.story.t()

    def report(self) -> DayReport:
        killer = next(p.number for p, run in zip(self.phases, self._steps, strict=True) if run == self.zombie)
        summary = report.summary(
            wall=self.wall,
            gw=self.gateway,
            managers=self.managers,
            recoveries=self.recoveries,
            trading=[*self.tape.summary(), *self.desk.summary()],
            killer_step=killer,
            min_session=self.settings.min_session,
            phases=self.phases,
            checks=self.checks,
        )
        return DayReport(self.phases, report.timeline(self.story, self.managers), summary, self.ok)


async def play(view: DemoView, *, pace: float, deadlines: Deadlines) -> bool:
    """Serve the simulator, play the day against it, show the report; True if it all held."""
    story = Story(view)
    sim = GatewaySim(on_event=story.sim_event, tick_rate=TICK_RATE)
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
                    readonly=False,  # the default is True; the demo trades, against the simulator only
                ).replace(**DEMO_TIMERS)
                day = Day(story, sim, settings, tg, pace=pace, deadlines=deadlines)
                view.start(settings, sim, tg)
                view.follow(day.tape, day.desk)
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
