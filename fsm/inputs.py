"""The core's inputs as values, and the one place that hands them to the core.

The driver and the IB-code classifier speak in these values instead of event-name strings, so
a misspelt event is a type error, and ``apply`` dispatches exhaustively (``assert_never``): an
input added here without a branch fails mypy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, assert_never

from fsm.core import Action, ConnectionCore, Reason
from fsm.maintenance import Window

__all__ = [
    "ConnectivityLost",
    "ConnectivityRestored",
    "HandshakeFailed",
    "HandshakeOk",
    "Input",
    "Maintenance",
    "ProbeFailed",
    "ProbeOk",
    "SessionLost",
    "Shutdown",
    "Start",
    "Tick",
    "WorkerExited",
    "WorkerReady",
    "apply",
]


@dataclass(frozen=True, slots=True)
class Start:
    event: ClassVar[str] = "start"


@dataclass(frozen=True, slots=True)
class WorkerReady:
    event: ClassVar[str] = "worker_ready"
    pid: int


@dataclass(frozen=True, slots=True)
class HandshakeOk:
    event: ClassVar[str] = "handshake_ok"


@dataclass(frozen=True, slots=True)
class HandshakeFailed:
    event: ClassVar[str] = "handshake_failed"
    reason: Reason


@dataclass(frozen=True, slots=True)
class WorkerExited:
    event: ClassVar[str] = "worker_exited"


@dataclass(frozen=True, slots=True)
class SessionLost:
    event: ClassVar[str] = "session_lost"


@dataclass(frozen=True, slots=True)
class ConnectivityLost:
    """IB 1100: the Gateway lost its connection to IB's servers."""

    event: ClassVar[str] = "connectivity_lost"


@dataclass(frozen=True, slots=True)
class ConnectivityRestored:
    """IB 1101 (data_lost: subscriptions must be re-requested) or 1102 (data kept)."""

    event: ClassVar[str] = "connectivity_restored"
    data_lost: bool


@dataclass(frozen=True, slots=True)
class ProbeOk:
    event: ClassVar[str] = "probe_ok"


@dataclass(frozen=True, slots=True)
class ProbeFailed:
    event: ClassVar[str] = "probe_failed"


@dataclass(frozen=True, slots=True)
class Shutdown:
    event: ClassVar[str] = "shutdown"


@dataclass(frozen=True, slots=True)
class Maintenance:
    """The maintenance window in force from now (None: none), per fsm.maintenance.in_window."""

    event: ClassVar[str] = "maintenance"
    window: Window | None


@dataclass(frozen=True, slots=True)
class Tick:
    event: ClassVar[str] = "tick"


Input = (
    Start
    | WorkerReady
    | HandshakeOk
    | HandshakeFailed
    | WorkerExited
    | SessionLost
    | ConnectivityLost
    | ConnectivityRestored
    | ProbeOk
    | ProbeFailed
    | Shutdown
    | Maintenance
    | Tick
)


def apply(core: ConnectionCore, inp: Input, now: int) -> list[Action]:
    """Give ``inp`` to ``core`` at ``now``; its actions (InvalidEvent if it does not fit)."""
    match inp:
        case Start():
            return core.start(now)
        case WorkerReady(pid):
            return core.worker_ready(now, pid)
        case HandshakeOk():
            return core.handshake_ok(now)
        case HandshakeFailed(reason):
            return core.handshake_failed(now, reason)
        case WorkerExited():
            return core.worker_exited(now)
        case SessionLost():
            return core.session_lost(now)
        case ConnectivityLost():
            return core.connectivity_lost(now)
        case ConnectivityRestored(data_lost):
            return core.connectivity_restored(now, data_lost)
        case ProbeOk():
            return core.probe_ok(now)
        case ProbeFailed():
            return core.probe_failed(now)
        case Shutdown():
            return core.shutdown(now)
        case Maintenance(window):
            return core.maintenance(now, window)
        case Tick():
            return core.tick(now)
        case _:
            assert_never(inp)
