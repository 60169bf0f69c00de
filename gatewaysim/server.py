"""GatewaySim: the sans-IO Gateway (gateway.py) served over TCP with anyio.

The server only accepts and pumps: one task per connection feeds the socket's bytes to its
`Session` and a writer flushes what the session queues (during a request or from a timer), one
clock task runs the Gateway's timers and closes the listener while the Gateway is down. It also
finds each peer's pid while its socket is open, to tell a `disconnect()` from a process exit.
Every control method is synchronous and must be called from the event loop that runs the
simulator (use `running_in_thread` from other threads). State changes wake `wait_until`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from . import wire
from .faults import Faults
from .gateway import Gateway
from .observe import CloseRecord, SimEvent
from .peers import find_peer_pid, process_alive
from .session import HelloRead, Session, SessionRefused

log = logging.getLogger("gatewaysim")

PEER_ALIVE_DELAY = 0.15  # after EOF, let an exiting process finish dying before asking psutil
PID_LOOKUP_WAIT = 2.0


def _loopback_family(host: str) -> tuple[str, socket.AddressFamily]:
    if host == "localhost":
        host = "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"host must be a loopback address, got {host!r}") from None
    if not addr.is_loopback:
        raise ValueError(f"host must be a loopback address, got {host!r}")
    return host, socket.AF_INET6 if addr.version == 6 else socket.AF_INET


class _Conn:
    """A session's socket, its wake-up and what we learn about the peer process."""

    def __init__(self, session: Session, stream: anyio.abc.SocketStream, local: tuple[str, int]) -> None:
        self.session = session
        self.stream = stream
        self.local = local
        self.wake = anyio.Event()
        self.scope = anyio.CancelScope()
        self.pid: int | None = None
        self.pid_known = False
        self.pid_started = False
        self.pid_done = anyio.Event()
        session.on_output = self._wake

    def _wake(self) -> None:
        self.wake.set()


class GatewaySim(Gateway):
    """A simulated IB Gateway on loopback (the Gateway's state and faults, plus the I/O)."""

    def __init__(
        self,
        *,
        accounts: Iterable[str] = ("DU1234567",),
        host: str = "127.0.0.1",
        port: int = 0,
        server_version: int = wire.SERVER_MAX_VERSION,
        faults: Faults | None = None,
        on_event: Callable[[SimEvent], None] | None = None,
        track_pids: bool = True,
        seed: int = 0,
        tick_rate: float = 4.0,
        wall: Callable[[], float] = time.time,
        positions: int | None = None,
    ) -> None:
        """`seed`, `tick_rate`: the price process; `wall`: the epoch clock every price, bar and
        fill is a function of (pin it to replay a trading day); `positions`: how many position
        rows the first account holds (None: 100 AAPL and 50 MSFT, as every other account)."""
        super().__init__(
            accounts=accounts,
            server_version=server_version,
            faults=faults,
            on_event=on_event,
            seed=seed,
            tick_rate=tick_rate,
            wall=wall,
            positions=positions,
        )
        self.host, self._family = _loopback_family(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.port = port
        self.track_pids = track_pids
        self.listening = False
        self.on_change = self._notify
        self._conns: dict[int, _Conn] = {}
        self._recent_pids: deque[int] = deque(maxlen=8)  # peers that connected lately
        self._tg: anyio.abc.TaskGroup | None = None
        self._listen_scope: anyio.CancelScope | None = None
        self._outer_tg: anyio.abc.TaskGroup | None = None
        self._changed: anyio.Event | None = None

    # -------------------------------------------------------------------- observables

    def peer_pid(self, s: Session, *, lookup: bool) -> int | None:
        c = self._conns.get(s.session_id)
        if c is None:
            return None
        if lookup and not c.pid_known:
            c.pid = find_peer_pid(s.peer, c.local)
            c.pid_known = True
        return c.pid if c.pid_known else None

    def snapshot(self) -> dict[str, Any]:
        return {"port": self.port, "listening": self.listening, **super().snapshot()}

    async def wait_until(self, predicate: Callable[[GatewaySim], bool], timeout: float) -> None:
        """Wait for a condition on the simulator, woken by each state change (no polling)."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"simulator condition not met within {timeout} s")
            await self._wait_change(remaining)

    async def _wait_change(self, timeout: float) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        ev = self._changed
        with anyio.move_on_after(timeout):
            await ev.wait()

    def _notify(self) -> None:
        ev, self._changed = self._changed, None
        if ev is not None:
            ev.set()

    # -------------------------------------------------------------------- serving

    async def __aenter__(self) -> GatewaySim:
        tg = anyio.create_task_group()
        await tg.__aenter__()
        try:
            await tg.start(self.serve)
        except BaseException:
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
            raise
        self._outer_tg = tg
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop serving. The body's own exception propagates as it is (not in a group)."""
        tg, self._outer_tg = self._outer_tg, None
        assert tg is not None
        tg.cancel_scope.cancel()
        await tg.__aexit__(None, None, None)

    async def serve(self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; `await tg.start(sim.serve)` returns the port."""
        if self._tg is not None:
            raise RuntimeError("this GatewaySim is already serving")
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                listener = await self._bind()
                if self.red:
                    self.emit("RED", "silent: started RED")
                tg.start_soon(self._clock)
                task_status.started(self.port)
                while True:
                    await self._accept_until_down(listener, tg)
                    await self._wait_down_over()
                    self.back_up()
                    listener = await self._bind()
        finally:
            self._tg = None
            self.listening = False
            self._notify()

    async def _clock(self) -> None:
        """Run the Gateway's timers when due; close the listener while the Gateway is down."""
        while True:
            now = time.monotonic()
            self.scheduler.run_due(now)
            if self.down_until > now and self._listen_scope is not None:
                self._listen_scope.cancel()
            deadline = self.scheduler.next_deadline()
            wait = math.inf if deadline is None else deadline - time.monotonic()
            if wait > 0:
                await self._wait_change(wait)

    async def _bind(self) -> anyio.abc.SocketListener:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        listener = await anyio.abc.SocketListener.from_socket(sock)
        self.listening = True
        self.emit(
            "listening",
            f"{self.host}:{self.port} server version {self.server_version}"
            f" accounts {','.join(self.accounts)}"
            f" {'GREEN' if self.green else 'RED'}",
        )
        return listener

    async def _accept_until_down(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        with anyio.CancelScope() as scope:
            self._listen_scope = scope
            if self.down_until > time.monotonic():
                scope.cancel()
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:  # e.g. out of fds: keep listening
                        log.warning("accept failed: %s", exc)
                        await anyio.sleep(0.05)
                        continue
                    tg.start_soon(self._handle, stream)
        self._listen_scope = None
        self.listening = False
        self._notify()

    async def _wait_down_over(self) -> None:
        while (remaining := self.down_until - time.monotonic()) > 0:
            await self._wait_change(remaining)

    # -------------------------------------------------------------------- one connection

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        peer = tuple(stream.extra(SocketAttribute.remote_address)[:2])
        local = tuple(stream.extra(SocketAttribute.local_address)[:2])
        s = self.open_session(peer)  # type: ignore[arg-type]
        c = _Conn(s, stream, local)  # type: ignore[arg-type]
        self._conns[s.session_id] = c
        by_client: str | None = None
        try:
            with c.scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer, c)
                    try:
                        await self._read_loop(c, tg)
                        by_client = "EOF"
                    except (anyio.BrokenResourceError, ConnectionError) as exc:
                        by_client = f"reset ({type(exc).__name__})"
                    except wire.WireError as exc:
                        if not isinstance(exc, SessionRefused):
                            self.counters.malformed += 1
                        s.close(f"{type(exc).__name__}: {exc}", flush=False)
                        log.warning("session %d closed: %s", s.session_id, s.close_reason)
                    except anyio.ClosedResourceError:
                        pass
                    tg.cancel_scope.cancel()
        except Exception as exc:  # a bug in one session must not take the server down
            log.exception("session %d failed", s.session_id)
            s.close(f"internal error: {type(exc).__name__}", flush=False)
        finally:
            # bookkeeping first, so that no client sees our FIN before the state shows it
            now = time.monotonic()
            s.close(f"closed by the client ({by_client})" if by_client else "simulator stopped", flush=False)
            self.session_ended(s, by_client)
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
        if by_client:
            await self._record_close(c, now)
        self._conns.pop(s.session_id, None)

    async def _read_loop(self, c: _Conn, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                data = await c.stream.receive(65536)
            except anyio.EndOfStream:
                return
            for event in c.session.receive_data(data):
                if isinstance(event, HelloRead) and event.ignored and self.track_pids:
                    tg.start_soon(self._lookup_pid_soon, c)

    async def _writer(self, c: _Conn) -> None:
        """Flush what the session queues, coalesced into one send; close when it asks."""
        s = c.session
        while True:
            await c.wake.wait()
            c.wake = anyio.Event()
            batch = s.data_to_send()
            # The pid lookup runs once, before the client can learn that its handshake
            # completed: after the hello reply when that goes alone (overlapping the
            # client's work), before the flush when more is queued behind it.
            lookup = self.track_pids and not c.pid_started and bool(batch)
            if lookup and len(batch) > 1:
                self._lookup_pid_now(c)
            if batch:
                try:
                    await c.stream.send(b"".join(batch))
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
            if lookup and not c.pid_started:
                self._lookup_pid_now(c)
            if not s.live:
                c.scope.cancel()
                return

    # -------------------------------------------------------------------- pid forensics

    def _lookup_pid_now(self, c: _Conn) -> None:
        """Find the peer's pid while its socket is open (once closed, no fd names it).

        Called by the writer around its first flush (see there); an exact netlink query plus
        an fd scan, well under a millisecond for a recent client.
        """
        c.pid_started = True
        try:
            if not c.pid_known:
                c.pid = find_peer_pid(c.session.peer, c.local, self._recent_pids)
                c.pid_known = True
            if c.pid is not None:
                with contextlib.suppress(ValueError):
                    self._recent_pids.remove(c.pid)
                self._recent_pids.appendleft(c.pid)
        finally:
            c.pid_done.set()
            self._notify()

    async def _lookup_pid_soon(self, c: _Conn) -> None:
        """For sessions that get no reply (RED): look up once the hello is read."""
        c.pid_started = True
        try:
            await anyio.sleep(0)
            self._lookup_pid_now(c)
        finally:
            c.pid_done.set()

    async def _record_close(self, c: _Conn, at: float) -> None:
        """Decide whether a live process closed the socket: ask psutil a moment after EOF."""
        if c.pid_started:
            with anyio.move_on_after(PID_LOOKUP_WAIT):
                await c.pid_done.wait()
        s, pid = c.session, c.pid
        alive: bool | None = None
        if pid is not None:
            await anyio.sleep(max(0.0, at + PEER_ALIVE_DELAY - time.monotonic()))
            alive = process_alive(pid)
        age = at - (s.handshaken_at if s.handshaken_at is not None else s.connected_at)
        self.record_close(CloseRecord(s.client_id, pid, at, alive, s.peer, s.handshaken_at is not None, age))
