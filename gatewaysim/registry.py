"""Request handlers of the simulator, registered by incoming message id in one table.

How to add handlers: write a module `gatewaysim/handlers_<topic>.py`. Every module of that name
is imported when the first session dispatches a request, so neither the session nor this module
needs editing::

    from gatewaysim import wire
    from gatewaysim.registry import handler
    from gatewaysim.session import Session

    @handler(wire.REQ_CONTRACT_DATA)  # one handler per message id: a second one raises
    def req_contract_details(s: Session, f: list[str]) -> None:
        req_id = int(f[2])  # f[0] is the message id; every field is a str
        s.error(req_id, 200, "No security definition has been found for the request")

A handler runs synchronously on the simulator's loop and must not block. An IndexError or
ValueError it raises answers the client with error 320 and the session goes on. It reaches:

- `s.version`: the server version negotiated with this client (version-dependent fields follow it);
  `s.client_id`: the client id of startApi; `s.session_id`: unique per connection.
- `s.send(frame, ...)`: queue complete frames for this client, during a request or later;
  `s.error(req_id, code, text)`: an ERR_MSG in the negotiated layout; `s.live`: False once the
  session is closing (stop pushing to it).
- `s.gateway`: the simulator, whose state outlives sessions: `accounts`, `counters`,
  `emit(kind, detail)` (the event log tests wait on), `now()` / `wall()` (monotonic and epoch
  seconds), `scheduler` (`call_later`, `call_at`, `call_every` → a `Timer` with `cancel()`),
  `seed`, `tick_rate`, and `component(Cls)`: the one instance of your own `gateway.Component`
  subclass, built on first use, with hooks `session_ended(s)` and `snapshot()`.

Unsolicited messages (ticks pushed on a timer): keep the Session in your component, call
`s.send()` from a `scheduler.call_every(...)` callback, and forget the session in
`session_ended`. The server flushes whatever a session queues, from any callback.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import Session

Handler = Callable[["Session", list[str]], None]

_TABLE: dict[int, Handler] = {}
_loaded = False


class DuplicateHandler(RuntimeError):
    """Two handlers for one message id: one definition of each reply."""


def handler(msg_id: int) -> Callable[[Handler], Handler]:
    """Register the decorated function as the answer to incoming message `msg_id`."""

    def register(fn: Handler) -> Handler:
        old = _TABLE.get(msg_id)
        if old is not None:
            raise DuplicateHandler(
                f"message id {msg_id}: {old.__module__}.{old.__name__} and {fn.__module__}.{fn.__name__}"
            )
        _TABLE[msg_id] = fn
        return fn

    return register


def table() -> Mapping[int, Handler]:
    """The handlers of every `gatewaysim.handlers_*` module, imported on first call."""
    global _loaded
    if not _loaded:
        package = __name__.rpartition(".")[0]
        path = importlib.import_module(package).__path__
        for mod in sorted(m.name for m in pkgutil.iter_modules(path) if m.name.startswith("handlers_")):
            importlib.import_module(f"{package}.{mod}")
        _loaded = True
    return _TABLE
