"""The figures: each group measures one or more figures against baselines in the same run.

A group gets a `Context` and fills in its `Figure`s. An exception in a group is a failure of
that group: the runner reports its figures as error rows and the run exits 1.
"""

from __future__ import annotations

import functools
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from fsm.core import ConnectionCore, State
from fsm.manager import ConnectionManager
from fsm.settings import Settings

from . import baselines
from .lineclient import LineClient
from .report import INFO, NA, Figure
from .stats import Summary, interleave, ms_since, summarize

MIB = 1024 * 1024
HOST = "127.0.0.1"
WATCHDOG_DEFAULT_S = 20.0 + 4.0  # ib_async Watchdog: appTimeout 20 s idle, then probeTimeout 4 s
FIRST_BACKOFF_S = Settings.__dataclass_fields__["backoff_initial"].default

THROTTLE_NOTE_PACED = (
    "ib_async's 45 msg/s throttle is NOT bypassed: pings go out one per client every "
    "{period:.0f} ms ({rate:.0f}/s) in the worker and in the in-process baseline alike"
)


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
    """`python -m bench.simhost`: one simulator process for every figure and baseline."""

    def __init__(self) -> None:
        self.client = LineClient([sys.executable, "-u", "-m", "bench.simhost"], stderr_to_null=False)
        self.port = 0

    async def __aenter__(self) -> SimHost:
        await self.client.__aenter__()
        try:
            ev = await self.client.wait_event("serving", timeout=30)
        except BaseException:
            await self.client.__aexit__(None, None, None)
            raise
        self.port = int(ev["port"])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(None, None, None)

    async def call(self, name: str, *args: Any) -> dict[str, Any]:
        """Call a fault control; returns {t0_ns, t1_ns, result} (CLOCK_MONOTONIC ns)."""
        reply = await self.client.call({"call": name, "args": list(args)}, timeout=30)
        if reply.get("status") != "success":
            raise RuntimeError(f"sim.{name}{args}: {reply.get('error')}")
        return reply["data"]


# --------------------------------------------------------------------------------------------
# Managers for the bench


# Shutting a manager down keeps a session until it is min_session old (5 s by default: no fast
# close). The bench starts and stops dozens of managers, and no figure includes a shutdown, so
# bench managers use a short min_session; the simulator's red_on_fast_close is off.
BENCH_MIN_SESSION = 0.25
MIN_SESSION_NOTE = (
    f"bench managers use min_session={BENCH_MIN_SESSION:g} s (default 5 s) so a "
    "shutdown between samples does not wait; no figure includes a shutdown"
)


def settings_for(ctx: Context, client_id: int, **changes: Any) -> Settings:
    changes.setdefault("min_session", BENCH_MIN_SESSION)
    return Settings(host=HOST, port=ctx.port, client_id=client_id, state_dir=ctx.state_dir, **changes)


@dataclass(frozen=True)
class KillSample:
    """One SIGKILL of a manager's session worker, until the manager is CONNECTED again."""

    detect_ms: float  # SIGKILL -> the trader's wait_for(DEGRADED_RED) returns
    recover_ms: float  # SIGKILL -> the trader's wait_connected() returns
    respawn_ms: float  # the core's retry (DEGRADED_RED -> SPAWNING) -> CONNECTED, from history
    ready_ms: float  # of which: retry -> HANDSHAKING (a worker is up and has said `ready`)


async def kill_worker(m: ConnectionManager) -> KillSample:
    """SIGKILL the session worker of a CONNECTED manager and time its way back.

    A crash, not a retirement: min_session does not apply; the core retries after the first
    backoff step (jitter 0 in the bench)."""
    pid = m.worker_pid
    if pid is None or m.state != State.CONNECTED:
        raise RuntimeError(f"kill_worker needs a CONNECTED manager with a worker ({m.state})")
    t_kill = time.monotonic_ns()
    os.kill(pid, signal.SIGKILL)
    await m.wait_for(State.DEGRADED_RED, timeout=10)
    detect = ms_since(t_kill)
    await m.wait_connected(timeout=60)
    recover = ms_since(t_kill)
    after = [t for t in m.history if t.at_ns >= t_kill]
    retry = next((t for t in after if t.source == State.DEGRADED_RED and t.dest == State.SPAWNING), None)
    if retry is None:
        raise RuntimeError(
            f"no retry (DEGRADED_RED -> SPAWNING) in the history after SIGKILL: "
            f"{[(t.source, t.dest) for t in after]}"
        )
    marks = _history_marks([t for t in after if t.at_ns >= retry.at_ns])
    return KillSample(
        detect,
        recover,
        (marks[State.CONNECTED] - retry.at_ns) / 1e6,
        (marks[State.HANDSHAKING] - retry.at_ns) / 1e6,
    )


def _history_marks(history: Sequence[Any]) -> dict[State, int]:
    """First entry time (monotonic ns) into each state, from the core's transition history."""
    out: dict[State, int] = {}
    for t in history:
        out.setdefault(t.dest, int(t.at_ns))
    return out


def _judge_recovery(fig: Figure, recover: Sequence[float], cold: Sequence[float]) -> Summary:
    """SIGKILL -> CONNECTED against cold median + first backoff step + 100 ms."""
    value = fig.measured(recover)
    fig.baseline = summarize(cold)
    step_ms = 1000 * FIRST_BACKOFF_S
    budget = fig.baseline.median + step_ms + 100
    fig.ratio = value.median / budget
    fig.extra["first backoff step (ms)"] = step_ms
    fig.extra["budget: cold median + step + 100 ms"] = round(budget, 1)
    fig.notes.append(
        "backoff jitter set to 0 for these managers so the first step is exactly backoff_initial"
    )
    fig.judge(value.median <= budget)
    return value


# --------------------------------------------------------------------------------------------
# Round trips: status (manager only), ping (through to the Gateway), throughput


async def group_rtt(ctx: Context, figs: dict[str, Figure]) -> None:
    """Manager `status` vs the bare echo child: one-at-a-time round trips and 32 callers."""
    sz = ctx.sizes
    callers = 32
    async with (
        baselines.echo_child(ctx.backend) as echo,
        ConnectionManager(settings_for(ctx, ctx.client_id())) as m,
    ):
        await m.wait_connected(timeout=60)

        async def e_status() -> Any:
            return await echo.call({"command": "status", "params": {}})

        async def m_status() -> Any:
            return await m.request("status")

        got_rtt = await interleave(
            {
                "echo": lambda: baselines.rtt_batch(e_status, sz.rtt_batch),
                "manager": lambda: baselines.rtt_batch(m_status, sz.rtt_batch),
            },
            rounds=sz.rtt_rounds,
        )
        got_tp = await interleave(
            {
                "echo": lambda: baselines.throughput(e_status, callers, sz.tp_per_caller),
                "manager": lambda: baselines.throughput(m_status, callers, sz.tp_per_caller),
            },
            rounds=sz.tp_rounds,
        )
    fig = figs["status_rtt"]
    fig.judge(fig.compared(got_rtt["manager"], got_rtt["echo"]) <= 1.5)
    fig.notes.append(
        "`status` is answered by the worker without a Gateway message, so "
        "ib_async's 45 msg/s throttle does not apply"
    )
    fig = figs["throughput_32"]
    fig.judge(fig.compared(got_tp["manager"], got_tp["echo"]) >= 0.7)
    fig.extra["requests per round"] = callers * sz.tp_per_caller
    fig.notes.append(
        "back-to-back, unpaced: `status` sends nothing to the Gateway, so "
        "ib_async's 45 msg/s throttle does not apply"
    )


async def group_ping(ctx: Context, figs: dict[str, Figure]) -> None:
    """`ping` manager -> worker -> sim vs in-process reqCurrentTimeAsync + the bare echo."""
    sz = ctx.sizes
    period = 0.040  # 25 pings/s per client: under ib_async's 45 msg/s throttle
    async with (
        baselines.echo_child(ctx.backend) as echo,
        baselines.ib_child() as ib,
        ConnectionManager(settings_for(ctx, ctx.client_id())) as m,
    ):
        await baselines.ib_call(ib, "ping_setup", host=HOST, port=ctx.port, client_id=ctx.client_id())
        await m.wait_connected(timeout=60)

        async def m_ping() -> dict[str, float]:
            t0 = time.perf_counter_ns()
            data = await m.request("ping")
            elapsed = (time.perf_counter_ns() - t0) / 1e6
            # `inside`: the worker's own timing of reqCurrentTime (its `latency_ms`)
            return {"manager": elapsed, "inside": float(data["latency_ms"])}

        async def e_ping() -> float:
            t0 = time.perf_counter_ns()
            await echo.call({"command": "ping", "params": {}})
            return (time.perf_counter_ns() - t0) / 1e6

        # ib_async counts the 7 connect messages in its 1 s window: let both windows clear.
        await anyio.sleep(1.1)
        out = await interleave(
            {"manager": m_ping, "ib": lambda: baselines.ib_call(ib, "ping"), "echo": e_ping},
            rounds=sz.ping_rounds,
            warmup=10,
            period=period,
        )
    fig = figs["ping_rtt"]
    value = fig.measured(out["manager"])
    fig.baseline = summarize(out["ib"])
    echo_s = summarize(out["echo"])
    fig.others = {"bare echo child round trip": echo_s}
    added = value.median - fig.baseline.median
    fig.ratio = added / echo_s.median
    fig.extra["added latency median (ms)"] = round(added, 4)
    fig.extra["reqCurrentTime timed inside the worker, median (ms)"] = round(
        summarize(out["inside"]).median, 4
    )
    fig.notes.append(THROTTLE_NOTE_PACED.format(period=period * 1000, rate=1 / period))
    fig.judge(fig.ratio <= 1.5)


# --------------------------------------------------------------------------------------------
# Cold connect, and on the same managers: SIGKILL detection and recovery

PHASES = (
    "manager start (lock, stale-worker check)",
    "spawn -> worker ready",
    "connect (handshake + sync) through the worker",
)


async def group_cold(ctx: Context, figs: dict[str, Figure]) -> None:
    """IDLE -> CONNECTED vs a fresh `import ib_async; IB().connect()`; then SIGKILL the worker."""
    sz = ctx.sizes
    calls = 0

    async def manager_sample() -> dict[str, float]:
        nonlocal calls
        calls += 1
        s = settings_for(ctx, ctx.client_id(), backoff_jitter=0.0)
        t0 = time.monotonic_ns()
        async with ConnectionManager(s) as m:
            await m.wait_connected(timeout=60)
            got = {"cold": ms_since(t0)}
            at = _history_marks(m.history)
            steps = (t0, at[State.SPAWNING], at[State.HANDSHAKING], at[State.CONNECTED])
            for name, a, b in zip(PHASES, steps, steps[1:], strict=False):
                got[name] = (b - a) / 1e6
            # Call 1 is the interleave's warm-up round; the next kill_rounds crash the worker.
            if 1 < calls <= 1 + sz.kill_rounds:
                k = await kill_worker(m)
                got.update(detect=k.detect_ms, recover=k.recover_ms)
        return got

    async def fresh_sample() -> dict[str, float]:
        got = await baselines.fresh_connect(HOST, ctx.port, ctx.client_id())
        return {
            "fresh": got["total_ms"],
            "fresh_import": got["import_ms"],
            "fresh_connect": got["connect_ms"],
        }

    got = await interleave({"manager": manager_sample, "fresh": fresh_sample}, rounds=sz.cold_rounds)
    ctx.results["cold_ms"] = got["cold"]
    ctx.results["recover_ms"] = got["recover"]

    fig = figs["cold_connect"]
    fig.judge(fig.compared(got["cold"], got["fresh"]) <= 1.15)
    fig.extra["fresh process: import ib_async median (ms)"] = round(summarize(got["fresh_import"]).median, 1)
    fig.extra["fresh process: IB().connect median (ms)"] = round(summarize(got["fresh_connect"]).median, 1)
    for name in PHASES:
        fig.extra[f"manager: {name} median (ms)"] = round(summarize(got[name]).median, 1)

    figs["detect_kill"].judge(figs["detect_kill"].measured(got["detect"]).median <= 50)
    _judge_recovery(figs["recovery_kill"], got["recover"], got["cold"])


# --------------------------------------------------------------------------------------------
# Detection of Gateway-side failures


async def _detect_sim_fault(
    ctx: Context, fault: str, restore: str | None, *, timeout: float, delay: float = 0.0, **changes: Any
) -> float:
    """Connect a fresh manager, wait `delay` s, inject `fault` in the sim, time until
    DEGRADED_RED (ms)."""
    s = settings_for(ctx, ctx.client_id(), **changes)
    async with ConnectionManager(s) as m:
        await m.wait_connected(timeout=60)
        if delay:
            await anyio.sleep(delay)  # the phase of the fault against the probe schedule
        red_at: list[int] = []

        async def watch() -> None:
            await m.wait_for(State.DEGRADED_RED, timeout=timeout)
            red_at.append(time.monotonic_ns())

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(watch)
                await anyio.sleep(0)
                got = await ctx.sim.call(fault)
        finally:
            if restore:
                await ctx.sim.call(restore)
        return (red_at[0] - int(got["t0_ns"])) / 1e6


async def group_gateway_close(ctx: Context, figs: dict[str, Figure]) -> None:
    got = await interleave(
        {"close": lambda: _detect_sim_fault(ctx, "drop_all", None, timeout=10)}, rounds=ctx.sizes.close_rounds
    )
    fig = figs["detect_gateway_close"]
    fig.judge(fig.measured(got["close"]).median <= 50)
    fig.notes.append("t0 = just before the simulator closes every session (sim.drop_all)")


async def group_silent(ctx: Context, figs: dict[str, Figure]) -> None:
    fig = figs["detect_silent"]
    changes: dict[str, Any] = {}
    if ctx.sizes.silent_probe is not None:
        changes = {"probe_interval": ctx.sizes.silent_probe[0], "probe_timeout": ctx.sizes.silent_probe[1]}
    s = Settings(**changes)
    budget_s = s.probe_interval + s.probe_timeout
    n = ctx.sizes.silent_rounds
    out = []
    for i in range(n):
        # Stratified phase: the fault lands at (i + 0.5)/n of the way to the first probe, so
        # the samples cover the probe cycle evenly instead of all hitting its worst case.
        phase = (i + 0.5) / n * s.probe_interval
        out.append(
            await _detect_sim_fault(ctx, "go_red", "restart", timeout=budget_s + 10, delay=phase, **changes)
            / 1000
        )
    value = fig.measured(out)
    fig.baseline = summarize([WATCHDOG_DEFAULT_S])  # analytic, not measured
    fig.ratio = value.median / WATCHDOG_DEFAULT_S
    fig.extra["probe interval + probe timeout (s)"] = budget_s
    fig.extra["worst sample (s)"] = round(value.max, 3)
    slack = 0.05
    fig.notes.append(
        f"PASS needs the median within the budget and every sample within it "
        f"plus {slack * 1000:.0f} ms of timer wake-up; the fault is injected at "
        "evenly spread phases of the probe cycle"
    )
    fig.judge(value.median <= budget_s and value.max <= budget_s + slack and value.max < WATCHDOG_DEFAULT_S)
    fig.target = f"<= {budget_s:g} s (probe interval + timeout) and < 24 s"
    if changes:
        fig.notes.append(
            f"--quick shortens the probe to interval {changes['probe_interval']:g} s"
            f" + timeout {changes['probe_timeout']:g} s (defaults "
            f"{Settings().probe_interval:g} + {Settings().probe_timeout:g} s); the "
            "full run uses the defaults"
        )
    fig.notes.append(
        "sim.go_red: the API layer stops answering (TCP stays up); the Watchdog "
        "figure is its defaults' worst case, not measured; one probe per interval "
        "is far under the 45 msg/s throttle"
    )


# --------------------------------------------------------------------------------------------
# Warm spare: the manager's own option (Settings.warm_spare)

# One warm-spare manager is killed once per sample. A short stable_period lets its backoff reset
# between samples, so each respawn waits the first backoff step, as recovery_kill's do.
SPARE_STABLE_S = 0.1


async def _ready_spare(m: ConnectionManager, timeout: float = 30.0) -> Any:
    """The manager's spare once it has said `ready` and the backoff is back to its first step.

    Polled: neither is a state change the manager publishes."""
    with anyio.fail_after(timeout):
        while True:
            spare = m._spare
            if spare is not None and spare.ready_pid is not None and m.metrics()["failures"] == 0:
                return spare
            await anyio.sleep(0.005)


async def group_spare(ctx: Context, figs: dict[str, Figure]) -> None:
    """SIGKILL the session worker of a warm_spare=True manager once its spare is ready: the
    core's retry -> CONNECTED (adopt the spare, connect through it) vs in-process connectAsync,
    and SIGKILL -> CONNECTED against recovery_kill's budget."""
    sz = ctx.sizes
    s = settings_for(ctx, ctx.client_id(), warm_spare=True, backoff_jitter=0.0, stable_period=SPARE_STABLE_S)
    async with baselines.ib_child() as ib, ConnectionManager(s) as m:
        await m.wait_connected(timeout=60)

        async def spare_sample() -> dict[str, float]:
            spare = await _ready_spare(m)
            adopted = m.metrics()["spares_adopted"]
            k = await kill_worker(m)
            now_adopted = m.metrics()["spares_adopted"]
            if m.worker_pid != spare.pid or now_adopted != adopted + 1:
                raise RuntimeError(
                    f"the ready spare (pid {spare.pid}) was not adopted: worker "
                    f"{m.worker_pid}, spares_adopted {adopted} -> {now_adopted}"
                )
            return {
                "spare": k.respawn_ms,
                "spare_recover": k.recover_ms,
                "adopt": k.ready_ms,
                "connect": k.respawn_ms - k.ready_ms,
            }

        async def ib_sample() -> float:
            await _ready_spare(m)  # the next spare's start-up must not load the machine meanwhile
            return await baselines.ib_call(ib, "connect", host=HOST, port=ctx.port, client_id=ctx.client_id())

        # Warm-up: the manager's first connect and first spare, and one in-process connect. A
        # warm-up round of kills would cost a backoff step each and teach nothing new: every
        # sample adopts a fresh spare process anyway.
        await ib_sample()
        got = await interleave({"spare": spare_sample, "ib": ib_sample}, rounds=sz.spare_rounds, warmup=0)
        counts = m.metrics()

    fig = figs["warm_spare"]
    fig.compared(got["spare"], got["ib"])  # the ratio is context; the target is absolute
    fig.judge(summarize(got["spare"]).median <= 20)
    fig.extra["of which: retry -> HANDSHAKING (adopt the ready spare), median (ms)"] = round(
        summarize(got["adopt"]).median, 2
    )
    fig.extra["of which: HANDSHAKING -> CONNECTED (connect through it), median (ms)"] = round(
        summarize(got["connect"]).median, 2
    )
    fig.extra["spares spawned / adopted"] = f"{counts['spares_spawned']} / {counts['spares_adopted']}"
    fig.notes.append(
        "one ConnectionManager with warm_spare=True; per sample: wait until its "
        "spare has said `ready`, SIGKILL the session worker; value = the core's "
        "retry (DEGRADED_RED -> SPAWNING) to CONNECTED from the manager's history: "
        "adopting the spare, then the handshake and start-up sync through it"
    )
    fig.notes.append(
        f"stable_period {SPARE_STABLE_S:g} s on this manager so its backoff "
        "resets between samples (each retry waits the first step); the bench "
        "waits for that too, and takes each in-process sample only once the next "
        "spare is ready, so neither side shares the machine with a spare's start-up"
    )

    fig = figs["recovery_kill_spare"]
    if "cold_ms" not in ctx.results:
        fig.unmeasured(NA, "its budget needs the cold connect group in the same run")
        return
    value = _judge_recovery(fig, got["spare_recover"], ctx.results["cold_ms"])
    cold_recovery = summarize(ctx.results["recover_ms"])
    fig.others = {"recovery_kill (no spare), this run": cold_recovery}
    fig.extra["saved against recovery_kill, median (ms)"] = round(cold_recovery.median - value.median, 1)
    fig.notes.append(
        "the same warm-spare manager and samples as warm_spare; what the spare "
        "saves is the worker's interpreter start and `import ib_async`"
    )


# --------------------------------------------------------------------------------------------
# Memory and scale (in child processes; RSS read by the parent with psutil)


async def _managers_child(ctx: Context, n: int) -> dict[str, Any]:
    """Run `mem_child.py managers n`; returns its report plus child and worker RSS."""
    cid = ctx.client_id(n)
    return await baselines.child_event(
        [
            sys.executable,
            "-u",
            str(baselines.HERE / "mem_child.py"),
            "managers",
            str(n),
            str(ctx.port),
            str(cid),
            str(ctx.state_dir),
            ctx.backend,
            str(BENCH_MIN_SESSION),
        ],
        "ready",
        timeout=120 + 10 * n,
        settle=0.2,
        stderr_to_null=False,
    )


async def group_memory(ctx: Context, figs: dict[str, Figure]) -> None:
    async def s_idle() -> float:
        return await baselines.idle_anyio_rss(backend=ctx.backend)

    async def s_fresh() -> float:
        got = await baselines.fresh_connect(HOST, ctx.port, ctx.client_id(), keep=0.2)
        return got["rss"]

    async def s_mgr() -> dict[str, float]:
        ev = await _managers_child(ctx, 1)
        return {"trader": ev["rss"], "worker": ev["worker_rss"][0]}

    got = await interleave(
        {"idle": s_idle, "fresh": s_fresh, "mgr": s_mgr}, rounds=ctx.sizes.mem_rounds, warmup=0
    )
    ctx.results["idle_rss"] = got["idle"]

    fig = figs["mem_manager"]
    value = fig.measured([(t - i) / MIB for t, i in zip(got["trader"], got["idle"], strict=False)])
    fig.baseline = summarize([v / MIB for v in got["idle"]])
    fig.others = {"manager process RSS (absolute)": summarize([v / MIB for v in got["trader"]])}
    fig.judge(value.median <= 15)
    fig.notes.append(
        "value = RSS of an anyio process running one CONNECTED manager minus the "
        "RSS of an idle anyio process, paired by round"
    )

    fig = figs["mem_worker"]
    fig.judge(fig.compared([v / MIB for v in got["worker"]], [v / MIB for v in got["fresh"]]) <= 1.1)


async def group_scale(ctx: Context, figs: dict[str, Figure]) -> None:
    if not ctx.results.get("idle_rss"):
        ctx.results["idle_rss"] = [await baselines.idle_anyio_rss(backend=ctx.backend)]
    idle_mib = summarize(ctx.results["idle_rss"]).median / MIB

    async def sample(n: int) -> dict[str, Any]:
        ev = await _managers_child(ctx, n)
        return {
            f"connect {n}": ev["connect_ms"],
            f"all {n}": ev["all_ms"],
            f"rss {n}": ev["rss"] / MIB,
            f"worker {n}": [v / MIB for v in ev["worker_rss"]],
        }

    ns = ctx.sizes.scale_ns
    got = await interleave(
        {str(n): functools.partial(sample, n) for n in ns}, rounds=ctx.sizes.scale_rounds, warmup=0
    )
    n1 = ns[0]
    one_all = summarize(got[f"all {n1}"]).median
    one_rss = summarize(got[f"rss {n1}"]).median
    for n in ns:
        fig = figs[f"scale_{n}"]
        fig.compared(got[f"connect {n}"], got[f"connect {n1}"])
        all_med = summarize(got[f"all {n}"]).median
        rss_med = summarize(got[f"rss {n}"]).median
        fig.ratio = all_med / one_all
        fig.status = INFO
        fig.extra["all connected (ms)"] = round(all_med, 1)
        fig.extra["trader-side RSS over an idle anyio process (MiB)"] = round(rss_med - idle_mib, 2)
        fig.extra["worker RSS each (MiB)"] = round(summarize(got[f"worker {n}"]).median, 1)
        if n > n1:
            fig.extra["time growth per added manager (ms)"] = round((all_med - one_all) / (n - n1), 1)
            fig.extra["trader-side RSS growth per added manager (MiB)"] = round(
                (rss_med - one_rss) / (n - n1), 2
            )
    figs[f"scale_{n1}"].notes.append(
        "each N runs in a fresh anyio process that starts N managers at once (client ids "
        "distinct); value = each manager's time to CONNECTED; RSS read by the bench with psutil"
    )


# --------------------------------------------------------------------------------------------
# The sans-IO core alone


def core_events_per_second(duration: float = 0.25) -> tuple[float, int]:
    """Drive ConnectionCore through a scripted life for `duration` s; (events/s, events).

    One cycle: start, worker_ready, handshake_ok, 3 x (tick -> SendProbe, probe_ok),
    session_lost, tick (retry: retire the live worker), worker_exited (-> spawn), worker_ready,
    handshake_ok, worker_exited (crash), tick (retry -> spawn), worker_ready, handshake_ok,
    shutdown, worker_exited. Every input, tick included, counts as one event.
    """
    core = ConnectionCore(Settings(), rng=random.Random(1))
    clock = [1_000_000_000]

    def at_deadline() -> int:
        nd = core.next_deadline()
        clock[0] = max(clock[0] + 1, nd if nd is not None else clock[0] + 1)
        return clock[0]

    def later(ns: int = 1_000_000) -> int:
        clock[0] += ns
        return clock[0]

    def cycle() -> int:
        core.start(later())
        core.worker_ready(later(), 4242)
        core.handshake_ok(later())
        for _ in range(3):
            core.tick(at_deadline())
            core.probe_ok(later())
        core.session_lost(later())
        core.tick(at_deadline())
        core.worker_exited(later())
        core.worker_ready(later(), 4243)
        core.handshake_ok(later())
        core.worker_exited(later())
        core.tick(at_deadline())
        core.worker_ready(later(), 4244)
        core.handshake_ok(later())
        core.shutdown(later())
        core.worker_exited(later())
        return 19

    # Check once that the script walks the states it claims to (else the figure is wrong).
    first = len(core.history)
    cycle()
    walked = [t.dest for t in list(core.history)[first:]]
    connect = [State.SPAWNING, State.HANDSHAKING, State.CONNECTED]
    expected = [*connect, State.DEGRADED_RED, *connect, State.DEGRADED_RED, *connect, State.IDLE]
    if walked != expected:
        raise RuntimeError(f"core script walked {walked}, expected {expected}")

    events = 0
    t0 = time.perf_counter()
    deadline = t0 + duration
    while time.perf_counter() < deadline:
        for _ in range(10):
            events += cycle()
    elapsed = time.perf_counter() - t0
    return events / elapsed, events


async def group_core(ctx: Context, figs: dict[str, Figure]) -> None:
    async def sample() -> float:
        rate, _ = core_events_per_second()
        await anyio.sleep(0)
        return rate

    got = await interleave({"core": sample}, rounds=ctx.sizes.core_rounds)
    fig = figs["core_events"]
    fig.judge(fig.measured(got["core"]).median >= 20_000)
    fig.notes.append(
        "a scripted life of 19 inputs (connect, 3 probes, peer close, retry, "
        "worker crash, retry, shutdown) on a fake integer-ns clock; every input, "
        "tick included, is one event"
    )


# --------------------------------------------------------------------------------------------
# The figure table: key -> (title, unit, target, baseline label, ratio label), and the groups

RECOVERY_TARGET = "<= cold + 1st backoff + 100 ms"
RECOVERY_RATIO = "median / (cold median + first backoff step + 100 ms)"

FIGURES: list[tuple[str, str, str, str, str, str]] = [
    (
        "cold_connect",
        "cold connect IDLE->CONNECTED",
        "ms",
        "ratio <= 1.15",
        "fresh process `import ib_async; IB().connect()` to the same sim, spawn -> connected",
        "manager median / fresh-process median",
    ),
    (
        "warm_spare",
        "warm spare: connect when a pre-spawned worker is waiting",
        "ms",
        "<= 20 ms median",
        "in-process ib_async connectAsync (timed inside the process)",
        "spare median / in-process median (context only)",
    ),
    (
        "ping_rtt",
        "ping manager->worker->sim",
        "ms",
        "added <= 1.5 x echo RTT",
        "in-process ib_async reqCurrentTimeAsync (+ bare echo child, below)",
        "(manager median - in-process median) / bare echo median",
    ),
    (
        "status_rtt",
        "manager-only round trip (status)",
        "ms",
        "ratio <= 1.5",
        "bare anyio JSON-lines echo child",
        "manager median / echo median",
    ),
    (
        "throughput_32",
        "throughput, 32 callers, status",
        "req/s",
        "ratio >= 0.7",
        "bare echo child, 32 callers",
        "manager median / echo median",
    ),
    ("detect_kill", "detect: worker SIGKILL -> RED", "ms", "<= 50 ms median", "—", ""),
    ("detect_gateway_close", "detect: Gateway closes session -> RED", "ms", "<= 50 ms median", "—", ""),
    (
        "detect_silent",
        "detect: Gateway goes silent -> RED",
        "s",
        "<= probe interval + timeout, < 24 s",
        "ib_async Watchdog defaults: 20 s idle + 4 s probe (analytic worst case)",
        "median / Watchdog's 24 s",
    ),
    (
        "recovery_kill",
        "recovery: worker SIGKILL -> CONNECTED",
        "ms",
        RECOVERY_TARGET,
        "cold connect (this run)",
        RECOVERY_RATIO,
    ),
    (
        "recovery_kill_spare",
        "recovery: worker SIGKILL -> CONNECTED, warm spare",
        "ms",
        RECOVERY_TARGET,
        "cold connect (this run)",
        RECOVERY_RATIO,
    ),
    (
        "mem_manager",
        "memory: trader RSS added by a manager",
        "MiB",
        "<= 15 MiB",
        "idle anyio process RSS",
        "",
    ),
    (
        "mem_worker",
        "memory: worker RSS",
        "MiB",
        "ratio <= 1.1",
        "fresh `import ib_async; IB().connect()` process RSS, connected",
        "worker median / fresh-process median",
    ),
    ("core_events", "core: events/s through the sans-IO machine", "events/s", ">= 20,000", "—", ""),
    (
        "scale_1",
        "scale: 1 manager connecting",
        "ms",
        "report",
        "1 manager",
        "all-connected time / 1 manager's",
    ),
    (
        "scale_4",
        "scale: 4 managers at once",
        "ms",
        "report",
        "1 manager (connect time)",
        "all-connected time / 1 manager's",
    ),
    (
        "scale_16",
        "scale: 16 managers at once",
        "ms",
        "report",
        "1 manager (connect time)",
        "all-connected time / 1 manager's",
    ),
]

GROUPS: list[tuple[str, Callable[[Context, dict[str, Figure]], Awaitable[None]], list[str]]] = [
    ("core", group_core, ["core_events"]),
    ("round trips", group_rtt, ["status_rtt", "throughput_32"]),
    ("ping", group_ping, ["ping_rtt"]),
    ("cold connect / kill / recovery", group_cold, ["cold_connect", "detect_kill", "recovery_kill"]),
    ("warm spare", group_spare, ["warm_spare", "recovery_kill_spare"]),
    ("gateway close", group_gateway_close, ["detect_gateway_close"]),
    ("memory", group_memory, ["mem_manager", "mem_worker"]),
    ("scale", group_scale, ["scale_1", "scale_4", "scale_16"]),
    ("silent gateway", group_silent, ["detect_silent"]),
]


def new_figures() -> dict[str, Figure]:
    return {
        key: Figure(key=key, title=title, unit=unit, target=target, baseline_label=blabel, ratio_label=rlabel)
        for key, title, unit, target, blabel, rlabel in FIGURES
    }
