"""A simulated IB Gateway that speaks the TWS API wire protocol, with fault injection."""

from .faults import SYNC_REQUESTS, Faults
from .server import CloseRecord, Counters, GatewaySim, SessionInfo, SimEvent
from .threaded import ThreadedSim, running_in_thread

__all__ = [
    "SYNC_REQUESTS",
    "CloseRecord",
    "Counters",
    "Faults",
    "GatewaySim",
    "SessionInfo",
    "SimEvent",
    "ThreadedSim",
    "running_in_thread",
]
