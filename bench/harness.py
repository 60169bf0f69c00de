"""The bench's harness: run sizes, the context groups share, the simulator process, managers
set up for measuring, and the SIGKILL-and-recover sample the recovery figures take."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from fsm.core import State
from fsm.manager import ConnectionManager, StateChange
from fsm.settings import Settings

from .lineclient import LineClient
from .spec import BENCH_STABLE_S
from .stats import ms_since

HOST = "127.0.0.1"


@dataclass
class Sizes:
    """How many samples each figure takes; --quick shrinks all of them."""

    rtt_rounds: int
    rtt_batch: int
    ping_rounds: int
    tp_rounds: int
    tp_per_caller: int
    cold_rounds: int
    kill_rounds: int
    close_rounds: int
    silent_rounds: int
    spare_rounds: int
    mem_rounds: int
    core_rounds: int
    scale_rounds: int
    quote_rounds: int
    quote_seconds: float  # per round, both readers live
    tick_rates: tuple[float, ...]  # ticks/s, one simulator each, tried in this order
    trade_windows: int  # per reader and rate
    trade_window: float  # s
    history_rounds: int
    order_rounds: int
    scale_ns: tuple[int, ...] = (1, 4, 16)
    silent_probe: tuple[float, float] | None = None  # (interval, timeout); None = Settings defaults

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            rtt_rounds=8,
            rtt_batch=50,
            ping_rounds=60,
            tp_rounds=6,
            tp_per_caller=40,
            cold_rounds=4,
            kill_rounds=3,
            close_rounds=3,
            silent_rounds=3,
            spare_rounds=4,
            mem_rounds=2,
            core_rounds=5,
            scale_rounds=1,
            quote_rounds=1,
            quote_seconds=0.3,
            tick_rates=(10_000,),
            trade_windows=1,
            trade_window=0.3,
            history_rounds=1,
            order_rounds=10,
            silent_probe=(1.0, 0.5),
        )

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            rtt_rounds=20,
            rtt_batch=100,
            ping_rounds=400,
            tp_rounds=12,
            tp_per_caller=100,
            cold_rounds=12,
            kill_rounds=8,
            close_rounds=8,
            silent_rounds=4,
            spare_rounds=12,
            mem_rounds=5,
            core_rounds=15,
            scale_rounds=2,
            quote_rounds=6,
            quote_seconds=1.5,
            tick_rates=(10_000, 20_000, 30_000, 40_000, 50_000, 60_000, 70_000),
            trade_windows=2,
            trade_window=1.0,
            history_rounds=10,
            order_rounds=100,
            silent_probe=None,
        )


@dataclass
class Context:
    sizes: Sizes
    state_dir: Path
    sim: SimHost
    backend: str = "asyncio"
    next_client_id: int = 100
    results: dict[str, Any] = field(default_factory=dict)  # shared between groups (cold median)
    # What groups share and the run closes at its end (the trading-day simulator, ib_child).
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    shared: dict[str, Any] = field(default_factory=dict)
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True)

    def client_id(self, count: int = 1) -> int:
        cid = self.next_client_id
        self.next_client_id += count
        return cid

    @property
    def port(self) -> int:
        return self.sim.port


# --------------------------------------------------------------------------------------------
# The simulator, in its own process


class SimHost:
    """`python -m bench.simhost`: a simulator process (one serves every figure and baseline; the
    trading-surface figures start their own: a trading-day clock, a tick rate, a send log)."""

    def __init__(
        self, *, tick_rate: float | None = None, trading_day: bool = False, record_sends: bool = False
    ) -> None:
        argv = [sys.executable, "-u", "-m", "bench.simhost"]
        if tick_rate is not None:
            argv += ["--tick-rate", repr(float(tick_rate))]
        if trading_day:
            argv.append("--trading-day")
        if record_sends:
            argv.append("--record-sends")
        self.client = LineClient(argv, stderr_to_null=False, max_line=64 << 20)
        self.port = 0
        self.seed = 0
        self.tick_rate = 0.0

    async def __aenter__(self) -> SimHost:
        await self.client.__aenter__()
        try:
            ev = await self.client.wait_event("serving", timeout=30)
        except BaseException:
            await self.client.__aexit__(None, None, None)
            raise
        self.port = int(ev["port"])
        self.seed, self.tick_rate = int(ev["seed"]), float(ev["tick_rate"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(None, None, None)

    async def call(self, name: str, *args: Any) -> dict[str, Any]:
        """Call a fault control; returns {t0_ns, t1_ns, result} (CLOCK_MONOTONIC ns)."""
        reply = await self.client.call({"call": name, "args": list(args)}, timeout=30)
        if reply.get("status") != "success":
            raise RuntimeError(f"sim.{name}{args}: {reply.get('error')}")
        data: dict[str, Any] = reply["data"]
        return data

    async def sends(self) -> list[list[Any]]:
        """What the market pushed since the last ask (bench.simhost.SendLog's records)."""
        reply = await self.client.call({"sends": True}, timeout=60)
        if reply.get("status") != "success":
            raise RuntimeError(f"sim sends: {reply.get('error')}")
        out: list[list[Any]] = reply["data"]["sends"]
        return out


# --------------------------------------------------------------------------------------------
# Managers for the bench


# Shutting a manager down keeps a session until it is min_session old (5 s by default: no fast
# close). The bench starts and stops dozens of managers, and no figure includes a shutdown, so
# bench managers use a short min_session; the simulator's red_on_fast_close is off.
BENCH_MIN_SESSION = 0.25
_DEFAULT_STABLE_S = Settings.__dataclass_fields__["stable_period"].default
NOTES = (
    f"bench managers use min_session={BENCH_MIN_SESSION:g} s (default "
    f"{Settings.__dataclass_fields__['min_session'].default:g} s) so a shutdown between samples "
    "does not wait; no figure includes a shutdown",
    f"managers whose worker the bench kills use stable_period={BENCH_STABLE_S:g} s (default "
    f"{_DEFAULT_STABLE_S:g} s) and backoff jitter 0, and are CONNECTED that long before each "
    "SIGKILL: the session is stable, as a trader's long-running one is",
)


def settings_for(ctx: Context, client_id: int, **changes: Any) -> Settings:
    """A bench manager's settings: the run's simulator (or `port`), its state dir, min_session."""
    changes.setdefault("min_session", BENCH_MIN_SESSION)
    changes.setdefault("port", ctx.port)
    return Settings(host=HOST, client_id=client_id, state_dir=ctx.state_dir, **changes)


def kill_settings(ctx: Context, client_id: int, **changes: Any) -> Settings:
    """A manager whose worker will be killed: stable after BENCH_STABLE_S, no jitter."""
    return settings_for(ctx, client_id, stable_period=BENCH_STABLE_S, backoff_jitter=0.0, **changes)


async def until_stable(m: ConnectionManager) -> None:
    """Return once the session has been CONNECTED for the manager's stable_period.

    Stability is a matter of time (the core's rule: CONNECTED continuously for stable_period),
    so this waits out what is left of it after the last entry into CONNECTED."""
    await m.wait_connected(timeout=60)
    since = max(t.at_ns for t in m.history if t.dest == State.CONNECTED)
    left = since / 1e9 + m.settings.stable_period - time.monotonic_ns() / 1e9
    if left > 0:
        await anyio.sleep(left + 0.002)


@dataclass(frozen=True)
class KillSample:
    """One SIGKILL of a manager's session worker, until the manager is CONNECTED again."""

    detect_ms: float  # SIGKILL -> the manager's transition out of CONNECTED (its own timestamp)
    recover_ms: float  # SIGKILL -> the trader sees the change into CONNECTED
    respawn_ms: float  # entry into SPAWNING -> CONNECTED (a worker adopted or started, connected)
    ready_ms: float  # of which: entry into SPAWNING -> HANDSHAKING (a worker has said `ready`)
    fast: bool  # the core respawned at once (CONNECTED -> SPAWNING), without a backoff step


async def kill_worker(m: ConnectionManager) -> KillSample:
    """SIGKILL the session worker of a CONNECTED manager and time its way back, from the state
    changes a subscriber sees (each carries the core's monotonic timestamp)."""
    pid = m.worker_pid
    if pid is None or m.state != State.CONNECTED:
        raise RuntimeError(f"kill_worker needs a CONNECTED manager with a worker ({m.state})")
    left: StateChange | None = None
    marks: dict[State, int] = {}
    async with m.subscribe() as changes:
        t_kill = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        with anyio.fail_after(60):
            async for c in changes:
                if not isinstance(c, StateChange):
                    continue
                if left is None:
                    if c.source != State.CONNECTED:
                        raise RuntimeError(f"a change before leaving CONNECTED: {c}")
                    left = c
                marks.setdefault(c.dest, c.at_ns)
                if c.dest == State.CONNECTED:
                    break
    recover = ms_since(t_kill)
    if left is None or State.SPAWNING not in marks or State.HANDSHAKING not in marks:
        raise RuntimeError(f"no respawn after SIGKILL: {left}, {marks}")
    spawning = marks[State.SPAWNING]
    return KillSample(
        detect_ms=(left.at_ns - t_kill) / 1e6,
        recover_ms=recover,
        respawn_ms=(marks[State.CONNECTED] - spawning) / 1e6,
        ready_ms=(marks[State.HANDSHAKING] - spawning) / 1e6,
        fast=left.dest == State.SPAWNING,
    )


def history_marks(history: list[Any]) -> dict[State, int]:
    """First entry time (monotonic ns) into each state, from the core's transition history."""
    out: dict[State, int] = {}
    for t in history:
        out.setdefault(t.dest, int(t.at_ns))
    return out
