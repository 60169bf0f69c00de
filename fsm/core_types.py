"""The connection core's vocabulary, shared with drivers: its states, the reasons it gives, the
actions it asks for, the transitions it records, and the row format of its table. Plain data;
fsm.core re-exports it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple


class State(StrEnum):
    IDLE = "IDLE"
    SPAWNING = "SPAWNING"
    HANDSHAKING = "HANDSHAKING"
    CONNECTED = "CONNECTED"
    DEGRADED_RED = "DEGRADED_RED"


class Reason(StrEnum):
    api_unresponsive = "api_unresponsive"
    refused = "refused"
    gateway_too_old = "gateway_too_old"
    unknown_host = "unknown_host"
    client_id_in_use = "client_id_in_use"
    peer_closed = "peer_closed"
    worker_exited = "worker_exited"
    connectivity_lost = "connectivity_lost"
    probe_failed = "probe_failed"
    spawn_timeout = "spawn_timeout"
    shutdown = "shutdown"


GATEWAY_REASONS = frozenset(
    {
        Reason.api_unresponsive,
        Reason.refused,
        Reason.client_id_in_use,
        Reason.peer_closed,
        Reason.connectivity_lost,
        Reason.probe_failed,
    }
)
"""Reasons IB or the Gateway cause (a maintenance window explains them); the rest are our own
process or the owner."""

HANDSHAKE_FAILURES = frozenset(
    {
        Reason.api_unresponsive,
        Reason.refused,
        Reason.gateway_too_old,
        Reason.unknown_host,
        Reason.client_id_in_use,
        Reason.peer_closed,
    }
)
"""Reasons a driver may pass to handshake_failed()."""


# ---- actions: what the driver must do, in list order -------------------------------------------


@dataclass(frozen=True, slots=True)
class SpawnWorker:
    """Start `python -m worker`; report worker_ready(pid) or worker_exited."""

    client_id: int


@dataclass(frozen=True, slots=True)
class SendConnect:
    """Send `connect` with these params; `timeout` is the handshake budget left, in seconds."""

    host: str
    port: int
    client_id: int
    readonly: bool
    timeout: float


@dataclass(frozen=True, slots=True)
class SendProbe:
    """Send `ping`; report probe_ok or probe_failed (the core also times it out on tick)."""


@dataclass(frozen=True, slots=True)
class RetireWorker:
    """End the worker by process exit (stdin EOF, then SIGTERM, then SIGKILL), never by
    disconnect; report worker_exited when it is gone."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class ReapZombies:
    """End stale workers of ours still holding this client id (the cause of a 326)."""

    client_id: int


@dataclass(frozen=True, slots=True)
class NotifyDataLost:
    """1101: market data subscriptions were lost; subscribers must re-request."""


Action = SpawnWorker | SendConnect | SendProbe | RetireWorker | ReapZombies | NotifyDataLost


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change: for edges into DEGRADED_RED `reason` is why; for a fast respawn,
    worker_exited; for other edges out of DEGRADED_RED, the reason being left; for shutdown,
    Reason.shutdown. `window` names the maintenance window it happened in."""

    at_ns: int
    source: State
    event: str
    dest: State
    reason: Reason | None
    window: str | None = None

    @property
    def expected(self) -> bool:
        """Inside a maintenance window, for a reason IB or the Gateway causes: no alarm."""
        return self.window is not None and self.reason in GATEWAY_REASONS


# ---- the table's rows ---------------------------------------------------------------------------


class Edge(NamedTuple):
    """One row: `guards` are condition names ("!name" = must be false); `do` runs before the
    state changes. dest None = internal (no state change, not in history). First match wins."""

    source: State | tuple[State, ...]
    event: str
    dest: State | None
    guards: tuple[str, ...] = ()
    do: tuple[str, ...] = ()


def machine_transitions(table: tuple[Edge, ...]) -> list[dict[str, Any]]:
    """TABLE in transitions' format (shared with fsm.diagram so the diagram is this table)."""
    rows = []
    for e in table:
        source = list(e.source) if isinstance(e.source, tuple) else e.source
        row: dict[str, Any] = {"trigger": e.event, "source": source, "dest": e.dest}
        cond = [g for g in e.guards if not g.startswith("!")]
        unless = [g[1:] for g in e.guards if g.startswith("!")]
        if cond:
            row["conditions"] = cond
        if unless:
            row["unless"] = unless
        if e.do:
            row["before"] = list(e.do)
        rows.append(row)
    return rows
