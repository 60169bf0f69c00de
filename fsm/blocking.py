"""A blocking API for synchronous traders, on anyio's blocking portal.

::

    import fsm.blocking
    from fsm.settings import Settings

    with fsm.blocking.connect(Settings.from_env()) as m:
        m.wait_connected(timeout=60)
        print(m.request("positions"))
        with m.stream("quotes", symbol="AAPL") as s:  # leaving the block unsubscribes
            for item in s:  # Quote items, and a Gap wherever the flow broke
                print(item)
        state = m.place_order(symbol="AAPL", action="BUY", quantity=10, order_type="LMT",
                              limit_price=150.0, order_ref="strat-A:0001")
        for fill in m.executions():  # each fill of this client id once; ends at shutdown
            print(fill)

The manager runs unchanged on an event loop in a thread of its own (anyio's
``start_blocking_portal``); every method here hands one call to that loop and waits for its
outcome, so there is one implementation of everything, and the errors are the very same
``IbgwError`` subclasses the async API raises. Any number of threads may call at once (one
thread reading a stream while another places an order); each iterator belongs to one thread.

A new manager method is one line here: ``return self._call(partial(self._m.method, *args))``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, Generic, NoReturn, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from fsm.core import Reason, State, Transition
from fsm.errors import NotConnected
from fsm.health import DEFAULT_HOST, DEFAULT_PORT, HealthServer, serve_health
from fsm.manager import Change, ConnectionManager, Subscription
from fsm.settings import Settings
from fsm.streaming import Stream
from fsm.streams import Entry
from worker.market_protocol import ContractIdentity
from worker.orders_protocol import Execution, OrderState

__all__ = ["BlockingIterator", "BlockingManager", "BlockingStream", "connect"]

T = TypeVar("T")


class _End:
    """Marks the end of an async iterator (StopAsyncIteration does not cross the portal)."""


_END = _End()


async def _next(it: AsyncIterator[T]) -> T | _End:
    try:
        return await anext(it)
    except StopAsyncIteration:
        return _END


class BlockingIterator(Generic[T]):
    """An async iterator of the manager (a subscription, executions, a stream) read from a thread.

    Iterating blocks until the next item; it ends when the source ends (for a subscription:
    after ``close()`` or the manager's shutdown, buffered items first) and raises what the
    source raises.
    """

    def __init__(self, portal: BlockingPortal, source: AsyncIterator[T], close: Callable[[], object]) -> None:
        self._portal = portal
        self._source = source
        self._close = close
        self._done = False

    def __iter__(self) -> BlockingIterator[T]:
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        try:
            item = self._portal.call(_next, self._source)
        except RuntimeError:  # the portal stopped: the manager is gone, so is the source
            self._done = True
            self._gone()
            item = _END
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        return item

    def _gone(self) -> None:
        """What iterating does once the manager's loop has stopped: end (as the source did)."""

    def close(self) -> None:
        """Stop receiving; items already buffered are still handed out."""
        try:
            self._portal.call(self._close)
        except RuntimeError:
            pass  # the portal stopped: the manager closed every source on its way out

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingStream(BlockingIterator[Entry]):
    """``with m.stream("quotes", symbol="AAPL") as s: for item in s:`` Quote, Bar or Trade
    items and a Gap wherever the flow broke (fsm.streaming.Stream, read from a thread).

    Entering subscribes (a refusal is raised there); leaving unsubscribes. Iterating raises a
    later refusal once the items before it are read, and NotConnected once the manager is gone.
    """

    def __init__(self, portal: BlockingPortal, stream: Stream) -> None:
        super().__init__(portal, stream, partial(stream.__aexit__, None, None, None))
        self._stream = stream

    def __enter__(self) -> BlockingStream:
        try:
            self._portal.call(self._stream.__aenter__)
        except RuntimeError:
            raise NotConnected("stream: the manager is not running") from None
        return self

    def _gone(self) -> None:
        raise NotConnected("the manager shut down")

    def _read(self, fn: Callable[[], T]) -> T:
        """A property of the stream, read on the manager's loop (or as it was left at the end)."""
        try:
            return self._portal.call(fn)
        except RuntimeError:
            return fn()

    @property
    def contract(self) -> ContractIdentity | None:
        """The qualified contract (once a subscribe was answered)."""
        return self._read(lambda: self._stream.contract)

    @property
    def delayed(self) -> bool:
        return self._read(lambda: self._stream.delayed)

    @property
    def dropped(self) -> int:
        """Items lost to this reader's buffer bound (quotes: conflated away)."""
        return self._read(lambda: self._stream.dropped)

    @property
    def gaps(self) -> int:
        return self._read(lambda: self._stream.gaps)

    @property
    def restored(self) -> int:
        """Subscriptions answered after a break."""
        return self._read(lambda: self._stream.restored)

    @property
    def longest_gap(self) -> dt.timedelta:
        return self._read(lambda: self._stream.longest_gap)


class BlockingManager:
    """A running ConnectionManager, driven from ordinary threads (see ``connect``)."""

    def __init__(self, m: ConnectionManager, portal: BlockingPortal) -> None:
        self._m = m
        self._portal = portal
        self._stopped = False

    @overload
    def _call(self, fn: Callable[[], Awaitable[T]]) -> T: ...
    @overload
    def _call(self, fn: Callable[[], T]) -> T: ...
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the manager's loop and return its outcome (or raise its error)."""
        try:
            return self._portal.call(fn)
        except RuntimeError:
            if self._stopped:
                raise NotConnected("the manager is not running (its `with` block has ended)") from None
            raise

    # --------------------------------------------------------------------------- read-only

    @property
    def settings(self) -> Settings:
        return self._m.settings

    @property
    def client_id(self) -> int:
        return self._m.client_id

    @property
    def state(self) -> State:
        return self._call(lambda: self._m.state)

    @property
    def reason(self) -> Reason | None:
        return self._call(lambda: self._m.reason)

    @property
    def history(self) -> list[Transition]:
        return self._call(lambda: self._m.history)

    @property
    def worker_pid(self) -> int | None:
        return self._call(lambda: self._m.worker_pid)

    @property
    def farms(self) -> dict[int, str]:
        return self._call(lambda: self._m.farms)

    @property
    def last_handshake(self) -> dict[str, Any] | None:
        return self._call(lambda: self._m.last_handshake)

    def metrics(self) -> dict[str, Any]:
        return self._call(self._m.metrics)

    # ------------------------------------------------------------------------------ waits

    def wait_for(self, state: State, timeout: float | None = None) -> None:
        """Block until the manager is in ``state``; TimeoutError after ``timeout`` seconds."""
        self._call(partial(self._m.wait_for, state, timeout))

    def wait_connected(self, timeout: float | None = None) -> None:
        self._call(partial(self._m.wait_connected, timeout))

    # --------------------------------------------------------------------------- commands

    def request(
        self, command: str, *, timeout: float | None = None, wait: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """ConnectionManager.request, blocking: its data, or the same typed error."""
        return self._call(partial(self._m.request, command, timeout=timeout, wait=wait, **params))

    def subscribe(self) -> BlockingIterator[Change]:
        """State changes and notices from now on, as a blocking iterator."""
        sub: Subscription = self._call(self._m.subscribe)
        return BlockingIterator(self._portal, sub, sub.close)

    def stream(
        self, kind: str, *, buffer: int | None = None, timeout: float | None = None, **contract: Any
    ) -> BlockingStream:
        """ConnectionManager.stream, for ``with ... as s: for item in s:`` (BlockingStream).
        BadRequest at once for a bad kind or contract."""
        stream = self._call(partial(self._m.stream, kind, buffer=buffer, timeout=timeout, **contract))
        return BlockingStream(self._portal, stream)

    # ----------------------------------------------------------------------------- orders

    def place_order(
        self,
        *,
        order_ref: str | None = None,
        timeout: float | None = None,
        allow_in_maintenance: bool = False,
        **fields: Any,
    ) -> OrderState:
        """ConnectionManager.place_order, blocking: the acknowledged order, or the same typed
        error (ReadOnly, MaintenanceWindow, OrderRejected, OrderNotPlaced, OrderInDoubt...)."""
        return self._call(
            partial(
                self._m.place_order,
                order_ref=order_ref,
                timeout=timeout,
                allow_in_maintenance=allow_in_maintenance,
                **fields,
            )
        )

    def modify_order(self, order_ref: str, *, timeout: float | None = None, **changes: Any) -> OrderState:
        return self._call(partial(self._m.modify_order, order_ref, timeout=timeout, **changes))

    def cancel_order(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        return self._call(partial(self._m.cancel_order, order_ref, timeout=timeout))

    def order_status(self, order_ref: str, *, timeout: float | None = None) -> OrderState:
        """The order as the broker has it now (resolves an order in doubt)."""
        return self._call(partial(self._m.order_status, order_ref, timeout=timeout))

    def executions(self) -> BlockingIterator[Execution]:
        """``for fill in m.executions():`` every execution of this client id once; ends when
        the manager shuts down (or at ``close()``)."""
        fills = self._call(self._m.executions)
        close = fills.aclose if isinstance(fills, AsyncGenerator) else _nothing
        return BlockingIterator(self._portal, fills, close)

    def serve_health(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        allow_remote: bool = False,
        access_log: bool = False,
    ) -> AbstractContextManager[HealthServer]:
        """/livez, /readyz and /metrics on the manager's loop while the ``with`` block runs
        (see fsm.health.serve_health)."""
        return self._portal.wrap_async_context_manager(
            serve_health(self._m, host, port, allow_remote=allow_remote, access_log=access_log)
        )

    def disconnect(self) -> NoReturn:
        """Always refuses (DisconnectForbidden): a session ends only by its worker's exit."""
        self._m.disconnect()  # raises DisconnectForbidden: refused, never forwarded

    def shutdown(self) -> None:
        """Retire the worker by process exit and stop (leaving ``connect``'s block does it too);
        blocked iterators end, other threads' waits raise NotConnected."""
        self._call(self._m.shutdown)


async def _nothing() -> None:
    """Closing an iterator that holds nothing to release."""


@contextmanager
def connect(
    settings: Settings,
    *,
    backend: str = "asyncio",
    **manager_options: Any,
) -> Iterator[BlockingManager]:
    """Start a ConnectionManager on its own event-loop thread; shut it down when the block ends.

    Returns as soon as the manager runs (it connects in the background: ``wait_connected``).
    ``backend`` is the anyio backend for that loop ("asyncio" or "trio"); ``manager_options``
    go to ConnectionManager (e.g. ``subscriber_buffer``).
    """
    manager = ConnectionManager(settings, **manager_options)
    with start_blocking_portal(backend) as portal:
        bm = BlockingManager(manager, portal)
        try:
            with portal.wrap_async_context_manager(manager):
                yield bm
        finally:
            bm._stopped = True
