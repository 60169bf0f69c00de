"""Prometheus metrics for one ConnectionManager, read from ``m.metrics()`` at scrape time.

A custom Collector in a per-manager ``CollectorRegistry``: nothing global (two managers in one
process never collide, tests never leak series), no background updater (a scrape reads the
manager's own counters, so an exported value can never drift from ``m.metrics()``). Every
series carries ``host``, ``port`` and ``client_id``, so a process that serves several managers
or a fleet aggregated without relabelling keeps them apart.

Scrape from the manager's event loop (the health server does): the manager's counters are not
meant to be read from other threads while it runs.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from fsm.core import State, Transition
from fsm.settings import Settings

__all__ = ["COUNTERS", "GAUGES", "ManagerCollector", "MetricsSource", "registry_for"]

IDENTITY = ("host", "port", "client_id")

Rows = list[tuple[list[str], float]]
"""(label values, sample value) pairs of one family."""

#: Plain counters: ``m.metrics()`` key -> (metric name without ``_total``, help). A new counter
#: in the manager or the core is exported by adding one line here.
COUNTERS: Mapping[str, tuple[str, str]] = {
    "attempts": ("ibgw_connect_attempts", "Connects sent to a worker (one per spawned worker)."),
    "sessions": ("ibgw_sessions", "Sessions established (handshake completed)."),
    "retries": ("ibgw_retries", "Retries: a new worker after a failure and its backoff."),
    "red_episodes": ("ibgw_red_episodes", "Episodes in DEGRADED_RED (entries from another state)."),
    "probes_sent": ("ibgw_probes_sent", "Liveness probes sent over the session."),
    "notices_client_id_in_use": (
        "ibgw_client_id_in_use",
        "326 messages (client id already in use) from the Gateway.",
    ),
    "zombies_reaped": ("ibgw_zombies_reaped", "Stale workers of a dead manager ended, proven ours by pid."),
    "workers_spawned": ("ibgw_workers_spawned", "Worker processes adopted for a session."),
    "spawn_failures": ("ibgw_spawn_failures", "Worker processes that could not be started."),
    "fast_respawns": ("ibgw_fast_respawns", "Respawns without backoff: a stable session's worker died."),
    "stream_gaps": ("ibgw_stream_gaps", "Gaps delivered to stream readers (the flow broke and resumed)."),
    "streams_restored": ("ibgw_streams_restored", "Stream subscriptions answered again after a break."),
    "stream_items_dropped": (
        "ibgw_stream_items_dropped",
        "Stream items a slow reader lost to its buffer's bound (quotes: conflated).",
    ),
    "orders_resolved": (
        "ibgw_orders_resolved",
        "Order requests whose outcome a reconciliation or a live status settled after the call.",
    ),
    "fills_recovered": (
        "ibgw_fills_recovered",
        "Executions found by reconciliation that no live event had brought (e.g. a fill while away).",
    ),
    "reconciliations": (
        "ibgw_reconciliations",
        "Reconciliations with the broker (one after each new session).",
    ),
}

#: Plain gauges: ``m.metrics()`` key -> (metric name, help); exported when the manager has the key.
GAUGES: Mapping[str, tuple[str, str]] = {
    "requests_in_flight": ("ibgw_requests_in_flight", "request() calls waiting for an answer."),
    "failures": ("ibgw_consecutive_failures", "Failures since the last stable session (drives the backoff)."),
    "streams_open": ("ibgw_streams_open", "Streams open now (m.stream blocks entered and not left)."),
    "longest_gap_s": ("ibgw_stream_longest_gap_seconds", "The longest Gap of the streams open now."),
    "orders_in_doubt": (
        "ibgw_orders_in_doubt",
        "Order requests sent whose outcome no session has told yet (never re-sent; order_status resolves).",
    ),
}

#: Counters that share one family with a label: family -> (help, label, {label value: key}).
LABELLED_COUNTERS: Mapping[str, tuple[str, str, Mapping[str, str]]] = {
    "ibgw_worker_retirements": (
        "Worker retirements by the step that ended them (stdin EOF, SIGTERM, SIGKILL).",
        "step",
        {"eof": "retire_eof", "term": "retire_term", "kill": "retire_kill"},
    ),
    "ibgw_notices": (
        "Notices published to subscribers, by kind.",
        "kind",
        {
            "farm": "notices_farm",
            "data_lost": "notices_data_lost",
            "client_id_in_use": "notices_client_id_in_use",
            "zombie_reaped": "notices_zombie_reaped",
        },
    ),
    "ibgw_inputs_dropped": (
        "Worker inputs not applied: from a replaced worker (stale) or refused by the core (ignored).",
        "why",
        {"stale": "stale_inputs_dropped", "ignored": "inputs_ignored"},
    ),
    "ibgw_warm_spares": (
        "Warm spare workers started and adopted.",
        "event",
        {"spawned": "spares_spawned", "adopted": "spares_adopted"},
    ),
}

#: request outcome label -> the manager's total counter for it.
REQUEST_OUTCOMES: Mapping[str, str] = {
    "ok": "requests_ok",
    "failed": "requests_failed",
    "timed_out": "requests_timed_out",
}


class MetricsSource(Protocol):
    """What the collector reads: a ConnectionManager (or anything shaped like one)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def history(self) -> list[Transition]: ...

    def metrics(self) -> dict[str, Any]: ...


def wall_time(at_ns: int) -> float:
    """A core timestamp (monotonic ns) as epoch seconds."""
    return time.time() - (time.monotonic_ns() - at_ns) / 1e9


class ManagerCollector:
    """Reads one manager's ``metrics()`` and ``history`` on every scrape.

    Transitions are counted from the history, which is bounded: the collector keeps a running
    tally of what it has seen, so the counter never goes down when old entries roll out (a
    scrape at least every 10 000 transitions misses none).
    """

    def __init__(self, m: MetricsSource) -> None:
        self._m = m
        s = m.settings
        self._identity = [s.host, str(s.port), str(s.client_id)]
        self._transitions: Counter[tuple[str, str, str, str]] = Counter()
        self._last_seen: Transition | None = None

    def collect(self) -> Iterator[Metric]:
        m = self._m.metrics()
        yield from self._state(m)
        for key, (name, doc) in COUNTERS.items():
            if key in m:
                yield self._counter(name, doc, [], [([], float(m[key]))])
        for name, (doc, label, keys) in LABELLED_COUNTERS.items():
            rows = [([value], float(m[key])) for value, key in keys.items() if key in m]
            yield self._counter(name, doc, [label], rows)
        yield self._counter(
            "ibgw_red_by_reason",
            "Entries into DEGRADED_RED by reason (a new reason while already RED counts again).",
            ["reason"],
            [([reason], float(n)) for reason, n in m.get("red_by_reason", {}).items()],
        )
        yield self._counter(
            "ibgw_requests",
            "request() outcomes, by command where the manager counts per command.",
            ["command", "outcome"],
            [([command, outcome], float(n)) for (command, outcome), n in request_counts(m).items()],
        )
        yield self._counter(
            "ibgw_transitions",
            "State transitions by source, destination and reason; expected: inside a maintenance "
            "window, for a reason IB or the Gateway causes.",
            ["source", "dest", "reason", "expected"],
            [(list(key), float(n)) for key, n in sorted(self._count_transitions().items())],
        )
        yield from self._gauges(m)

    def _state(self, m: Mapping[str, Any]) -> Iterator[Metric]:
        now = m["state"]
        yield self._gauge(
            "ibgw_state",
            "1 for the manager's current state, 0 for the others.",
            ["state"],
            [([s.value], float(s.value == now)) for s in State],
        )
        time_in = m.get("time_in_state_ns", {})
        yield self._counter(
            "ibgw_time_in_state_seconds",
            "Time spent in each state since the manager started.",
            ["state"],
            [([s.value], time_in.get(s.value, 0) / 1e9) for s in State],
        )
        since = m.get("since_ns")
        if since is not None:
            yield self._gauge(
                "ibgw_state_entered_timestamp_seconds",
                "When the current state was entered (epoch seconds).",
                [],
                [([], wall_time(since))],
            )

    def _gauges(self, m: Mapping[str, Any]) -> Iterator[Metric]:
        yield self._gauge(
            "ibgw_worker_up",
            "1 while a worker process is alive.",
            [],
            [([], float(bool(m.get("worker_alive"))))],
        )
        for key, (name, doc) in GAUGES.items():
            if key in m:
                yield self._gauge(name, doc, [], [([], float(m[key]))])
        yield self._gauge(
            "ibgw_backoff_seconds",
            "The current backoff base delay (before jitter).",
            [],
            [([], m.get("backoff_ns", 0) / 1e9)],
        )
        latency = m.get("last_handshake_latency_ns")
        if latency is not None:
            yield self._gauge(
                "ibgw_last_handshake_seconds",
                "How long the last successful handshake took.",
                [],
                [([], latency / 1e9)],
            )
        if "maintenance_window" in m:  # from the core that knows maintenance windows
            yield self._gauge(
                "ibgw_maintenance",
                "1 inside a maintenance window (IB's daily reset, the Gateway's restart).",
                [],
                [([], float(m["maintenance_window"] is not None))],
            )

    def _count_transitions(self) -> Counter[tuple[str, str, str, str]]:
        history = self._m.history
        new: list[Transition] = []
        for t in reversed(history):
            if t is self._last_seen:
                break
            new.append(t)
        if history:
            self._last_seen = history[-1]
        for t in new:
            reason = t.reason.value if t.reason else ""
            self._transitions[(t.source.value, t.dest.value, reason, str(t.expected).lower())] += 1
        return self._transitions

    def _counter(self, name: str, doc: str, labels: list[str], rows: Rows) -> Metric:
        return self._family(CounterMetricFamily, name, doc, labels, rows)

    def _gauge(self, name: str, doc: str, labels: list[str], rows: Rows) -> Metric:
        return self._family(GaugeMetricFamily, name, doc, labels, rows)

    def _family(
        self,
        kind: type[CounterMetricFamily | GaugeMetricFamily],
        name: str,
        doc: str,
        labels: list[str],
        rows: Rows,
    ) -> Metric:
        family = kind(name, doc, labels=[*IDENTITY, *labels])
        for values, value in rows:
            family.add_metric([*self._identity, *values], value)
        return family


def request_counts(m: Mapping[str, Any]) -> dict[tuple[str, str], int]:
    """(command, outcome) -> count. Per command when the manager provides
    ``requests_by_command`` ({command: {outcome: n}}); otherwise its totals, with an empty
    command label (which Prometheus reads as no label)."""
    by_command = m.get("requests_by_command")
    if by_command is not None:
        return {(c, o): n for c, outcomes in by_command.items() for o, n in outcomes.items()}
    return {("", outcome): m[key] for outcome, key in REQUEST_OUTCOMES.items() if key in m}


def registry_for(m: MetricsSource) -> CollectorRegistry:
    """A fresh registry holding only this manager's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ManagerCollector(m))
    return registry
