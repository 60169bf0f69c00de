"""The manager's order service: one outcome per order call, and it is the broker's truth.

    state = await m.place_order(symbol="AAPL", action="BUY", quantity=10, order_type="LMT",
                                limit_price=150.0, order_ref="strat-A:0001")

A call is refused at once, with nothing sent, while the settings are read-only (ReadOnly),
inside a maintenance window unless allowed (MaintenanceWindow), for bad arguments (BadRequest)
and for a ref in use (DuplicateOrderRef). Otherwise the intent is journalled (fsm.journal,
fsync'd) before it is sent (the broker's ack is journalled too, fsync'd just after the call
returns: off its path), and the call ends in exactly one of:

- the order as the broker acknowledged it (OrderState);
- OrderRejected(code): the broker refused it;
- OrderNotPlaced(ref): nothing reached the broker (no session came within the deadline before
  anything was sent, or a new session's reconciliation found no trace of it): a retry is safe;
- OrderInDoubt(ref): it was sent and no session came back within the deadline to tell whether
  the broker has it. It is never re-sent: `order_status(ref)` resolves it later, also after a
  restart of this process (the journal remembers it).

When the worker dies or the session drops with a request in flight, the call waits (within its
deadline) for the next session, whose reconciliation (fsm.reconcile: open orders, completed
orders, executions) resolves it. Reconciliation runs after every new session; it also hands
the executions no one has seen to `executions()`, which delivers each once, across crashes (the
delivered execution ids are journalled before they are handed over).

A session service (fsm.services): `open(address)` once the lock is held, `run(tg)`, `on_event`
for the worker's order events, `on_session_up` (acting on each new session), `close()`.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
import msgspec

from fsm import services
from fsm.commands import check_seconds
from fsm.core import Reason, State
from fsm.errors import (
    BadRequest,
    DuplicateOrderRef,
    GatewayError,
    IbgwError,
    MaintenanceWindow,
    NotConnected,
    OrderInDoubt,
    OrderNotPlaced,
    OrderRejected,
    ReadOnly,
    SessionLost,
)
from fsm.journal import Journal, JournalOrder, Op, Request, journal_path
from fsm.maintenance import in_window
from fsm.reconcile import BrokerView, Pending, Reconciliation, Resolution, has_fields, reconcile
from fsm.settings import Settings
from worker.market_protocol import DataCode
from worker.orders_protocol import (
    CancelOrderParams,
    Execution,
    ExecutionsResult,
    ModifyOrderParams,
    OrderCode,
    OrderEvent,
    OrdersResult,
    OrderState,
    PlaceOrderParams,
)
from worker.protocol import Event

log = logging.getLogger("fsm.orders")

__all__ = ["ORDER_COUNTERS", "OrderService"]

#: Metrics (in m.metrics() and the status snapshot): requests resolved by reconciliation, requests
#: in doubt now, executions found by reconciliation that no live event had brought, and runs.
ORDER_COUNTERS = ("orders_resolved", "orders_in_doubt", "fills_recovered", "reconciliations")
RECONCILE_RETRY = 1.0  # s between attempts while the same session is up and a read failed
#: s after an ack record before it is fsync'd in a worker thread, unless a later fsync'd record
#: (the next order's intent) has made it durable first: the caller's answer never waits for it.
ACK_SYNC_DELAY = 0.05
#: Worker answers that prove the request was not sent (nothing reached the Gateway).
NOT_SENT = frozenset(
    {
        *(
            OrderCode.READ_ONLY,
            OrderCode.DUPLICATE_ORDER_REF,
            OrderCode.ORDER_DONE,
            OrderCode.ORDER_NOT_FOUND,
        ),
        *(DataCode.NO_SECURITY_DEFINITION, DataCode.AMBIGUOUS_CONTRACT, DataCode.CONTRACT_MISMATCH),
    }
)


class Manager(Protocol):
    """What the service needs of the manager (requests go to the session, fsm.services)."""

    @property
    def state(self) -> State: ...

    async def wait_connected(self, timeout: float | None = None) -> None: ...

    def report_changed(self) -> None: ...


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = anyio.current_time() + seconds

    def left(self) -> float:
        return max(0.0, self.at - anyio.current_time())


class OrderService(services.Service):
    """Order calls, the journal, reconciliation after each session, and executions once."""

    events = frozenset({OrderEvent.ORDER_STATUS, OrderEvent.EXECUTION, OrderEvent.ORDER_ERROR})

    def __init__(self, settings: Settings, manager: Manager, counts: Counter[str]) -> None:
        self.settings = settings
        self._manager = manager
        self.counts = counts
        for name in ORDER_COUNTERS:
            counts.setdefault(name, 0)
        self._journal: Journal | None = None
        self._process = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._gen = 0  # new sessions seen by this process; requests are journalled with it
        self._up: services.Session | None = None  # the session up now (requests go to it alone)
        self._in_flight: set[tuple[str, int]] = set()  # requests whose call awaits the worker
        self._resolved = anyio.Event()  # set and replaced whenever a request resolves
        self._kick = anyio.Event()  # wakes the reconciler
        self._lock = anyio.Lock()  # one reconciliation at a time
        self._queue: OrderedDict[str, Execution] = OrderedDict()  # fills not yet delivered
        self._queued = anyio.Event()
        self._acked = anyio.Event()  # an ack record waits to be fsync'd (see _syncer)
        self._closed = False

    # ------------------------------------------------------------------------------ life

    def open(self, address: str) -> None:
        """Open the journal of this Gateway address, port and client id (the lock is held)."""
        s = self.settings
        self._journal = Journal.open(journal_path(s.state_dir, address, s.port, s.client_id))
        self._count_doubts()
        if self.counts["orders_in_doubt"]:
            log.warning("%d order request(s) in doubt from before: reconciled once a session is up",
                        self.counts["orders_in_doubt"])  # fmt: skip

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self._reconciler)
        tg.start_soon(self._syncer)

    def close(self) -> None:
        self._closed = True
        self._queued.set()
        self._acked.set()
        self._wake_resolved()
        if self._journal is not None:
            self._journal.close()

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            raise NotConnected("the order journal is not open: the manager is not running")
        return self._journal

    def metrics(self) -> dict[str, int]:
        return {k: self.counts[k] for k in ORDER_COUNTERS}

    # ------------------------------------------------------------------------------ hooks

    def on_session_up(self, session: services.Session) -> None:
        """A new session (a handshake, not a 1102): requests sent before it are settled now."""
        self._up = session
        if session.new:
            self._gen += 1
            self._kick.set()

    def on_session_down(self, reason: Reason | None) -> None:
        self._up = None

    def on_event(self, generation: int, ev: Event) -> None:
        """The worker's order events: statuses may resolve doubts; fills queue for delivery."""
        if self._journal is None:
            return
        try:
            if ev.event == OrderEvent.ORDER_STATUS:
                self._observed(msgspec.convert(ev.data, OrderState))
            elif ev.event == OrderEvent.EXECUTION:
                self._enqueue([msgspec.convert(ev.data, Execution)])
            elif ev.event == OrderEvent.ORDER_ERROR:
                log.info("order %s (id %s): IB %s: %s", ev.data.get("order_ref"), ev.data.get("order_id"),
                         ev.data.get("ib_code"), ev.data.get("message"))  # fmt: skip
        except msgspec.ValidationError as exc:
            log.warning("malformed %s event from the worker: %s", ev.event, exc)

    # ------------------------------------------------------------------------------ calls

    async def place(
        self,
        *,
        order_ref: str | None = None,
        timeout: float | None = None,
        allow_in_maintenance: bool = False,
        **fields: Any,
    ) -> OrderState:
        self._writable()
        if not allow_in_maintenance:
            window = in_window(self.settings, datetime.now(UTC))
            if window is not None:
                raise MaintenanceWindow(window.name)
        ref = order_ref if order_ref is not None else f"ibgw-{uuid.uuid4().hex[:20]}"
        params = _checked(PlaceOrderParams, "place_order", {**fields, "order_ref": ref})
        deadline = self._deadline(timeout)
        if self.journal.in_use(ref):
            raise DuplicateOrderRef(ref)
        payload = msgspec.to_builtins(params)
        payload.pop("timeout", None)
        st = await self._call("place_order", ref, "place", payload, deadline, on_done=None)
        assert st is not None
        return st

    async def modify(self, order_ref: str, *, timeout: float | None = None, **changes: Any) -> OrderState:
        self._writable()
        o = self._known(order_ref, "modify_order")
        params = _checked(
            ModifyOrderParams, "modify_order", {**changes, "order_id": o.order_id, "order_ref": order_ref}
        )
        payload = {k: v for k, v in msgspec.to_builtins(params).items() if k != "timeout"}
        return await self._call(
            "modify_order", order_ref, "modify", payload, self._deadline(timeout), on_done=payload
        )

    async def cancel(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        self._writable()
        o = self._known(order_ref, "cancel_order")
        _checked(CancelOrderParams, "cancel_order", {"order_id": o.order_id})
        return await self._call(
            "cancel_order",
            order_ref,
            "cancel",
            {"order_id": o.order_id},
            self._deadline(timeout),
            on_done=None,
        )

    async def status(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        """The order as the broker has it now (a reconciliation with the current session).
        OrderInDoubt while no session can tell; OrderNotPlaced / OrderRejected for a
        placement that ended so."""
        deadline = self._deadline(timeout)
        o = self.journal.orders.get(order_ref)
        if o is None:
            raise BadRequest(f"order_status: no order with order_ref {order_ref!r} in the journal")
        try:
            await self._manager.wait_connected(deadline.left())
            r = await self._reconcile_once(deadline.left())
        except (TimeoutError, IbgwError) as exc:
            if self.journal.orders[order_ref].unresolved():
                raise OrderInDoubt(order_ref) from None
            raise NotConnected(
                f"order_status: no session to ask the broker about {order_ref!r} ({exc})"
            ) from None
        o = self.journal.orders[order_ref]
        place = o.place
        if place.outcome == "rejected":
            raise OrderRejected(place.code or 0, place.message, order_ref)
        if place.outcome == "not_done":
            raise OrderNotPlaced(order_ref, place.message or None)
        if not place.resolved:
            raise OrderInDoubt(order_ref)
        st = r.states.get(order_ref) or o.state
        if st is None:
            raise OrderInDoubt(
                order_ref, f"order {order_ref!r} was placed but the broker no longer reports it"
            )
        return st

    async def executions(self) -> AsyncIterator[Execution]:
        """Every execution of this client id once (by exec id), with its commission, including
        those found by reconciliation; each is journalled as delivered before it is yielded.
        Ends when the manager shuts down."""
        while True:
            while not self._queue and not self._closed:
                self._queued = anyio.Event()
                await self._queued.wait()
            if self._closed:
                return
            exec_id, x = self._queue.popitem(last=False)
            if exec_id in self.journal.delivered:
                continue
            self.journal.deliver(exec_id)
            yield x

    # ------------------------------------------------------------------------------ the call

    async def _call(
        self,
        command: str,
        ref: str,
        op: Op,
        payload: dict[str, Any],
        deadline: _Deadline,
        on_done: Mapping[str, Any] | None,
    ) -> OrderState:
        """Send one request (journalled first) and wait for its one outcome within deadline."""
        while True:
            try:
                if self._manager.state != State.CONNECTED:  # (no wait's cancel scope when it is)
                    await self._manager.wait_connected(deadline.left())
                session = self._session_up()
            except (TimeoutError, NotConnected):
                raise OrderNotPlaced(
                    ref, f"{command} {ref!r}: no session within {deadline.seconds:g} s; nothing was sent"
                ) from None
            req = self.journal.intent(ref, op, payload, self._token())
            self._in_flight.add((ref, req.seq))
            doubt: Exception | None = None
            try:
                data = await session.request(command, timeout=max(deadline.left(), 0.001), **payload)
            except OrderRejected as exc:
                self.journal.outcome(ref, req.seq, "rejected", code=exc.code, message=exc.message)
                raise OrderRejected(exc.code, exc.message, ref) from None
            except BadRequest as exc:
                self.journal.outcome(ref, req.seq, "not_done", message=str(exc))
                raise
            except GatewayError as exc:
                if exc.code in NOT_SENT:
                    self.journal.outcome(ref, req.seq, "not_done", message=exc.message)
                    raise _not_sent_error(exc, ref) from None
                doubt = exc
            except SessionLost as exc:
                doubt = exc
            except NotConnected:  # the session is down (1100): nothing was sent; wait for one
                self.journal.outcome(ref, req.seq, "not_done", message="no session; nothing was sent")
                continue
            except IbgwError as exc:  # WorkerDied, RequestTimeout: it may have been sent
                doubt = exc
            finally:
                self._in_flight.discard((ref, req.seq))
            if doubt is not None:
                return await self._in_doubt(command, ref, req, deadline, doubt)
            st = msgspec.convert(data, OrderState)
            self.journal.observe(st)
            if on_done is not None and not has_fields(st, on_done):
                self.journal.outcome(ref, req.seq, "not_done", state=st, message=f"the order is {st.status}")
                raise OrderNotPlaced(ref, f"{command} {ref!r}: not applied: the order is {st.status}", st)
            self.journal.ack(ref, req.seq, st)
            self._acked.set()
            self._wake_resolved()
            return st

    async def _in_doubt(
        self, command: str, ref: str, req: Request, deadline: _Deadline, why: Exception
    ) -> OrderState:
        """The request may have reached the broker: never re-send; wait for its resolution."""
        log.warning(
            "%s %r (request %d) in doubt: %s; waiting for the broker's word", command, ref, req.seq, why
        )
        self._count_doubts()
        o = self.journal.orders[ref]
        if o.state is not None and o.state.perm_id:  # an event already told us before the failure
            self._settle_from([_pending(o, req, settled=False)], BrokerView(open_orders=[o.state]))
        self._kick.set()  # the same session may still show it (e.g. a timed-out answer)
        while not req.resolved:
            left = deadline.left()
            if left <= 0 or self._closed:
                raise OrderInDoubt(ref)
            resolved = self._resolved
            with anyio.move_on_after(left):
                await resolved.wait()
        if req.outcome == "not_done":
            raise OrderNotPlaced(ref, f"{command} {ref!r}: the broker has no trace of it ({req.message})",
                                 self.journal.orders[ref].state if req.op != "place" else None)  # fmt: skip
        st = self.journal.orders[ref].state
        assert st is not None
        return st

    async def _syncer(self) -> None:
        """Make ack records durable off the event loop and off the caller's path (fsm.journal)."""
        while not self._closed:
            await self._acked.wait()
            self._acked = anyio.Event()
            await anyio.sleep(ACK_SYNC_DELAY)
            j = self._journal
            if j is not None and j.unsynced and not self._closed:
                await anyio.to_thread.run_sync(j.sync)

    # ------------------------------------------------------------------------------ reconciliation

    async def _reconciler(self) -> None:
        while not self._closed:
            await self._kick.wait()
            self._kick = anyio.Event()
            if self._manager.state != State.CONNECTED:
                continue
            if self.settings.readonly and not self.journal.unresolved():
                continue
            gen = self._gen
            try:
                await self._reconcile_once(self.settings.request_timeout)
            except IbgwError as exc:
                log.warning("reconciliation failed (%s); trying again while the session is up", exc)
                await anyio.sleep(RECONCILE_RETRY)
                if gen == self._gen:
                    self._kick.set()

    async def _reconcile_once(self, timeout: float) -> Reconciliation:
        """Read the broker's orders and executions in this session and apply what they say."""
        async with self._lock:
            session, view_gen = self._session_up(), self._gen  # one session's word, or SessionLost
            t = max(timeout, 0.001)
            opened = await session.request("open_orders", timeout=t)
            done = await session.request("completed_orders", timeout=t)
            execs = await session.request("executions", timeout=t)
            view = BrokerView(
                msgspec.convert(opened, OrdersResult).orders,
                msgspec.convert(done, OrdersResult).orders,
                msgspec.convert(execs, ExecutionsResult).executions,
            )
            j = self.journal
            pending = [
                _pending(o, r, settled=self._settled(r, view_gen))
                for o, r in j.unresolved()
                if (o.ref, r.seq) not in self._in_flight
            ]
            known = {ref: (o.order_id, o.perm_id) for ref, o in j.orders.items()}
            r = reconcile(pending, known, view, [*j.delivered, *self._queue])
            for st in r.states.values():
                j.observe(st)
            self._apply(r.resolutions)
            self.counts["fills_recovered"] += self._enqueue(r.fills)
            self.counts["reconciliations"] += 1
            self._manager.report_changed()  # the snapshot shows the counters now, not at the next transition
            return r

    def _observed(self, st: OrderState) -> None:
        """A live order_status: it may end requests in doubt (never one still in flight)."""
        j = self.journal
        j.observe(st)
        o = j.orders.get(st.order_ref)
        if o is None or o.state is not st:
            return
        doubts = [
            _pending(o, r, settled=False) for r in o.unresolved() if (o.ref, r.seq) not in self._in_flight
        ]
        if doubts:
            self._settle_from(doubts, BrokerView(open_orders=[st]))

    def _settle_from(self, pending: list[Pending], view: BrokerView) -> None:
        known = {p.ref: (p.order_id, p.perm_id) for p in pending}
        self._apply(reconcile(pending, known, view, ()).resolutions)

    def _apply(self, resolutions: list[Resolution]) -> None:
        j = self.journal
        ended = 0
        for res in resolutions:
            o = j.orders.get(res.ref)
            req = next((r for r in o.requests if r.seq == res.seq), None) if o else None
            if req is None or req.resolved or res.kind == "in_doubt":
                continue
            if res.kind == "done":
                j.outcome(res.ref, res.seq, "done", state=res.state)
            else:
                why = "no trace at the broker" if res.state is None else f"the order is {res.state.status}"
                j.outcome(res.ref, res.seq, "not_done", state=res.state, message=why)
            ended += 1
            log.info("order %r request %d (%s) resolved: %s", res.ref, res.seq, req.op, res.kind)
        if ended:
            self.counts["orders_resolved"] += ended
            self._count_doubts()
            self._wake_resolved()
            self._manager.report_changed()

    def _enqueue(self, fills: list[Execution]) -> int:
        new = 0
        for x in fills:
            if x.exec_id in self.journal.delivered or x.exec_id in self._queue:
                continue
            self._queue[x.exec_id] = x
            new += 1
        if new:
            self._queued.set()
        return new

    # ------------------------------------------------------------------------------ small parts

    def _token(self) -> str:
        """The session a request is sent in: this process and its count of new sessions."""
        return f"{self._process}:{self._gen}"

    def _settled(self, r: Request, view_gen: int) -> bool:
        """Sent in a session older than the one the broker's view comes from (or by an earlier
        process): it can no longer reach the broker, so its absence there is an answer."""
        process, _, gen = r.session.rpartition(":")
        return process != self._process or int(gen) < view_gen

    def _session_up(self) -> services.Session:
        if self._up is None:
            raise NotConnected("no session is up")
        return self._up

    def _count_doubts(self) -> None:
        self.counts["orders_in_doubt"] = len(
            [1 for o, r in self.journal.unresolved() if (o.ref, r.seq) not in self._in_flight]
        )

    def _wake_resolved(self) -> None:
        self._resolved.set()
        self._resolved = anyio.Event()

    def _writable(self) -> None:
        if self.settings.readonly:
            raise ReadOnly()

    def _deadline(self, timeout: float | None) -> _Deadline:
        return _Deadline(
            self.settings.request_timeout if timeout is None else check_seconds("timeout", timeout)
        )

    def _known(self, ref: str, command: str) -> JournalOrder:
        o = self.journal.orders.get(ref)
        if o is None:
            raise BadRequest(f"{command}: no order with order_ref {ref!r} in the journal")
        if o.unresolved():
            raise OrderInDoubt(ref, f"{command}: order {ref!r} has a request in doubt; resolve it first with "
                                    f"order_status({ref!r})")  # fmt: skip
        if not o.order_id or o.place.outcome in ("not_done", "rejected"):
            raise BadRequest(f"{command}: order {ref!r} was never placed at the broker")
        return o


def _pending(o: JournalOrder, r: Request, *, settled: bool) -> Pending:
    return Pending(o.ref, r.seq, r.op, settled, o.order_id, o.perm_id, r.params if r.op == "modify" else {})


def _checked(typ: type[Any], command: str, params: dict[str, Any]) -> Any:
    try:
        return msgspec.convert(params, typ)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"{command}: {exc}") from None


def _not_sent_error(exc: GatewayError, ref: str) -> IbgwError:
    if exc.code == OrderCode.READ_ONLY:
        return ReadOnly(exc.message)
    if exc.code == OrderCode.DUPLICATE_ORDER_REF:
        return DuplicateOrderRef(ref, exc.message)
    return OrderNotPlaced(ref, exc.message)
