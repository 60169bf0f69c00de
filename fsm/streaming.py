"""`m.stream(...)`: market-data streams that live through worker crashes, session drops, Gateway
restarts and IB's nightly 1100 -> 1101, as a session service (fsm.services).

    async with m.stream("quotes", symbol="AAPL") as s:
        async for item in s:        # Quote, Bar or Trade items, and a Gap when the flow broke
            ...

The registry, buffers and Gap rules are fsm.streams (pure); this module sends what it plans:
after each new session (a handshake) every open stream is subscribed again; after a 1101 the
old subs are unsubscribed and subscribed again in the same session; after a 1102 nothing is sent
(the subscriptions were kept and the items resume, after one Gap). Every leaving of CONNECTED is
a break (the Gap's reason is the manager's: worker_exited, peer_closed, connectivity_lost...).

Entering the block while a session is up waits for the first subscribe's answer, so a refusal
(no_security_definition, ambiguous_contract, no_market_data_permission, market_data_lines,
BadRequest) is raised at once; without a session the stream is subscribed once one is up. A
refusal that comes later (a re-subscribe, or the worker's stream_error) is raised by the
iteration once the items before it are read. Leaving the block unsubscribes. The worker's
events are pushed into each consumer's bounded buffer without waiting: a slow consumer never
holds up the manager, its probe or other streams; it loses conflated quotes or its oldest bars
and trades instead (``s.dropped``).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import msgspec

from fsm import services
from fsm.core import Reason
from fsm.errors import BadRequest, GatewayError, IbgwError, NotConnected, WorkerDied
from fsm.streams import Command, Entry, Registry, StreamState, Subscribe, Unsubscribe, item_from_event
from worker import protocol as wp
from worker.market_protocol import ContractIdentity, DataEvent, StreamErrorEvent, SubscribeParams

log = logging.getLogger("fsm.streams")

__all__ = ["Stream", "StreamService"]

STILL_STREAMING = frozenset({10090})  # "part of the requested data is not subscribed"
TRANSIENT = (NotConnected, WorkerDied)  # the session or worker went: subscribed with the next one


class Stream:
    """One consumer's stream: an async context manager and an async iterator of items."""

    def __init__(self, service: StreamService, state: StreamState, timeout: float | None) -> None:
        self._service = service
        self._state = state
        self._timeout = timeout
        self._ready = anyio.Event()
        state.wake = self._wake

    # what the consumer can read about it
    @property
    def contract(self) -> ContractIdentity | None:
        """The qualified contract (once a subscribe was answered)."""
        return self._state.contract

    @property
    def delayed(self) -> bool:
        return self._state.delayed

    @property
    def dropped(self) -> int:
        """Items lost to this consumer's buffer bound (quotes: conflated away)."""
        return self._state.dropped

    @property
    def gaps(self) -> int:
        return self._state.gaps

    @property
    def restored(self) -> int:
        """Subscriptions answered after a break."""
        return self._state.restored

    @property
    def longest_gap(self) -> dt.timedelta:
        return self._state.longest_gap

    async def __aenter__(self) -> Stream:
        await self._service.start(self._state, self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._service.stop(self._state)

    def __aiter__(self) -> AsyncIterator[Entry]:
        return self

    async def __anext__(self) -> Entry:
        st = self._state
        while True:
            entry = st.buffer.pop()
            if entry is not None:
                return entry
            if st.error is not None:
                raise st.error
            if st.closed:
                raise StopAsyncIteration
            await self._ready.wait()
            self._ready = anyio.Event()

    def _wake(self) -> None:
        self._ready.set()


class StreamService(services.Service):
    """The manager's streams: the registry, and the subscribes and unsubscribes it plans."""

    events = frozenset({DataEvent.QUOTE, DataEvent.BAR, DataEvent.TRADE, DataEvent.STREAM_ERROR})

    def __init__(self) -> None:
        self.registry = Registry()
        self._session: services.Session | None = None  # the session while it is up
        self._unsent: list[Command] = []  # unsubscribes for the session that is down (1100)
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    # ---- for the manager

    def stream(
        self, kind: str, *, buffer: int | None = None, timeout: float | None = None, **spec: Any
    ) -> Stream:
        """A Stream (not yet subscribed: use it with ``async with``); BadRequest at once for a
        kind or contract selector the worker would refuse."""
        if "timeout" in spec:
            raise BadRequest("stream: timeout is the stream's own argument, not part of the contract")
        try:
            wp.parse_params("subscribe", {"stream": kind, **spec}, {"subscribe": SubscribeParams})
        except wp.ProtocolError as exc:
            raise BadRequest(exc.message.replace("subscribe: params", "stream", 1)) from None
        if buffer is not None and (isinstance(buffer, bool) or not isinstance(buffer, int) or buffer < 1):
            raise BadRequest(f"stream: buffer must be a positive number of items, got {buffer!r}")
        return Stream(self, self.registry.open(kind, spec, buffer), timeout)

    def metrics(self) -> dict[str, Any]:
        return self.registry.totals()

    async def start(self, st: StreamState, timeout: float | None) -> None:
        """Subscribe now if a session is up (a refusal is raised here), else at the next one."""
        if self._closed:
            raise NotConnected("stream: the manager is not running")
        session = self._session
        if session is None:
            return
        cmd = self.registry.subscribe_now(st, session.generation)
        await self._subscribe(session, cmd, timeout)
        if st.error is not None:
            self.registry.close(st)
            raise st.error

    def stop(self, st: StreamState) -> None:
        cmds = self.registry.close(st)
        if self._session is None:
            self._unsent += cmds  # sent if the same session comes back (1102), else gone with it
        else:
            self._send(self._session, cmds)

    # ---- session hooks (fsm.services)

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg

    def on_session_up(self, session: services.Session) -> None:
        self._session = session
        unsent, self._unsent = self._unsent, []
        if session.new:
            self._send(session, self.registry.resubscribe_plan(session.generation, same_session=False))
        else:
            self._send(session, unsent)

    def on_data_lost(self) -> None:
        self.registry.on_break(_now(), "data_lost")  # when no 1100 came first
        if self._session is not None:
            plan = self.registry.resubscribe_plan(self._session.generation, same_session=True)
            self._send(self._session, plan)

    def on_session_down(self, reason: Reason | None) -> None:
        if reason is Reason.shutdown:  # the streams end here, not with a Gap: no session follows
            self.close()
            return
        self._session = None
        self.registry.on_break(_now(), reason.value if reason is not None else "session_down")

    def on_event(self, generation: int, ev: wp.Event) -> None:
        if self._closed:  # the retiring worker may stream on until it exits: nobody is owed it
            return
        try:
            if ev.event == DataEvent.STREAM_ERROR:
                e = msgspec.convert(ev.data, StreamErrorEvent)
                err = GatewayError(e.code, e.message)
                self.registry.on_stream_error(generation, e.sub, err, ends=e.code not in STILL_STREAMING)
                return
            sub, item = item_from_event(ev.event, ev.data)
        except (msgspec.ValidationError, ValueError) as exc:
            log.warning("malformed %s event from the worker: %s", ev.event, exc)
            return
        self.registry.on_item(generation, sub, item)

    def close(self) -> None:
        self._closed = True
        self._session = None
        for st in list(self.registry.streams.values()):
            st.error = NotConnected("the manager shut down")
            st.wake()

    # ---- sending

    def _send(self, session: services.Session | None, cmds: list[Command]) -> None:
        """Unsubscribes first, then each subscribe in its own task (a quiet market must not
        hold up the others); nothing without a session (the old subs went with it)."""
        if session is None or self._tg is None or not cmds:
            return
        subs = [c.sub for c in cmds if isinstance(c, Unsubscribe)]
        if subs:
            self._tg.start_soon(self._unsubscribe, session, subs)
        for c in cmds:
            if isinstance(c, Subscribe):
                self._tg.start_soon(self._subscribe, session, c, None)

    async def _unsubscribe(self, session: services.Session, subs: list[int]) -> None:
        for sub in subs:
            try:
                await session.request("unsubscribe", sub=sub)
            except IbgwError as exc:  # the session went, or the worker forgot it: nothing to end
                log.debug("unsubscribe %d: %s", sub, exc)

    async def _subscribe(self, session: services.Session, cmd: Subscribe, timeout: float | None) -> None:
        st, gen = cmd.state, session.generation
        try:
            data = await session.request("subscribe", timeout=timeout, **cmd.params)
            answer = (
                int(data["sub"]),
                msgspec.convert(data["contract"], ContractIdentity),
                bool(data["delayed"]),
            )
        except TRANSIENT as exc:
            log.info(
                "stream %d (%s): subscribe not answered (%s); again with the next session",
                st.id,
                st.kind,
                exc,
            )
            self.registry.on_subscribe_failed(gen, st, exc, permanent=False)
            return
        except IbgwError as exc:  # refused, or no answer from a live session: never a silent stream
            self.registry.on_subscribe_failed(gen, st, exc, permanent=True)
            return
        except (KeyError, TypeError, ValueError, msgspec.ValidationError) as exc:
            err = GatewayError("internal_error", f"subscribe: malformed answer from the worker: {exc}")
            self.registry.on_subscribe_failed(gen, st, err, permanent=True)
            return
        sub, contract, delayed = answer
        self._send(session, self.registry.on_subscribed(gen, st, sub, contract, delayed))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
