"""Disconnect guard: ib_async must never close a Gateway session from inside a live process.

ib_async 2.1.0 closes its socket by itself on these paths (read from the installed ib.py,
client.py, connection.py):

- ``IB.connectAsync``: ``except BaseException: self.disconnect()`` (failed, timed-out or cancelled
  connect, including a start-up sync that is cut off by our deadline)
- ``Client.connectAsync``: ``except BaseException: self.disconnect()`` (TCP/handshake failure,
  handshake timeout, cancellation)
- ``IB.__del__`` and ``IB.__exit__`` -> ``IB.disconnect()``
- explicit ``IB.disconnect()`` -> ``Client.disconnect()`` -> ``Connection.disconnect()``
  (``transport.write_eof()`` + ``transport.close()``), and ``Connection.connectAsync`` which
  disconnects a previous transport before reconnecting on the same object
- garbage collection of an unreferenced asyncio transport closes its socket: ``retain()`` keeps
  every IB object (and so its transport) alive until the process exits

install() replaces each of these with a function that only counts and logs the attempt. The socket
then stays open until the worker process exits, which is the one sanctioned way a session ends.
At the TCP level that exit is still a FIN; what the guard buys is that no session is closed from
inside, quickly after its handshake, or by a failed connect.

The guard is pinned to the ib_async version it was read against: a new version may add paths.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import ib_async
from ib_async.client import Client
from ib_async.connection import Connection
from ib_async.ib import IB

PINNED_IB_ASYNC: Final = "2.1.0"

log = logging.getLogger("worker.guard")


class GuardVersionError(RuntimeError):
    """The installed ib_async is not the version the guard's list of paths was written for."""


def check_version(installed: str) -> None:
    if installed != PINNED_IB_ASYNC:
        raise GuardVersionError(
            f"worker.guard is written against ib_async=={PINNED_IB_ASYNC}, but {installed} is "
            f"installed. A different version may disconnect on paths the guard does not know. "
            f"Install ib_async=={PINNED_IB_ASYNC}, or re-read ib_async's ib.py, client.py and "
            f"connection.py for disconnect()/close() paths, update worker/guard.py, then the pin."
        )


check_version(ib_async.__version__)


@dataclass
class Suppressed:
    """One suppressed disconnect attempt: which path, when (monotonic s) and who called it."""

    path: str
    at: float
    caller: str


@dataclass
class GuardStats:
    """Counts of suppressed disconnect attempts, by path (what `status` reports)."""

    total: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    recent: list[Suppressed] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, path: str, caller: str) -> None:
        with self._lock:
            self.total += 1
            self.by_path[path] += 1
            self.recent.append(Suppressed(path, time.monotonic(), caller))
            del self.recent[:-20]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"total": self.total, "by_path": dict(self.by_path)}


stats = GuardStats()
_retained: list[Any] = []
_originals: dict[str, Any] = {}
_installed = False


def _caller(depth: int = 2) -> str:
    try:
        frame = sys._getframe(depth)
    except ValueError:
        return "?"
    return f"{frame.f_code.co_qualname} ({frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"


def _suppress(path: str) -> None:
    caller = _caller(3)
    stats.record(path, caller)
    log.warning("suppressed %s (called from %s); any socket stays open until the worker exits", path, caller)


def _ib_disconnect(self: IB) -> None:
    _suppress("IB.disconnect")


def _ib_del(self: IB) -> None:
    _suppress("IB.__del__")


def _ib_exit(self: IB, *_exc: object) -> None:
    _suppress("IB.__exit__")  # returns None: never swallows the exception


def _client_disconnect(self: Client) -> None:
    _suppress("Client.disconnect")


def _connection_disconnect(self: Connection) -> None:
    _suppress("Connection.disconnect")


_PATCHES: Final = (
    (IB, "disconnect", _ib_disconnect),
    (IB, "__del__", _ib_del),
    (IB, "__exit__", _ib_exit),
    (Client, "disconnect", _client_disconnect),
    (Connection, "disconnect", _connection_disconnect),
)


def install() -> None:
    """Patch every ib_async disconnect path (idempotent). Call before the first connect."""
    global _installed
    if _installed:
        return
    for cls, name, replacement in _PATCHES:
        _originals[f"{cls.__name__}.{name}"] = cls.__dict__[name]
        setattr(cls, name, replacement)
    _installed = True


def installed() -> bool:
    """True when every path is patched (checked against the classes, not a flag)."""
    return all(cls.__dict__.get(name) is repl for cls, name, repl in _PATCHES)


def patched_paths() -> list[str]:
    return [f"{cls.__name__}.{name}" for cls, name, _ in _PATCHES]


def retain(obj: Any) -> None:
    """Keep obj (an IB and so its transport) referenced until process exit: no GC close."""
    _retained.append(obj)
