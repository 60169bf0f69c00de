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
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from fsm.core import Reason, State, Transition
from fsm.settings import Settings

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

# Deadlines for each wait (seconds). Generous: a loaded 2-core CI box spawns Python slowly.
SPAWN_AND_CONNECT = 40.0
DETECT = 10.0

SIM_KINDS = {
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


class StepFailed(Exception):
    """A step did not reach its expected outcome before its deadline."""


@dataclass
class Phase:
    number: int
    key: str
    title: str
    goal: str
    status: str = "pending"  # pending | running | ok | FAILED | skipped
    detail: str = ""
    started: float | None = None
    ended: float | None = None


PHASES = (
    ("connect", "connect", "start the manager; IDLE -> SPAWNING -> HANDSHAKING -> CONNECTED"),
    (
        "red",
        "Gateway API goes RED",
        "the API layer stops answering while TCP still accepts; the probe must notice",
    ),
    (
        "restart",
        "operator restart",
        "restart the Gateway: the hanging handshake ends; reconnect with the same client id",
    ),
    ("crash", "worker crash", "SIGKILL our worker; respawn; reconnect with the same client id"),
    (
        "zombie",
        "stale worker holding the client id",
        "a trader dies hard and leaves its worker holding the id; the restarted trader's manager "
        "reaps it; 326 -> backoff -> same id",
    ),
    ("nightly", "nightly 1100 -> 1102", "upstream connectivity lost and restored; session kept"),
    ("shutdown", "clean shutdown", "retire the worker by process exit; never disconnect"),
)


@dataclass
class Recovery:
    what: str
    seconds: float
    how: str


@dataclass
class ManagerRun:
    """One in-process ConnectionManager of the day (the trader restarts once, in step 5)."""

    name: str
    manager: Any


class Demo:
    """The scripted day. `view` renders it (live or plain); the script is the same for both."""

    def __init__(self, view: Any, *, pace: float = 0.0) -> None:
        self.view = view
        self.pace = pace
        self.t0 = time.monotonic_ns()
        self.phases = [Phase(i + 1, *p) for i, p in enumerate(PHASES)]
        self.runs: list[ManagerRun] = []
        self.current: ManagerRun | None = None
        self.recoveries: list[Recovery] = []
        self.notices: list[Any] = []
        self.sim: Any = None
        self.settings: Settings | None = None
        self._pulse = anyio.Event()
        self.checks: list[tuple[str, bool]] = []
        self.wall: float = 0.0

    # ------------------------------------------------------------------ clock and output
    def t(self, ns: int | None = None) -> float:
        """Seconds since the demo started (the manager's and the simulator's clock too)."""
        return ((time.monotonic_ns() if ns is None else ns) - self.t0) / 1e9

    def say(self, text: str, *, at: float | None = None, kind: str = "info") -> None:
        self.view.line(self.t() if at is None else at, text, kind)

    def _wake(self) -> None:
        ev, self._pulse = self._pulse, anyio.Event()
        ev.set()

    # --------------------------------------------------------------------- following
    async def _follow(self, run: ManagerRun, sub: Any) -> None:
        """Print every change the manager publishes and wake the step that waits for it."""
        from fsm.manager import StateChange

        async for item in sub:
            if isinstance(item, StateChange):
                reason = f"  ({item.reason})" if item.reason else ""
                self.say(
                    f"{item.source} --{item.event}--> {item.dest}{reason}",
                    at=self.t(item.at_ns),
                    kind="transition",
                )
            else:
                code = f" {item.code}" if item.code is not None else ""
                self.notices.append(item)
                self.say(f"notice {item.kind}{code}: {item.message}", at=self.t(item.at_ns), kind="notice")
            self._wake()
        self._wake()

    def _on_sim_event(self, ev: Any) -> None:
        if ev.kind in SIM_KINDS:
            self.say(f"gateway: {ev.kind} {ev.detail}", at=(ev.at * 1e9 - self.t0) / 1e9, kind="sim")
        self._wake()

    async def wait_transition(
        self, pred: Callable[[Transition], bool], *, since: int, timeout: float, what: str
    ) -> Transition:
        """The first transition at index >= since that matches; StepFailed at the deadline."""
        run = self.current
        assert run is not None
        deadline = time.monotonic() + timeout
        while True:
            hist = run.manager.history
            for tr in hist[since:]:
                if pred(tr):
                    return tr
            left = deadline - time.monotonic()
            if left <= 0:
                m = run.manager
                raise StepFailed(
                    f"no {what} within {timeout:g} s (state {m.state}, reason {m.reason or '-'})"
                )
            with anyio.move_on_after(left):
                await self._pulse.wait()

    async def wait_notice(self, pred: Callable[[Any], bool], *, since: int, timeout: float, what: str) -> Any:
        """The first published notice at index >= since that matches; StepFailed at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            for n in self.notices[since:]:
                if pred(n):
                    return n
            left = deadline - time.monotonic()
            if left <= 0:
                raise StepFailed(f"no {what} within {timeout:g} s")
            with anyio.move_on_after(left):
                await self._pulse.wait()

    async def wait_sim_event(self, kind: str, *, after: float, timeout: float) -> None:
        """Wait for the simulator to report `kind` (monotonic seconds >= after)."""
        try:
            await self.sim.wait_until(
                lambda g: any(e.kind == kind and e.at >= after for e in g.events), timeout
            )
        except TimeoutError:
            raise StepFailed(f"the simulator did not report {kind!r} within {timeout:g} s") from None

    def mark(self) -> int:
        assert self.current is not None
        return len(self.current.manager.history)

    # -------------------------------------------------------------------------- managers
    async def start_manager(self, stack: AsyncExitStack, tg: anyio.abc.TaskGroup, name: str) -> ManagerRun:
        from fsm.manager import ConnectionManager

        assert self.settings is not None
        m = ConnectionManager(self.settings)
        run = ManagerRun(name, m)
        sub = m.subscribe()  # before start: the first transitions are published too
        tg.start_soon(self._follow, run, sub)
        self.runs.append(run)
        self.current = run
        self.view.manager = m
        await stack.enter_async_context(m)
        return run

    # ------------------------------------------------------------------------------ main
    async def run(self) -> int:
        from gatewaysim import GatewaySim

        try:
            with tempfile.TemporaryDirectory(prefix="ibgw-demo-") as state_dir:
                async with anyio.create_task_group() as tg:
                    sim = GatewaySim(on_event=self._on_sim_event)
                    await tg.start(sim.serve)
                    self.sim = self.view.sim = sim
                    self.settings = Settings(
                        host="127.0.0.1",
                        port=sim.port,
                        client_id=DEMO_CLIENT_ID,
                        state_dir=Path(state_dir),
                        **DEMO_TIMERS,
                    )
                    self._tg = tg
                    self.view.start(self)
                    try:
                        await self._script()
                    finally:
                        self._final_checks_sync()
                        self.wall = self.t()
                        tg.cancel_scope.cancel()
        finally:
            self.view.stop()  # give the terminal back, whatever happened
        self.view.final(self)
        ok = all(p.status == "ok" for p in self.phases) and all(ok for _, ok in self.checks)
        return 0 if ok else 1

    async def _script(self) -> None:
        steps = {
            "connect": self.step_connect,
            "red": self.step_red,
            "restart": self.step_restart,
            "crash": self.step_crash,
            "zombie": self.step_zombie,
            "nightly": self.step_nightly,
            "shutdown": self.step_shutdown,
        }
        failed = False
        self._stack = AsyncExitStack()
        self._child: Any = None
        self._stale_pid: int | None = None
        try:
            try:
                for phase in self.phases:
                    if failed:
                        phase.status = "skipped"
                        continue
                    phase.status, phase.started = "running", self.t()
                    self.view.phase(phase)
                    try:
                        phase.detail = await steps[phase.key]()
                        phase.status = "ok"
                    except StepFailed as exc:
                        phase.status, phase.detail, failed = "FAILED", str(exc), True
                    except Exception as exc:  # a bug or an unexpected error: report, clean up
                        phase.status, failed = "FAILED", True
                        phase.detail = f"{type(exc).__name__}: {exc}"
                    phase.ended = self.t()
                    self.view.phase(phase)
                    if self.pace and not failed and phase.number < len(self.phases):
                        await anyio.sleep(self.pace)  # a beat for the viewer; nothing waits on it
            finally:
                # Shuts down whichever manager is still running (its __aexit__ shields itself;
                # a scope opened here would break the nesting of the manager's task group).
                await self._stack.aclose()
        finally:
            with anyio.CancelScope(shield=True):
                await self._cleanup_children()
        if not failed:
            await self._settle_sim()

    # ------------------------------------------------------------------------------ steps
    async def step_connect(self) -> str:
        run = await self.start_manager(self._stack, self._tg, "trader")
        m = run.manager
        tr = await self.wait_transition(
            lambda t: t.dest == State.CONNECTED, since=0, timeout=SPAWN_AND_CONNECT, what="CONNECTED"
        )
        took = self.t(tr.at_ns) - self.t(m.history[0].at_ns)
        pos = await m.request("positions")
        return (
            f"CONNECTED in {took:.2f} s (worker pid {m.worker_pid}); "
            f"positions: {len(pos.get('positions', []))} rows"
        )

    async def step_red(self) -> str:
        since = self.mark()
        t_fault = self.t()
        self.say("gateway API layer goes RED (TCP still accepts; nothing answers)", kind="action")
        self.sim.go_red()
        red = await self.wait_transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.probe_failed,
            since=since,
            timeout=DETECT,
            what="DEGRADED_RED (probe_failed)",
        )
        detected = self.t(red.at_ns) - t_fault
        self._red_at = red.at_ns
        since = self.mark()
        hs = await self.wait_transition(
            lambda t: t.dest == State.HANDSHAKING,
            since=since,
            timeout=SPAWN_AND_CONNECT,
            what="a retry reaching the RED Gateway (HANDSHAKING)",
        )
        # The Gateway accepted the TCP connection and read the hello, and will never answer it.
        await self.wait_sim_event("hello_ignored", after=hs.at_ns / 1e9 - 0.001, timeout=DETECT)
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

    async def step_restart(self) -> str:
        since = self.mark()
        t_restart = self.t()
        self.say("operator restarts the Gateway (in real life: with 2FA)", kind="action")
        self.sim.restart()
        ended = await self.wait_transition(
            lambda t: t.source == State.HANDSHAKING and t.dest == State.DEGRADED_RED,
            since=since,
            timeout=DETECT,
            what="the hanging handshake to end",
        )
        back = await self.wait_transition(
            lambda t: t.dest == State.CONNECTED, since=since, timeout=SPAWN_AND_CONNECT, what="CONNECTED"
        )
        after = self.t(back.at_ns) - t_restart
        outage = (back.at_ns - self._red_at) / 1e9
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

    async def step_crash(self) -> str:
        m = self.current.manager  # type: ignore[union-attr]
        await m.request("positions")  # the trader is working when the worker dies
        await self._let_session_age()
        pid = m.worker_pid
        since = self.mark()
        t_kill = self.t()
        self.say(f"SIGKILL our worker pid {pid}", kind="action")
        os.kill(pid, signal.SIGKILL)
        await self.wait_transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.worker_exited,
            since=since,
            timeout=DETECT,
            what="DEGRADED_RED (worker_exited)",
        )
        back = await self.wait_transition(
            lambda t: t.dest == State.CONNECTED, since=since, timeout=SPAWN_AND_CONNECT, what="CONNECTED"
        )
        took = self.t(back.at_ns) - t_kill
        if m.worker_pid == pid:
            raise StepFailed("CONNECTED with the killed worker's pid?")
        self.recoveries.append(
            Recovery("worker SIGKILL -> CONNECTED", took, f"respawned as pid {m.worker_pid}")
        )
        return f"detected at once, respawned as pid {m.worker_pid}, CONNECTED {took:.2f} s after the kill"

    async def step_zombie(self) -> str:
        from fsm.zombies import LockRecord, lock_path

        s = self.settings
        assert s is not None
        # 1. The trader is restarted (a deploy): a clean stop, the worker retired by process exit.
        self.say("the trader stops for a redeploy (clean shutdown)", kind="action")
        await self._stack.aclose()
        self._stack = AsyncExitStack()
        # 2. Its next run is a separate process that connects, then dies hard with its worker hung.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "IBGW_"))}
        argv = [
            sys.executable,
            "-m",
            "fsm.cli",
            "run",
            "--host",
            s.host,
            "--port",
            str(s.port),
            "--client-id",
            str(s.client_id),
            "--state-dir",
            str(s.state_dir),
        ]
        child = self._child = await anyio.open_process(
            argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.say(
            f"the trader starts again as process {child.pid} (`ibgw run`, same client id)", kind="action"
        )
        connected = anyio.Event()
        self._tg.start_soon(self._read_child, child, connected)
        with anyio.move_on_after(SPAWN_AND_CONNECT) as scope:
            await connected.wait()
        if scope.cancelled_caught:
            raise StepFailed(f"the trader process {child.pid} did not reach CONNECTED")
        rec = LockRecord.parse(lock_path(s.state_dir, s.host, s.port, s.client_id).read_text())
        if rec is None or rec.worker_pid is None or rec.manager_pid != child.pid:
            raise StepFailed(f"no lock record naming the trader's worker: {rec}")
        stale = self._stale_pid = rec.worker_pid
        # The trader runs for a while before it dies (see _let_session_age).
        await self._let_session_age()
        self.say(
            f"its worker pid {stale} hangs (SIGSTOP) and the trader process is killed (SIGKILL)",
            kind="action",
        )
        os.kill(stale, signal.SIGSTOP)
        child.send_signal(signal.SIGKILL)
        await child.wait()
        await self.sim.wait_until(
            lambda g: any(x.client_id == s.client_id and x.handshaken for x in g.sessions), DETECT
        )
        self.say(f"stale worker {stale} still holds client id {s.client_id} at the Gateway", kind="action")
        # What `ibgw doctor` (passive: kernel socket table and state dir only) sees right now.
        from fsm.doctor import ATTENTION, diagnose

        report = await anyio.to_thread.run_sync(diagnose, s.port, s.state_dir)
        for f in report.findings:
            if f.level == ATTENTION:
                self.say(f"ibgw doctor: {f.message}", kind="doctor")
        # The Gateway also keeps the id reserved for a moment after that socket closes (the
        # Gateway-side CLOSE_WAIT behaviour), until we let it go below.
        self.sim.client_id_hold(math.inf)
        # 3. The trader restarts: its manager finds the dead manager's worker in the lock file.
        t_start = self.t()
        self.say("the trader restarts: a new manager for the same client id", kind="action")
        run = await self.start_manager(self._stack, self._tg, "trader (restarted)")
        m = run.manager
        await self.wait_transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.client_id_in_use,
            since=0,
            timeout=SPAWN_AND_CONNECT,
            what="DEGRADED_RED (client_id_in_use, 326)",
        )
        self.say("the Gateway lets go of the client id", kind="action")
        self.sim.client_id_hold(None)
        back = await self.wait_transition(
            lambda t: t.dest == State.CONNECTED, since=0, timeout=SPAWN_AND_CONNECT, what="CONNECTED"
        )
        took = self.t(back.at_ns) - t_start
        reaped = int(m.metrics().get("zombies_reaped", 0))
        if reaped < 1:
            raise StepFailed("the stale worker was not reaped by the manager")
        if _alive(stale):
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

    async def step_nightly(self) -> str:
        m = self.current.manager  # type: ignore[union-attr]
        pid = m.worker_pid
        since = self.mark()
        t_lost = self.t()
        self.say("nightly reset: the Gateway loses IB's servers (1100)", kind="action")
        self.sim.connectivity_lost()
        await self.wait_transition(
            lambda t: t.dest == State.DEGRADED_RED and t.reason == Reason.connectivity_lost,
            since=since,
            timeout=DETECT,
            what="DEGRADED_RED (connectivity_lost)",
        )
        # Farm notices arrive during the night too: recorded and published, never a loss.
        n_since = len(self.notices)
        self.say("market data farm flaps (2103, then 2104)", kind="action")
        self.sim.farm_flap()
        await self.wait_notice(
            lambda n: n.kind == "farm" and n.code == 2104,
            since=n_since,
            timeout=DETECT,
            what="farm notice 2104",
        )
        if m.state != State.DEGRADED_RED or m.worker_pid != pid:
            raise StepFailed(f"a farm notice moved the manager ({m.state}, worker {m.worker_pid})")
        self.say("connectivity restored, data maintained (1102)", kind="action")
        t_restored = self.t()
        self.sim.connectivity_restored(False)
        back = await self.wait_transition(
            lambda t: t.dest == State.CONNECTED, since=since, timeout=DETECT, what="CONNECTED after 1102"
        )
        if m.worker_pid != pid:
            raise StepFailed(f"the worker was replaced ({pid} -> {m.worker_pid}); 1100 must keep it")
        took = self.t(back.at_ns) - t_restored
        self.recoveries.append(
            Recovery(
                "nightly 1100 -> 1102 -> CONNECTED",
                took,
                f"counted from the 1102; session kept, worker {pid} not replaced",
            )
        )
        return (
            f"session kept through {self.t(back.at_ns) - t_lost:.2f} s of 1100 and a farm "
            f"flap (same worker pid {pid}); CONNECTED {took * 1000:.0f} ms after 1102"
        )

    async def step_shutdown(self) -> str:
        m = self.current.manager  # type: ignore[union-attr]
        pid = m.worker_pid
        t_stop = self.t()
        self.say("the trader shuts down", kind="action")
        await self._stack.aclose()
        if m.state != State.IDLE:
            raise StepFailed(f"state after shutdown is {m.state}")
        if pid is not None and _alive(pid):
            raise StepFailed(f"worker {pid} is still alive after shutdown")
        await self.sim.wait_until(lambda g: not g.sessions, DETECT)
        return f"IDLE; worker {pid} exited on stdin EOF in {self.t() - t_stop:.2f} s; no session left"

    async def _let_session_age(self) -> None:
        """Scenario pacing before a crash we stage ourselves, not synchronisation: let the live
        session reach min_session first. Ending a session just after its handshake is the fast
        close that turns a real Gateway RED, and the demo must not stage one either."""
        assert self.settings is not None
        age = self._session_age(self.settings.client_id)
        if age is not None and age < self.settings.min_session:
            await anyio.sleep(self.settings.min_session - age)

    def _session_age(self, client_id: int) -> float | None:
        """Seconds since the handshake of the Gateway's live session for this client id."""
        for x in self.sim.sessions:
            if x.client_id == client_id and x.handshaken_at is not None:
                return time.monotonic() - x.handshaken_at
        return None

    # ---------------------------------------------------------------------- child trader
    async def _read_child(self, child: anyio.abc.Process, connected: anyio.Event) -> None:
        assert child.stdout is not None
        stream = BufferedByteReceiveStream(child.stdout)
        while True:
            try:
                raw = await stream.receive_until(b"\n", 1 << 16)
            except (
                anyio.IncompleteRead,
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                anyio.DelimiterNotFound,
            ):
                return
            line = raw.decode("utf-8", "replace")
            text = line.split(" ", 1)[1] if " " in line else line  # drop its own timestamp
            self.say(f"[trader pid {child.pid}] {text}", kind="child")
            if "--> CONNECTED" in line:
                connected.set()

    async def _cleanup_children(self) -> None:
        """On any exit path: no process of this demo may outlive it."""
        child = self._child
        if child is not None and child.returncode is None:
            child.kill()
            with anyio.move_on_after(5):
                await child.wait()
        if self._stale_pid is not None and _alive(self._stale_pid):
            try:
                p = psutil.Process(self._stale_pid)
                if "--label" in p.cmdline():
                    p.kill()
            except psutil.Error:
                pass

    async def _settle_sim(self) -> None:
        """Let the simulator finish classifying the last closes (it asks psutil after EOF)."""
        with anyio.move_on_after(5):
            await self.sim.wait_until(lambda g: len(g.client_closes) >= g.counters.client_closes, 5)

    def _final_checks_sync(self) -> None:
        sim = self.sim
        if sim is None:
            return
        live_closes = [c for c in sim.client_closes if c.peer_alive]
        self.disconnects = len(live_closes)
        self.client_ids = sorted(sim.client_ids_seen)
        ages = [c.age for c in sim.client_closes if c.handshaken]
        self.youngest = min(ages) if ages else None
        floor = DEMO_TIMERS["min_session"] - 0.05  # the sim dates a close when it reads the EOF
        self.checks = [
            ("disconnects issued: 0 (no live process ever closed its session)", self.disconnects == 0),
            (f"client ids used: exactly one ({DEMO_CLIENT_ID})", self.client_ids == [DEMO_CLIENT_ID]),
            (
                "no fast close: every session lived at least min_session",
                self.youngest is None or self.youngest >= floor,
            ),
        ]

    # ---------------------------------------------------------------------------- report
    def timeline(self) -> list[tuple[float, str, str, str, str, str]]:
        rows = []
        for i, run in enumerate(self.runs, 1):
            for tr in run.manager.history:
                rows.append(
                    (
                        self.t(tr.at_ns),
                        f"#{i}",
                        str(tr.source),
                        tr.event,
                        str(tr.dest),
                        str(tr.reason) if tr.reason else "-",
                    )
                )
        rows.sort(key=lambda r: r[0])
        return rows

    def summary(self) -> list[str]:
        sim = self.sim
        c = sim.counters if sim is not None else None
        out = [f"wall time: {self.wall:.1f} s"]
        if c is not None:
            ours = sum(int(r.manager.metrics().get("sessions", 0)) for r in self.runs)
            rest = c.handshakes - ours
            out.append(
                f"sessions: {c.handshakes} handshake(s) at the Gateway: {ours} by the "
                f"in-process managers" + (f", {rest} by the trader process killed in step 5" if rest else "")
            )
            out.append("recoveries:")
            for r in self.recoveries:
                out.append(f"  {r.what}: {r.seconds:.2f} s ({r.how})")
            reaped = sum(int(r.manager.metrics().get("zombies_reaped", 0)) for r in self.runs)
            out.append(
                f"326s sent by the Gateway: {c.sent_326}; stale workers reaped: {reaped}; "
                f"Gateway RED episodes: {c.red_episodes}"
            )
            alive_closes = getattr(self, "disconnects", 0)
            out.append(
                f"disconnects issued: {alive_closes} (the Gateway saw {len(sim.client_closes)} "
                f"closes, {len(sim.client_closes) - alive_closes} by process exit)"
            )
            young = getattr(self, "youngest", None)
            if young is not None:
                out.append(
                    f"youngest session at its close: {young:.2f} s after its handshake "
                    f"(min_session {DEMO_TIMERS['min_session']:g} s: no fast close)"
                )
            ids = getattr(self, "client_ids", [])
            one = "exactly one" if len(ids) == 1 else f"{len(ids)}, NOT one"
            out.append(f"client ids used: {one} ({', '.join(map(str, ids))})")
        ok = all(p.status == "ok" for p in self.phases) and all(ok for _, ok in self.checks)
        out.append(
            "verdict: every step ended as scripted"
            if ok
            else "verdict: FAILED — "
            + "; ".join(
                [f"step {p.number} {p.title}: {p.status}" for p in self.phases if p.status != "ok"]
                + [name for name, good in self.checks if not good]
            )
        )
        return out


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ------------------------------------------------------------------------------------- views
class PlainView:
    """Plain lines: for logs and CI. Same facts as the live view."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or (lambda s: print(s, flush=True))
        self.manager: Any = None
        self.sim: Any = None

    def start(self, demo: Demo) -> None:
        s = demo.settings
        assert s is not None
        self._write(
            f"ibgw demo: simulated Gateway on {s.host}:{s.port}, client id {s.client_id}, "
            f"probe every {s.probe_interval:g} s, handshake budget {s.handshake_timeout:g} s"
        )

    def line(self, t: float, text: str, kind: str) -> None:
        self._write(f"[{t:7.3f}] {'   ' if kind not in ('phase', 'action', 'doctor') else ''}{text}")

    def phase(self, p: Phase) -> None:
        t = p.ended if p.ended is not None else p.started or 0.0
        if p.status == "running":
            self._write(f"[{t:7.3f}] == step {p.number}/7 {p.title}: {p.goal}")
        else:
            self._write(f"[{t:7.3f}] == step {p.number}/7 {p.title}: {p.status} — {p.detail}")

    def stop(self) -> None:
        pass

    def final(self, demo: Demo) -> None:
        w = self._write
        w("")
        w("timeline (t = seconds since the demo started; #1 the trader, #2 the trader after its restart)")
        w(f"{'t':>8}  mgr  {'from':<13} {'event':<22} {'to':<13} reason")
        for t, who, src, ev, dst, reason in demo.timeline():
            w(f"{t:8.3f}  {who:<3}  {src:<13} {ev:<22} {dst:<13} {reason}")
        w("")
        w("steps")
        for p in demo.phases:
            w(f"  {p.number}. {p.title:<36} {p.status:<7} {p.detail}")
        w("")
        w("summary")
        for line in demo.summary():
            w(f"  {line}")


class LiveView(PlainView):
    """A rich live panel while the day plays, then the same timeline and summary as tables."""

    def __init__(self) -> None:
        super().__init__()
        from rich.console import Console

        self.console = Console()
        self.log: deque[str] = deque(maxlen=14)
        self._live: Any = None
        self.demo: Demo | None = None
        self.current_phase: Phase | None = None

    def start(self, demo: Demo) -> None:
        from rich.live import Live

        self.demo = demo
        self._live = Live(self._render(), console=self.console, auto_refresh=False, transient=True)
        self._live.start()
        demo._tg.start_soon(self._ticker)

    async def _ticker(self) -> None:
        while self._live is not None:
            self.refresh()
            await anyio.sleep(0.1)  # screen refresh rate, not synchronisation

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def line(self, t: float, text: str, kind: str) -> None:
        style = {
            "transition": "bold",
            "notice": "yellow",
            "sim": "cyan",
            "action": "magenta",
            "child": "dim",
            "phase": "bold blue",
            "doctor": "red",
        }.get(kind, "")
        from rich.markup import escape

        self.log.append(
            f"[dim]{t:7.3f}[/] [{style}]{escape(text)}[/]" if style else f"[dim]{t:7.3f}[/] {escape(text)}"
        )
        self.refresh()

    def phase(self, p: Phase) -> None:
        self.current_phase = p
        if p.status != "running":
            mark = "[green]✓[/]" if p.status == "ok" else "[red]✗[/]"
            from rich.markup import escape

            self.console.print(f"{mark} step {p.number}/7 [bold]{p.title}[/]: {escape(p.detail)}")
        self.refresh()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        from fsm.views import STATE_STYLE

        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold")
        grid.add_column()
        p = self.current_phase
        grid.add_row("step", f"{p.number}/7 {p.title} — {p.goal}" if p else "starting")
        m = self.manager
        if m is not None:
            hist = m.history
            state = str(m.state)
            entered = hist[-1].at_ns if hist else time.monotonic_ns()
            dwell = (time.monotonic_ns() - entered) / 1e9
            grid.add_row(
                "state",
                f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"
                f"   reason {m.reason or '-'}   for {dwell:5.1f} s",
            )
            grid.add_row("worker", f"pid {m.worker_pid or '-'}   client id {m.client_id}")
        sim = self.sim
        if sim is not None:
            light = "[bold green]● GREEN[/]" if sim.green else "[bold red]● RED[/]"
            upstream = "" if sim.upstream_connected else "   [yellow]upstream lost (1100)[/]"
            grid.add_row(
                "Gateway API",
                f"{light}{upstream}   sessions {len(sim.sessions)}   "
                f"handshakes {sim.counters.handshakes}   "
                f"326s {sim.counters.sent_326}",
            )
        body = Group(grid, "", *self.log)
        return Panel(body, title="ibgw demo — a day at the (simulated) Gateway", border_style="blue")

    def stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def final(self, demo: Demo) -> None:
        from rich.table import Table

        con = self.console
        t = Table(title="timeline (t = s since start; #1 the trader, #2 the trader after its restart)")
        for col, just in (
            ("t", "right"),
            ("mgr", "left"),
            ("from", "left"),
            ("event", "left"),
            ("to", "left"),
            ("reason", "left"),
        ):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        from fsm.views import STATE_STYLE

        for tt, who, src, ev, dst, reason in demo.timeline():
            t.add_row(f"{tt:.3f}", who, src, ev, f"[{STATE_STYLE.get(dst, 'white')}]{dst}[/]", reason)
        con.print(t)
        steps = Table(title="steps")
        for col in ("#", "step", "result", "detail"):
            steps.add_column(col)
        for p in demo.phases:
            res = "[green]ok[/]" if p.status == "ok" else f"[red]{p.status}[/]"
            steps.add_row(str(p.number), p.title, res, p.detail)
        con.print(steps)
        con.print("[bold]summary[/]")
        for line in demo.summary():
            style = ""
            if line.startswith(("disconnects issued: 0", "client ids used: exactly one", "verdict: every")):
                style = "green"
            elif "FAILED" in line or "NOT one" in line:
                style = "red"
            con.print(f"  [{style}]{line}[/]" if style else f"  {line}", highlight=False)


def run_demo(*, plain: bool = False, backend: str = "asyncio", pace: float | None = None) -> int:
    """Play the day; 0 only if every step ended as scripted."""
    import logging

    # The day's story is told by the view; the components' own warnings (a handshake failed, a
    # stale worker was ended) are expected here and would only repeat it out of order.
    for name in ("fsm", "gatewaysim", "worker"):
        logging.getLogger(name).addHandler(logging.NullHandler())
        logging.getLogger(name).propagate = False
    view: PlainView
    if not plain:
        from rich.console import Console

        if not Console().is_terminal:
            plain = True
    view = PlainView() if plain else LiveView()
    if pace is None:
        pace = 0.0 if plain else 1.5
    demo = Demo(view, pace=pace)
    return anyio.run(demo.run, backend=backend)
