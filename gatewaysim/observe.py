"""What a test or an operator can observe of the simulator: state changes, closes, counters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One state change; `at` is time.monotonic(), `wall` is time.time()."""

    at: float
    wall: float
    kind: str
    detail: str

    def __str__(self) -> str:
        stamp = datetime.fromtimestamp(self.wall).strftime("%H:%M:%S.%f")[:-3]
        return f"{stamp} {self.kind:<14} {self.detail}"


@dataclass(frozen=True, slots=True)
class CloseRecord:
    """A client-initiated close. peer_alive=True: a live process closed its socket (what
    `disconnect()` looks like); False: the process had exited; None: pid unknown."""

    client_id: int | None
    pid: int | None
    at: float  # time.monotonic() when the EOF was read
    peer_alive: bool | None
    peer: tuple[str, int]
    handshaken: bool
    age: float  # seconds since the handshake (or since accept when there was none)


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A live connection. `client_id` is None until startApi; times are time.monotonic()."""

    session_id: int
    client_id: int | None
    peer: tuple[str, int]
    connected_at: float
    handshaken_at: float | None
    server_version: int | None
    _pid: Callable[[], int | None] = field(repr=False, compare=False)

    @property
    def handshaken(self) -> bool:
        return self.handshaken_at is not None

    def pid(self) -> int | None:
        """The peer process, looked up via /proc or psutil where the OS tells."""
        return self._pid()


@dataclass(slots=True)
class Counters:
    connections_accepted: int = 0
    handshakes: int = 0
    fast_closes: int = 0
    sent_326: int = 0
    requests_served: int = 0
    requests_stalled: int = 0
    client_closes: int = 0
    server_closes: int = 0
    malformed: int = 0
    refused_versions: int = 0
    red_episodes: int = 0
