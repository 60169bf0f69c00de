"""A simulated IB Gateway that speaks the TWS API wire protocol, with fault injection."""

from .faults import SYNC_REQUESTS, Faults
from .gateway import Component, Gateway
from .observe import CloseRecord, Counters, SessionInfo, SimEvent
from .server import GatewaySim
from .session import Session
from .threaded import ThreadedSim, running_in_thread

__all__ = [
    "SYNC_REQUESTS",
    "CloseRecord",
    "Component",
    "Counters",
    "Faults",
    "Gateway",
    "GatewaySim",
    "Session",
    "SessionInfo",
    "SimEvent",
    "ThreadedSim",
    "running_in_thread",
]
