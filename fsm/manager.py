"""ConnectionManager: the public face of one Gateway connection.

What a trader calls: ``async with``, ``request()``, ``wait_connected()``, ``subscribe()``,
``metrics()``, ``shutdown()``. The work is done beside it, one job per module: the driver that
feeds the sans-IO core and performs its actions (fsm.driver), the worker process handle and its
retire ladder (fsm.process), the IB code classifier (fsm.ibcodes), request checking and answer
mapping (fsm.commands), the lock (fsm.lockfile), stale-worker reaping (fsm.zombies), the status
snapshot (fsm.status) and the subscribers (fsm.changes). Runs on any anyio backend: ib_async
lives only in the worker process.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn

import anyio
import anyio.abc

from fsm.changes import Change, Notice, StateChange, Subscription
from fsm.commands import check_seconds
from fsm.core import Reason, State, Transition
from fsm.driver import Driver
from fsm.errors import DisconnectForbidden, NotConnected, WaitTimeout
from fsm.orders import OrderService
from fsm.pids import worker_label
from fsm.process import WorkerProcess
from fsm.requests import Undelivered
from fsm.settings import Settings
from fsm.streaming import Stream, StreamService
from worker.orders_protocol import Execution, OrderState

log = logging.getLogger(__name__)

__all__ = ["Change", "ConnectionManager", "Notice", "StateChange", "Subscription"]


class ConnectionManager:
    """Owns one Gateway connection (one client id) through one worker process at a time.

    Use as ``async with ConnectionManager(settings) as m:``; leaving the block shuts down (the
    worker is retired by process exit, never by a disconnect; a session younger than
    settings.min_session is kept until it is that old, so a quick script cannot fast-close).
    Entering resolves the host once (UnknownHost), checks the state dir (UnsafeStateDir), takes
    the lock of each resolved address (AlreadyRunning if a live manager holds one) and ends a
    stale worker of ours that a dead manager left holding the id. Worker stderr goes to the
    ``fsm.worker`` logger.
    """

    def __init__(
        self, settings: Settings, *, worker_argv: Sequence[str] | None = None, subscriber_buffer: int = 1024
    ) -> None:
        self.settings = s = settings
        base = list(worker_argv) if worker_argv else [sys.executable, "-m", "worker"]
        argv = [*base, "--label", worker_label(s.host, s.port, s.client_id)]
        self._d = Driver(settings, argv, subscriber_buffer)
        self.services = self._d.reports.services  # fsm.services: features register here, before start
        self._orders = OrderService(settings, self, self._d.counts)
        self.services.add(self._orders)
        self._streams = StreamService()
        self.services.add(self._streams)
        self._tg: anyio.abc.TaskGroup | None = None
        self._started = self._closed = False
        self._closed_event = anyio.Event()

    # ------------------------------------------------------------------------------ reading

    @property
    def state(self) -> State:
        return self._d.core.state

    @property
    def reason(self) -> Reason | None:
        return self._d.core.reason

    @property
    def client_id(self) -> int:
        return self.settings.client_id

    @property
    def addresses(self) -> tuple[str, ...]:
        """The Gateway addresses the host resolved to at start (the lock's keys)."""
        return self._d.addresses

    @property
    def history(self) -> list[Transition]:
        """The core's transitions (at_ns, source, event, dest, reason), oldest first."""
        return list(self._d.core.history)

    @property
    def worker_pid(self) -> int | None:
        return self._d.workers.current.pid if self._d.workers.current is not None else None

    @property
    def spare_pid(self) -> int | None:
        """The warm spare's pid once it is ready (settings.warm_spare), else None."""
        spare = self._d.workers.spare
        return spare.pid if spare is not None and spare.ready_pid is not None else None

    @property
    def farms(self) -> dict[int, str]:
        """Latest message per farm status code (2103-2108, 2157, 2158)."""
        return dict(self._d.reports.farms)

    @property
    def last_error(self) -> str | None:
        """Why the last connect failed, as the worker said it (``code: message``)."""
        return self._d.reports.last_error

    @property
    def last_handshake(self) -> dict[str, Any] | None:
        """The data of the last successful connect (accounts, server_version, elapsed_ms...)."""
        return self._d.last_handshake

    def metrics(self) -> dict[str, Any]:
        """The core's counters and durations, the manager's own counts and the services'
        figures (streams, orders)."""
        out = self._d.metrics()
        out["requests_in_flight"] = self._d.requests.in_flight
        return out

    def report_changed(self) -> None:
        """A service's figures changed with no state change (e.g. a reconciliation resolved
        orders in doubt): rewrite the status snapshot now (coalesced, off the event loop), so
        ``ibgw status`` does not wait for the next transition to show them."""
        self._d.reports.status()

    async def wait_for(self, state: State, timeout: float | None = None) -> None:
        """Return once the core is in ``state``; WaitTimeout (a TimeoutError) after ``timeout``
        seconds. NotConnected if the manager shuts down first (unless waiting for IDLE)."""
        try:
            with anyio.fail_after(timeout):
                while self._d.core.state != state:
                    if self._d.closing and state != State.IDLE:
                        raise NotConnected(f"the manager shut down while waiting for {state}")
                    await self._d.reports.changed.wait()
        except TimeoutError:
            core = self._d.core
            why = f" ({core.reason})" if core.reason is not None else ""
            raise WaitTimeout(f"not {state} within {timeout:g} s: the manager is {core.state}{why}") from None

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self.wait_for(State.CONNECTED, timeout)

    def subscribe(self) -> Subscription:
        """State changes and notices from now on (see Subscription for the overflow rule)."""
        return self._d.reports.changes.subscribe()

    # ----------------------------------------------------------------------------- requests

    def disconnect(self) -> NoReturn:
        """Always refuses: a session ends only by its worker's exit, through shutdown()."""
        raise DisconnectForbidden()

    async def request(
        self, command: str, *, timeout: float | None = None, wait: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """Send one command to the worker; exactly one outcome: its data, or a typed error.

        BadRequest at once for a malformed command, params or timeout; NotConnected if there is
        no session (at once, or after ``wait`` seconds of waiting for one; a worker that has
        died counts as none from its death on, so the call waits for the next session rather
        than fail with WorkerDied); SessionLost (a
        NotConnected) if the session ends under it; WorkerDied if the worker dies first;
        RequestTimeout after ``timeout`` (default settings.request_timeout); ResponseTooLarge;
        GatewayError(code).
        """
        prepared = self._d.requests.prepare(command, timeout, params)
        waited = None if wait is None else check_seconds("wait", wait, zero_ok=True)
        deadline = anyio.current_time() + (waited or 0.0)
        while True:
            w = await self._session_worker(command, waited, deadline)
            try:
                return await self._d.requests.exchange(w, prepared)
            except Undelivered:
                continue  # it never reached that worker (dead, not yet reaped): the next session's

    async def _session_worker(self, command: str, wait: float | None, deadline: float) -> WorkerProcess:
        """The worker of the session that is up; waiting for one until ``deadline`` if ``wait``."""
        while (w := self._d.session_worker()) is None:
            if self._d.closing or not self._started:
                raise NotConnected(f"{command}: the manager is not running")
            where = f"state {self.state}, reason {self.reason or '-'}"
            if self.state == State.CONNECTED:
                where += ", its worker has stopped reading"
            if not wait:
                raise NotConnected(f"{command}: not connected ({where})")
            if anyio.current_time() >= deadline:
                raise NotConnected(f"{command}: not connected after waiting {wait:g} s ({where})")
            with anyio.move_on_after(deadline - anyio.current_time()):
                await self._d.reports.changed.wait()
        return w

    # ------------------------------------------------------------------------------- orders

    async def place_order(
        self,
        *,
        order_ref: str | None = None,
        timeout: float | None = None,
        allow_in_maintenance: bool = False,
        **fields: Any,
    ) -> OrderState:
        """Place one order (symbol or con_id, action, quantity, order_type, limit_price,
        stop_price, tif, outside_rth, account); exactly one outcome within ``timeout``
        (default settings.request_timeout): the acknowledged order, or ReadOnly,
        MaintenanceWindow, BadRequest, DuplicateOrderRef, OrderRejected(code),
        OrderNotPlaced(ref) (a retry is safe), OrderInDoubt(ref) (never re-send: resolve it with
        order_status). A generated order_ref is used when none is given (see fsm.orders)."""
        return await self._orders.place(
            order_ref=order_ref, timeout=timeout, allow_in_maintenance=allow_in_maintenance, **fields
        )

    async def modify_order(
        self, order_ref: str, *, timeout: float | None = None, **changes: Any
    ) -> OrderState:
        """Change quantity, order_type, limit_price, stop_price, tif or outside_rth of a working
        order; the same outcomes as place_order (OrderNotPlaced: the change did not take)."""
        return await self._orders.modify(order_ref, timeout=timeout, **changes)

    async def cancel_order(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        """Cancel a working order; OrderRejected(10147/10148) when the broker cannot."""
        return await self._orders.cancel(order_ref, timeout=timeout)

    async def order_status(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        """The order as the broker has it now; resolves an order in doubt (also one from
        before a restart of this process) once a session is up."""
        return await self._orders.status(order_ref, timeout=timeout)

    def executions(self) -> AsyncIterator[Execution]:
        """``async for fill in m.executions():`` every execution of this client id once, with
        its commission, including fills that happened while no session was up."""
        return self._orders.executions()

    # ------------------------------------------------------------------------------ streams

    def stream(
        self, kind: str, *, buffer: int | None = None, timeout: float | None = None, **contract: Any
    ) -> Stream:
        """``async with m.stream("quotes", symbol="AAPL") as s: async for item in s:`` Quote,
        Bar or Trade items (kind "quotes", "bars_5s", "trades"; the contract as for qualify), and
        a Gap(since, until, reason) wherever the flow broke; it lives through respawns, new
        sessions and 1101 (see fsm.streaming). BadRequest at once for a bad kind or contract;
        entering while connected raises a refusal at once (GatewayError: no_security_definition,
        no_market_data_permission, market_data_lines...). ``buffer``: bars/trades kept for a slow
        reader (default 1000; quotes conflate); ``s.dropped`` counts what it lost."""
        return self._streams.stream(kind, buffer=buffer, timeout=timeout, **contract)

    # ---------------------------------------------------------------------------------- life

    async def shutdown(self) -> None:
        """Retire the worker by process exit and stop; idempotent. Never disconnects."""
        if self._closed or not self._started:
            return
        if self._d.closing:
            await self._closed_event.wait()
            return
        self._d.closing = True
        try:
            await self._no_fast_close()
            await self._d.stop()
        finally:
            self._closed = True
            self._d.close()
            self._closed_event.set()

    async def _no_fast_close(self) -> None:
        """Never close a session younger than min_session: a connect -> close cycle within a
        short window is what turns a Gateway's API layer RED, and `async with manager: one
        request` would be exactly that. Deliberate waits, each bounded by min_session."""
        ms = self.settings.min_session
        with anyio.move_on_after(ms):
            while self.state == State.HANDSHAKING and self._d.workers.current is not None:
                await self._d.reports.changed.wait()
        w = self._d.workers.current
        if w is None or w.session_ns is None or w.session_lost or w.retiring:
            return
        left = (w.session_ns - time.monotonic_ns()) / 1e9 + ms
        if left > 0:
            log.info("shutdown: keeping a %.2f s old session %.2f s more (min_session)", ms - left, left)
            await anyio.sleep(left)

    async def __aenter__(self) -> ConnectionManager:
        if self._started:
            raise RuntimeError("a ConnectionManager can be started only once")
        self._started = True
        try:
            await self._d.open()
            self.services.open(self._d.addresses[0])
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            self._closed = True
            self._d.close()
            raise
        self.services.run(self._tg)
        self._d.run(self._tg)
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            self._tg.cancel_scope.cancel()
            exc = exc_info[1]
            suppress: bool | None
            if exc is None or isinstance(exc, anyio.get_cancelled_exc_class()):
                # A cancellation may be our own task group's: it must absorb it.
                suppress = await self._tg.__aexit__(*exc_info)
            else:
                # The block's own error propagates as it is, not wrapped in an ExceptionGroup.
                await self._tg.__aexit__(None, None, None)
                suppress = None
        return suppress
