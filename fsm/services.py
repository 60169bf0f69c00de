"""Session services: features built on the connection (streams, orders) plug in here.

A service is an object the ConnectionManager holds for its whole life; a feature registers
itself when the manager is built (``self.orders = OrderService(...); self.services.add(...)``),
so that ``m.stream(...)`` or ``m.place_order(...)`` stay thin methods on the manager. The driver
calls its hooks; each hook is a plain (not async) call made from the manager's event loop and
must return at once: work that waits (a request, a re-subscribe) goes into a task of the
service's own, started in ``run(tg)``. A hook that raises is logged and the next service still
gets the call: one broken feature never moves the connection.

The hooks, in the order a service sees them:

``open(address)``
    Once, after the lock is held (``address``: the Gateway address the state files are keyed
    on). It may raise (a damaged journal): the manager then does not start, and the error
    (an IbgwError) is what ``async with`` raises.
``run(tg)``
    Once, right after, before the first worker is spawned: start the service's own tasks in
    ``tg``, which lives as long as the manager.
``on_session_up(session)``
    Every time the core enters CONNECTED: after each handshake (``session.new`` is True: a new
    worker or a new session; everything asked of an earlier one is gone) and when the same
    session comes back (``session.new`` False: a 1102 or 1101 after a 1100, or a late probe
    answer; what was asked of it is still there, unless on_data_lost follows).
    ``session.request(command, timeout=..., **params)`` sends to that session's worker by the
    same path and checks as ``m.request`` (the same errors); once that session is gone it raises
    SessionLost, or NotConnected while it is down. ``session.generation`` names the worker.
``on_event(generation, event)``
    A worker event the driver does not handle itself, routed by ``event.event`` to the services
    whose ``events`` name it (one table, built at registration). ``generation`` is the worker
    that sent it: an old worker's late event (a fill from a retiring session) still arrives;
    compare it with ``session.generation`` to tell.
``on_data_lost()``
    IB 1101: the session stayed but its market data subscriptions were lost and must be
    re-requested in the same session. Comes after the on_session_up(new=False) of the restore,
    or alone when the core was CONNECTED. Not called for 1102 (data kept).
``on_session_down(reason)``
    Every time the core leaves CONNECTED (so up and down strictly alternate), with the core's
    reason: connectivity_lost (1100; the same session may come back), probe_failed,
    peer_closed, worker_exited, shutdown... Requests to that session fail from now on.
``metrics()``
    Any time (plain, returns at once): the service's own figures, flat numbers by name; they
    join ``m.metrics()`` and the status snapshot. A service whose figures changed with no
    state change (a reconciliation) calls ``m.report_changed()`` so that the snapshot
    (``ibgw status``) shows them now rather than at the next transition.
``close()``
    Once, at shutdown, after the workers are gone and before the lock is released; also when
    the manager failed to start (after an open() that raised, or none at all).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio.abc

from fsm.core import Reason
from worker import protocol as wp

log = logging.getLogger("fsm.services")

__all__ = ["Service", "Services", "Session"]

Requester = Callable[..., Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Session:
    """One CONNECTED period of one worker's session, as handed to on_session_up."""

    generation: int
    """The worker's generation (each spawned worker has a new one)."""
    new: bool
    """True after a handshake (a new session); False when the same session came back."""
    handshake: dict[str, Any]
    """The connect answer: accounts, server_version, client_id, elapsed_ms..."""
    _request: Requester = field(repr=False)

    async def request(self, command: str, *, timeout: float | None = None, **params: Any) -> dict[str, Any]:
        """``m.request`` to this session's worker: its data or a typed error (fsm.errors);
        SessionLost once this session is gone, NotConnected while it is down."""
        return await self._request(command, timeout=timeout, **params)


class Service(Protocol):
    """A feature built on the session. Subclass it to inherit do-nothing hooks."""

    events: frozenset[str] = frozenset()
    """The worker event names routed to on_event."""

    def open(self, address: str) -> None:
        return None

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        return None

    def on_session_up(self, session: Session) -> None:
        return None

    def on_event(self, generation: int, event: wp.Event) -> None:
        return None

    def on_data_lost(self) -> None:
        return None

    def on_session_down(self, reason: Reason | None) -> None:
        return None

    def metrics(self) -> Mapping[str, float]:
        return {}

    def close(self) -> None:
        return None


class Services:
    """The services of one manager and the table routing worker events to them."""

    def __init__(self) -> None:
        self._all: list[Service] = []
        self._by_event: defaultdict[str, list[Service]] = defaultdict(list)

    def add(self, service: Service) -> None:
        """Register ``service`` (before the manager starts); its events join the table."""
        self._all.append(service)
        for name in service.events:
            self._by_event[name].append(service)

    def __iter__(self) -> Iterator[Service]:
        return iter(self._all)

    def routes(self, event: str) -> bool:
        return event in self._by_event

    def event(self, generation: int, ev: wp.Event) -> None:
        for s in self._by_event.get(ev.event, ()):
            self._call(s.on_event, generation, ev)

    def open(self, address: str) -> None:
        """Each service's open(); the first that raises stops the start (it propagates)."""
        for s in self._all:
            s.open(address)

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        for s in self._all:
            self._call(s.run, tg)

    def session_up(self, session: Session) -> None:
        for s in self._all:
            self._call(s.on_session_up, session)

    def data_lost(self) -> None:
        for s in self._all:
            self._call(s.on_data_lost)

    def session_down(self, reason: Reason | None) -> None:
        for s in self._all:
            self._call(s.on_session_down, reason)

    def close(self) -> None:
        for s in self._all:
            self._call(s.close)

    def metrics(self) -> dict[str, float]:
        """Every service's metrics() in one dict (one that raises is logged and left out)."""
        out: dict[str, float] = {}
        for s in self._all:
            try:
                out.update(s.metrics())
            except Exception:
                log.exception("service metrics %s failed", type(s).__qualname__)
        return out

    @staticmethod
    def _call(hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("service hook %s failed", getattr(hook, "__qualname__", hook))
