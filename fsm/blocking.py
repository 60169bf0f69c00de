"""A blocking API for synchronous traders, on anyio's blocking portal.

::

    import fsm.blocking
    from fsm.settings import Settings

    with fsm.blocking.connect(Settings.from_env()) as m:
        m.wait_connected(timeout=60)
        print(m.request("positions"))
        for change in m.subscribe():  # ends when the manager shuts down
            print(change)

The manager runs unchanged on an event loop in a thread of its own (anyio's
``start_blocking_portal``); every method here hands one call to that loop and waits for its
outcome, so there is one implementation of everything, and the errors are the very same
``IbgwError`` subclasses the async API raises. Any number of threads may call at once.

A new manager method is one line here: ``return self._call(partial(self._m.method, *args))``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import partial
from typing import Any, Generic, NoReturn, TypeVar, overload

from anyio.from_thread import BlockingPortal, start_blocking_portal

from fsm.core import Reason, State, Transition
from fsm.errors import NotConnected
from fsm.health import DEFAULT_HOST, DEFAULT_PORT, HealthServer, serve_health
from fsm.manager import Change, ConnectionManager, Subscription
from fsm.settings import Settings

__all__ = ["BlockingIterator", "BlockingManager", "connect"]

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
    """An async iterator of the manager (a subscription; later a stream) read from a thread.

    Iterating blocks until the next item; it ends when the source ends (for a subscription:
    after ``close()`` or the manager's shutdown, buffered items first).
    """

    def __init__(self, portal: BlockingPortal, source: AsyncIterator[T], close: Callable[[], None]) -> None:
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
            item = _END
        if isinstance(item, _End):
            self._done = True
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop receiving; items already buffered are still handed out."""
        try:
            self._portal.call(self._close)
        except RuntimeError:
            pass  # the portal stopped: the manager closed every subscription on its way out

    def __enter__(self) -> BlockingIterator[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        self._m.disconnect()

    def shutdown(self) -> None:
        """Retire the worker by process exit and stop (leaving ``connect``'s block does it too);
        blocked iterators end, other threads' waits raise NotConnected."""
        self._call(self._m.shutdown)


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
