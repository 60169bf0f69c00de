"""The figures: each group measures one or more figures against baselines in the same run.

A group gets a `Context` and fills in its `Figure`s (bench/spec.py says what each one is and the
target that judges it). An exception in a group is a failure of that group: the runner reports
its figures as error rows and the run exits 1.
"""

from __future__ import annotations

import functools
import random
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from fsm.core import ConnectionCore, State
from fsm.manager import ConnectionManager
from fsm.settings import Settings

from . import baselines, trading
from .harness import (
    BENCH_MIN_SESSION,
    HOST,
    Context,
    KillSample,
    history_marks,
    kill_settings,
    kill_worker,
    settings_for,
    until_stable,
)
from .report import INFO, Figure
from .spec import SILENT_SLACK_MS, WATCHDOG_DEFAULT_S
from .stats import interleave, ms_since, summarize

MIB = 1024 * 1024

THROTTLE_NOTE_PACED = (
    "ib_async's 45 msg/s throttle is NOT bypassed: pings go out one per client every "
    "{period:.0f} ms ({rate:.0f}/s) in the worker and in the in-process baseline alike"
)


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
    fig.judge(fig.compared(got_rtt["manager"], got_rtt["echo"]))
    fig.notes.append(
        "`status` is answered by the worker without a Gateway message, so "
        "ib_async's 45 msg/s throttle does not apply"
    )
    fig = figs["throughput_32"]
    fig.judge(fig.compared(got_tp["manager"], got_tp["echo"]))
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
    echo_s = fig.baseline = summarize(out["echo"])
    ib_s = summarize(out["ib"])
    fig.others = {"in-process ib_async reqCurrentTimeAsync": ib_s}
    added = value.median - ib_s.median
    fig.extra["added latency median (ms)"] = round(added, 4)
    fig.extra["reqCurrentTime timed inside the worker, median (ms)"] = round(
        summarize(out["inside"]).median, 4
    )
    fig.notes.append(THROTTLE_NOTE_PACED.format(period=period * 1000, rate=1 / period))
    fig.judge(added / echo_s.median)


# --------------------------------------------------------------------------------------------
# Cold connect, and on the same managers: SIGKILL detection and recovery

PHASES = (
    "manager start (lock, stale-worker check)",
    "spawn -> worker ready",
    "connect (handshake + sync) through the worker",
)


def _kill_extras(fig: Figure, kills: list[KillSample]) -> None:
    fast = sum(k.fast for k in kills)
    fig.extra["respawned at once (no backoff step)"] = f"{fast} / {len(kills)}"
    fig.extra["of which: SPAWNING -> CONNECTED, median (ms)"] = round(
        summarize([k.respawn_ms for k in kills]).median, 2
    )


async def group_cold(ctx: Context, figs: dict[str, Figure]) -> None:
    """IDLE -> CONNECTED vs a fresh `import ib_async; IB().connect()`; then, once the session is
    stable, SIGKILL the worker and time detection and recovery."""
    sz = ctx.sizes
    calls = 0
    kills: list[KillSample] = []

    async def manager_sample() -> dict[str, float]:
        nonlocal calls
        calls += 1
        t0 = time.monotonic_ns()
        async with ConnectionManager(kill_settings(ctx, ctx.client_id())) as m:
            await m.wait_connected(timeout=60)
            got = {"cold": ms_since(t0)}
            at = history_marks(m.history)
            steps = (t0, at[State.SPAWNING], at[State.HANDSHAKING], at[State.CONNECTED])
            for name, a, b in zip(PHASES, steps, steps[1:], strict=False):
                got[name] = (b - a) / 1e6
            # Call 1 is the interleave's warm-up round; the next kill_rounds crash the worker.
            if 1 < calls <= 1 + sz.kill_rounds:
                await until_stable(m)
                k = await kill_worker(m)
                kills.append(k)
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
    fig.judge(fig.compared(got["cold"], got["fresh"]))
    fig.extra["fresh process: import ib_async median (ms)"] = round(summarize(got["fresh_import"]).median, 1)
    fig.extra["fresh process: IB().connect median (ms)"] = round(summarize(got["fresh_connect"]).median, 1)
    for name in PHASES:
        fig.extra[f"manager: {name} median (ms)"] = round(summarize(got[name]).median, 1)

    fig = figs["detect_kill"]
    fig.judge(fig.measured(got["detect"]).median)
    fig.notes.append("t = the manager's own timestamp of the worker's exit (its transition out of CONNECTED)")

    fig = figs["recovery_kill"]
    fig.compared(got["recover"], got["cold"])
    assert fig.value is not None and fig.baseline is not None
    fig.judge(fig.value.median - fig.baseline.median)
    _kill_extras(fig, kills)


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
    fig.judge(fig.measured(got["close"]).median)
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
    budget = budget_s + SILENT_SLACK_MS / 1000
    fig.baseline = summarize([budget])  # analytic, not measured
    fig.others = {
        "ib_async Watchdog defaults: 20 s idle + 4 s probe (analytic)": summarize([WATCHDOG_DEFAULT_S])
    }
    fig.extra["probe interval + probe timeout (s)"] = budget_s
    fig.notes.append("the fault is injected at evenly spread phases of the probe cycle")
    fig.judge(value.max / budget)
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


async def _ready_spare(m: ConnectionManager, timeout: float = 30.0) -> int:
    """The pid of the manager's spare once it has said `ready` (polled: not a state change the
    manager publishes)."""
    with anyio.fail_after(timeout):
        while (pid := m.spare_pid) is None:
            await anyio.sleep(0.005)
        return pid


async def group_spare(ctx: Context, figs: dict[str, Figure]) -> None:
    """SIGKILL the stable session worker of a warm_spare=True manager once its spare is ready:
    SPAWNING -> CONNECTED (adopt the spare, connect through it) vs in-process connectAsync, and
    SIGKILL -> CONNECTED."""
    sz = ctx.sizes
    kills: list[KillSample] = []
    s = kill_settings(ctx, ctx.client_id(), warm_spare=True)
    async with baselines.ib_child() as ib, ConnectionManager(s) as m:
        await m.wait_connected(timeout=60)

        async def spare_sample() -> dict[str, float]:
            await until_stable(m)
            spare = await _ready_spare(m)
            adopted = m.metrics()["spares_adopted"]
            k = await kill_worker(m)
            now_adopted = m.metrics()["spares_adopted"]
            if m.worker_pid != spare or now_adopted != adopted + 1:
                raise RuntimeError(
                    f"the ready spare (pid {spare}) was not adopted: worker "
                    f"{m.worker_pid}, spares_adopted {adopted} -> {now_adopted}"
                )
            kills.append(k)
            return {
                "spare": k.respawn_ms,
                "spare_recover": k.recover_ms,
                "adopt": k.ready_ms,
                "connect": k.respawn_ms - k.ready_ms,
            }

        async def ib_sample() -> float:
            await _ready_spare(m)  # the next spare's start-up must not load the machine meanwhile
            return await baselines.ib_call(ib, "connect", host=HOST, port=ctx.port, client_id=ctx.client_id())

        # Warm-up: the manager's first connect and first spare, and one in-process connect. Every
        # sample adopts a fresh spare process, so a warm-up round of kills would teach nothing.
        await ib_sample()
        got = await interleave({"spare": spare_sample, "ib": ib_sample}, rounds=sz.spare_rounds, warmup=0)
        counts = m.metrics()

    fig = figs["warm_spare"]
    fig.judge(fig.compared(got["spare"], got["ib"]))
    fig.extra["of which: SPAWNING -> HANDSHAKING (adopt the ready spare), median (ms)"] = round(
        summarize(got["adopt"]).median, 2
    )
    fig.extra["of which: HANDSHAKING -> CONNECTED (connect through it), median (ms)"] = round(
        summarize(got["connect"]).median, 2
    )
    fig.extra["spares spawned / adopted"] = f"{counts['spares_spawned']} / {counts['spares_adopted']}"
    fig.notes.append(
        "one ConnectionManager with warm_spare=True; per sample: wait until its session is "
        "stable and its spare has said `ready`, SIGKILL the session worker; value = the "
        "manager's entry into SPAWNING to CONNECTED, from its state changes: adopting the "
        "spare, then the handshake and start-up sync through it; each in-process sample is "
        "taken once the next spare is ready, so neither side shares the machine with a "
        "spare's start-up"
    )

    fig = figs["recovery_kill_spare"]
    value = fig.measured(got["spare_recover"])
    if "cold_ms" in ctx.results:
        fig.baseline = summarize(ctx.results["cold_ms"])
        cold_recovery = summarize(ctx.results["recover_ms"])
        fig.others = {"recovery_kill (no spare), this run": cold_recovery}
        fig.extra["saved against recovery_kill, median (ms)"] = round(cold_recovery.median - value.median, 1)
    fig.judge(value.median)
    _kill_extras(fig, kills)
    fig.notes.append(
        "the same warm-spare manager and samples as warm_spare; what the spare "
        "saves is the worker's interpreter start and `import ib_async`"
    )


# --------------------------------------------------------------------------------------------
# Memory and scale (in child processes; RSS read by the parent with psutil)


async def _managers_child(ctx: Context, n: int) -> dict[str, Any]:
    """Run `bench.mem_child managers n`; returns its report plus child and worker RSS."""
    cid = ctx.client_id(n)
    return await baselines.child_event(
        [
            sys.executable,
            "-u",
            "-m",
            "bench.mem_child",
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
    fig.judge(value.median)
    fig.notes.append(
        "value = RSS of an anyio process running one CONNECTED manager minus the "
        "RSS of an idle anyio process, paired by round"
    )

    fig = figs["mem_worker"]
    fig.judge(fig.compared([v / MIB for v in got["worker"]], [v / MIB for v in got["fresh"]]))


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
        fig.status = INFO
        fig.extra["all connected (ms)"] = round(all_med, 1)
        fig.extra["all connected / 1 manager's"] = round(all_med / one_all, 2)
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
    fig.judge(fig.measured(got["core"]).median)
    fig.notes.append(
        "a scripted life of 19 inputs (connect, 3 probes, peer close, retry, "
        "worker crash, retry, shutdown) on a fake integer-ns clock; every input, "
        "tick included, is one event"
    )


# --------------------------------------------------------------------------------------------
# The groups, in the order they run

GROUPS: list[tuple[str, Callable[[Context, dict[str, Figure]], Awaitable[None]], list[str]]] = [
    ("core", group_core, ["core_events"]),
    ("round trips", group_rtt, ["status_rtt", "throughput_32"]),
    ("ping", group_ping, ["ping_rtt"]),
    ("cold connect / kill / recovery", group_cold, ["cold_connect", "detect_kill", "recovery_kill"]),
    ("warm spare", group_spare, ["warm_spare", "recovery_kill_spare"]),
    ("gateway close", group_gateway_close, ["detect_gateway_close"]),
    ("memory", group_memory, ["mem_manager", "mem_worker"]),
    ("scale", group_scale, ["scale_1", "scale_4", "scale_16"]),
    *trading.GROUPS,
    ("silent gateway", group_silent, ["detect_silent"]),
]
