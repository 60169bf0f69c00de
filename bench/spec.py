"""What each figure measures and the target it must meet, as values that render their own text.

The table, the README block and the verdict all come from these values, so no prose about a
target can drift from the code that judges it. Groups (bench/figures.py) compute the number a
target judges (`Target.stat`) and call `Figure.judge(x)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .report import Figure
from .target import Target

# Bench managers' stable_period: the session must be stable (CONNECTED this long) before the
# recovery figures kill its worker, so the core respawns at once (issue 15's rule).
BENCH_STABLE_S = 0.1
# Timer wake-up allowed on top of probe interval + probe timeout for the slowest detection.
SILENT_SLACK_MS = 50
WATCHDOG_DEFAULT_S = 20.0 + 4.0  # ib_async Watchdog: appTimeout 20 s idle, then probeTimeout 4 s


@dataclass(frozen=True, slots=True)
class Spec:
    """One figure: what it measures, what its baseline is, and its target (None: report only)."""

    key: str
    title: str
    unit: str
    target: Target | None
    baseline: str = "—"  # how the baseline is measured


IB_CONNECT = "in-process ib_async connect"
INPROC = "in-process ib_async"
# place -> acknowledged: what the manager must add is one round trip to the worker (~0.2-0.5 ms,
# see status_rtt) and its journal: the intent fsync'd before the send (issue 14: never lost, never
# doubled; ~0.5-1 ms on an SSD); the ack record is fsync'd off the caller's path. The tail allows
# a scheduler hiccup in each of the three processes involved.
ORDER_P50_ADDED_MS = 2.0
ORDER_P99_ADDED_MS = 10.0
COLD = "cold connect"
SPECS: tuple[Spec, ...] = (
    Spec(
        "cold_connect",
        "cold connect IDLE->CONNECTED",
        "ms",
        Target("<=", 1.15, "x", "fresh-process ib_async connect"),
        "fresh process `import ib_async; IB().connect()` to the same sim, spawn -> connected",
    ),
    Spec(
        "warm_spare",
        "warm spare: connect when a pre-spawned worker is waiting",
        "ms",
        Target("<=", 2.0, "x", IB_CONNECT),
        "in-process ib_async `connectAsync` (timed inside its process)",
    ),
    Spec(
        "ping_rtt",
        "ping manager->worker->sim",
        "ms",
        Target("<=", 1.5, "x", "bare echo round trip", stat="added latency over in-process ib_async"),
        "bare anyio JSON-lines echo child round trip (in-process ib_async `reqCurrentTimeAsync` below)",
    ),
    Spec(
        "status_rtt",
        "manager-only round trip (status)",
        "ms",
        Target("<=", 1.5, "x", "bare echo round trip"),
        "bare anyio JSON-lines echo child",
    ),
    Spec(
        "throughput_32",
        "throughput, 32 callers, status",
        "req/s",
        Target(">=", 0.7, "x", "bare echo throughput"),
        "bare echo child, 32 callers",
    ),
    Spec(
        "detect_kill",
        "detect: worker SIGKILL -> out of CONNECTED",
        "ms",
        Target("<=", 50, "ms"),
    ),
    Spec(
        "detect_gateway_close",
        "detect: Gateway closes session -> RED",
        "ms",
        Target("<=", 50, "ms"),
    ),
    Spec(
        "detect_silent",
        "detect: Gateway goes silent -> RED",
        "s",
        Target(
            "<=",
            1.0,
            "x",
            f"probe interval + probe timeout + {SILENT_SLACK_MS} ms",
            stat="slowest sample",
        ),
        "the manager's probe budget (analytic; ib_async's Watchdog defaults below)",
    ),
    Spec(
        "recovery_kill",
        "recovery: worker SIGKILL -> CONNECTED (stable session)",
        "ms",
        Target("<=", 100, "ms", COLD),
        "cold connect IDLE->CONNECTED, this run",
    ),
    Spec(
        "recovery_kill_spare",
        "recovery: worker SIGKILL -> CONNECTED, warm spare (stable session)",
        "ms",
        Target("<=", 50, "ms"),
        "cold connect IDLE->CONNECTED, this run (context)",
    ),
    Spec(
        "mem_manager",
        "memory: trader RSS added by a manager",
        "MiB",
        Target("<=", 15, "MiB"),
        "idle anyio process RSS",
    ),
    Spec(
        "mem_worker",
        "memory: worker RSS",
        "MiB",
        Target("<=", 1.1, "x", "fresh-process ib_async RSS"),
        "fresh `import ib_async; IB().connect()` process RSS, connected",
    ),
    Spec(
        "core_events",
        "core: events/s through the sans-IO machine",
        "events/s",
        Target(">=", 20_000, "events/s"),
    ),
    Spec(
        "quote_latency",
        "quote: simulator push -> trader's async for, p50 added",
        "ms",
        Target("<=", 0.3, "ms", INPROC, stat="p50 per tick"),
        "in-process ib_async reqMktData on the same simulator, the same pushes (Ticker.updateEvent)",
    ),
    Spec(
        "quote_latency_p99",
        "quote: simulator push -> trader's async for, p99 added",
        "ms",
        Target("<=", 2.0, "ms", INPROC, stat="p99 per tick"),
        "in-process ib_async reqMktData on the same simulator, the same pushes (Ticker.updateEvent)",
    ),
    Spec(
        "tick_rate",
        "trades: highest tick rate carried without loss",
        "ticks/s",
        Target(">=", 0.8, "x", INPROC),
        "in-process ib_async reqTickByTickData 'Last', the same simulators",
    ),
    Spec(
        "history_10k",
        "historical_bars: ~10,000 1-min bars",
        "ms",
        Target("<=", 1.3, "x", INPROC),
        "in-process ib_async reqHistoricalDataAsync, the same request",
    ),
    Spec(
        "order_ack",
        "order: place -> acknowledged, p50 added",
        "ms",
        Target("<=", ORDER_P50_ADDED_MS, "ms", INPROC, stat="p50"),
        "in-process ib_async placeOrder until its orderStatus carries a permId",
    ),
    Spec(
        "order_ack_p99",
        "order: place -> acknowledged, p99 added",
        "ms",
        Target("<=", ORDER_P99_ADDED_MS, "ms", INPROC, stat="p99"),
        "in-process ib_async placeOrder until its orderStatus carries a permId",
    ),
    Spec("scale_1", "scale: 1 manager connecting", "ms", None, "1 manager"),
    Spec("scale_4", "scale: 4 managers at once", "ms", None, "1 manager (connect time)"),
    Spec("scale_16", "scale: 16 managers at once", "ms", None, "1 manager (connect time)"),
)


def new_figures() -> dict[str, Figure]:
    return {
        s.key: Figure(key=s.key, title=s.title, unit=s.unit, target=s.target, baseline_label=s.baseline)
        for s in SPECS
    }
