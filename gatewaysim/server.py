"""GatewaySim: an anyio TCP server that an unmodified ib_async 2.1.0 connects to, with faults.

One task per connection reads frames and answers synchronously into that session's outbox; a
writer task per session flushes it. Every control method is synchronous and must be called from
the event loop that runs the simulator (use `running_in_thread` from other threads). State
changes are appended to `events` and wake `wait_until`.
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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

from . import wire
from .faults import SYNC_REQUESTS, Faults, check_seconds, check_sync_name, check_window
from .peers import find_peer_pid, process_alive

log = logging.getLogger("gatewaysim")

PEER_ALIVE_DELAY = 0.15  # after EOF, let an exiting process finish dying before asking psutil
PID_LOOKUP_WAIT = 2.0

TEXT_326 = "Unable to connect as the client id is already in use. Retry with a unique client id."
TEXT_1100 = "Connectivity between IB and Trader Workstation has been lost."
TEXT_1101 = "Connectivity between IB and Trader Workstation has been restored - data lost."
TEXT_1102 = "Connectivity between IB and Trader Workstation has been restored - data maintained."
FARMS_OK = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
TEXT_2103 = "Market data farm connection is broken:usfarm"
CODE_READ_ERROR = 320  # TWS: "Server error when reading an API client request."
CODE_UNKNOWN_ID = 505  # official ibapi: "Fatal Error: Unknown message id."

_SYNC_NAME_BY_ID = {msg_id: name for name, msg_id in SYNC_REQUESTS.items()}

# ------------------------------------------------------------------------------------------
# The simulated book: the same realistic rows for every account.

AAPL = wire.Instrument(265598, "AAPL", primary_exchange="NASDAQ")
MSFT = wire.Instrument(272093, "MSFT", primary_exchange="NASDAQ")
# instrument, quantity, average cost, market price
HOLDINGS: tuple[tuple[wire.Instrument, float, float, float], ...] = (
    (AAPL, 100.0, 150.25, 187.40),
    (MSFT, 50.0, 310.10, 415.20),
)
# tag, value, currency (account summary and account updates)
ACCOUNT_VALUES: tuple[tuple[str, str, str], ...] = (
    ("AccountType", "INDIVIDUAL", ""),
    ("NetLiquidation", "100000.00", "USD"),
    ("TotalCashValue", "60500.00", "USD"),
    ("GrossPositionValue", "39500.00", "USD"),
    ("BuyingPower", "364000.00", "USD"),
    ("AvailableFunds", "91000.00", "USD"),
    ("ExcessLiquidity", "92000.00", "USD"),
    ("InitMarginReq", "9000.00", "USD"),
    ("MaintMarginReq", "8000.00", "USD"),
)


# ------------------------------------------------------------------------------------------
# Observables


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


# ------------------------------------------------------------------------------------------
# One connection


@dataclass(frozen=True, slots=True)
class _Close:
    reason: str


class SessionRefused(wire.WireError):
    """A well-formed client we will not serve (version range, no startApi first)."""


class _Session:
    def __init__(
        self, sid: int, stream: anyio.abc.SocketStream, peer: tuple[str, int], local: tuple[str, int]
    ) -> None:
        self.sid = sid
        self.stream = stream
        self.peer = peer
        self.local = local
        self.connected_at = time.monotonic()
        self.outbox, self.inbox = anyio.create_memory_object_stream[Any](math.inf)
        self.scope: anyio.CancelScope | None = None
        self.close_reason: str | None = None
        self.hello_seen = False
        self.hello_answered = False
        self.rejected = False
        self.version: int | None = None
        self.client_id: int | None = None
        self.handshaken_at: float | None = None
        self.pid_value: int | None = None
        self.pid_known = False
        self.pid_started = False
        self.pid_done = anyio.Event()

    def send(self, data: bytes | _Close) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.outbox.send_nowait(data)

    def close(self, reason: str) -> None:
        """Server-side close (takes effect at the session task's next checkpoint)."""
        if self.close_reason is None:
            self.close_reason = reason
        if self.scope is not None:
            self.scope.cancel()

    def pid(self) -> int | None:
        """Cached, or looked up now (lazily) if the background lookup has not run yet."""
        if not self.pid_known:
            self.pid_value = find_peer_pid(self.peer, self.local)
            self.pid_known = True
        return self.pid_value

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.sid, self.client_id, self.peer, self.connected_at, self.handshaken_at, self.version, self.pid
        )


# ------------------------------------------------------------------------------------------


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


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


class GatewaySim:
    """A simulated IB Gateway on loopback; see DESIGN.md section 6 for the faults it models."""

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
    ) -> None:
        self.accounts: tuple[str, ...] = tuple(a for a in accounts if a)
        if not self.accounts or any("," in a or "\0" in a for a in self.accounts):
            raise ValueError(f"need at least one account name without commas: {accounts!r}")
        self.host, self._family = _loopback_family(host)
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.port = port
        self.server_version = server_version
        self.on_event = on_event
        self.track_pids = track_pids
        faults = faults or Faults()
        self._fast_window = faults.red_on_fast_close
        self._handshake_delay = faults.handshake_delay
        self._stall = faults.stall_sync
        self._hold = faults.client_id_hold
        self._red = faults.silent

        self.counters = Counters()
        self.client_ids_seen: set[int] = set()
        self.client_closes: list[CloseRecord] = []
        self.events: deque[SimEvent] = deque(maxlen=10_000)
        self.upstream_connected = True
        self.listening = False
        self._sessions: dict[int, _Session] = {}
        self._holds: dict[int, float] = {}  # client id -> monotonic expiry (inf = until restart)
        self._next_sid = 1
        self._recent_pids: deque[int] = deque(maxlen=8)  # peers that connected lately
        self._down_until = 0.0
        self._tg: anyio.abc.TaskGroup | None = None
        self._listen_scope: anyio.CancelScope | None = None
        self._outer_tg: anyio.abc.TaskGroup | None = None
        self._changed: anyio.Event | None = None
        if self._red:
            self.counters.red_episodes += 1

    # -------------------------------------------------------------------- observables

    @property
    def green(self) -> bool:
        return not self._red

    @property
    def sessions(self) -> list[SessionInfo]:
        return [s.info() for s in self._sessions.values()]

    @property
    def held_client_ids(self) -> dict[int, float]:
        """Reserved client ids and the seconds left (inf: until restart)."""
        now = time.monotonic()
        return {cid: max(0.0, until - now) for cid, until in self._holds.items() if until > now}

    @property
    def faults(self) -> Faults:
        return Faults(
            red_on_fast_close=self._fast_window,
            silent=False,
            handshake_delay=self._handshake_delay,
            stall_sync=self._stall,
            client_id_hold=self._hold,
        )

    def snapshot(self) -> dict[str, Any]:
        """Plain data (JSON-friendly) for other threads and processes."""
        return {
            "port": self.port,
            "green": self.green,
            "listening": self.listening,
            "upstream_connected": self.upstream_connected,
            "sessions": [
                {
                    "session_id": s.sid,
                    "client_id": s.client_id,
                    "peer": list(s.peer),
                    "connected_at": s.connected_at,
                    "handshaken_at": s.handshaken_at,
                    "server_version": s.version,
                    "pid": s.pid_value if s.pid_known else None,
                }
                for s in self._sessions.values()
            ],
            "client_ids_seen": sorted(self.client_ids_seen),
            "held_client_ids": self.held_client_ids,
            "counters": asdict(self.counters),
            "client_closes": [{**asdict(c), "peer": list(c.peer)} for c in self.client_closes],
            "faults": asdict(self.faults),
            "events": [str(e) for e in list(self.events)[-50:]],
        }

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

    def _emit(self, kind: str, detail: str) -> None:
        ev = SimEvent(time.monotonic(), time.time(), kind, detail)
        self.events.append(ev)
        log.info("%s %s", kind, detail)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken printer must not take the server down
                log.exception("on_event callback failed")
        self._notify()

    # -------------------------------------------------------------------- fault controls

    def red_on_fast_close(self, window: float | None) -> None:
        """A client closing within `window` s of its handshake turns RED; None switches off."""
        check_window(window, "red_on_fast_close")
        self._fast_window = window
        self._emit("fault", f"red_on_fast_close={window}")

    def go_red(self) -> None:
        """API layer dead: TCP accepts and hellos are read, nothing is answered."""
        self._set_red("go_red()")

    def handshake_delay(self, seconds: float) -> None:
        check_seconds(seconds, "handshake_delay")
        self._handshake_delay = float(seconds)
        self._emit("fault", f"handshake_delay={seconds}")

    def stall_sync(self, request: str | None) -> None:
        """Never answer one start-up request kind (see faults.SYNC_REQUESTS); None: answer all."""
        check_sync_name(request)
        self._stall = request
        self._emit("fault", f"stall_sync={request}")

    def client_id_hold(self, seconds: float | None) -> None:
        """Keep a closed session's client id reserved this long (math.inf: until restart).
        None or 0 switches it off and releases the ids held now."""
        check_window(seconds, "client_id_hold")
        self._hold = seconds if seconds else None
        if self._hold is None and self._holds:
            self._holds.clear()
        self._emit("fault", f"client_id_hold={seconds}")

    def drop_all(self) -> None:
        """Close every session from the server side (a Gateway crash as the clients see it)."""
        n = self._close_all("drop_all")
        self._emit("drop_all", f"closed {n} session(s)")

    def restart(self) -> None:
        """A Gateway restart: close every session, release held ids, clear RED, listen again."""
        n = self._close_all("restart")
        self._holds.clear()
        self._down_until = 0.0
        self._red = False
        self.upstream_connected = True
        self._emit("restart", f"closed {n} session(s); GREEN")

    def down_for(self, seconds: float) -> None:
        """Gateway down: close every session and the listener (connects are refused), then
        come back GREEN after `seconds`."""
        check_seconds(seconds, "down_for")
        n = self._close_all("down_for")
        self._down_until = max(self._down_until, time.monotonic() + seconds)
        if self._listen_scope is not None:
            self._listen_scope.cancel()
        self._emit("down", f"closed {n} session(s); refusing connections for {seconds} s")

    def connectivity_lost(self) -> None:
        """1100 to every session: IB's servers are unreachable from the Gateway."""
        self.upstream_connected = False
        n = self._broadcast(1100, TEXT_1100)
        self._emit("connectivity", f"1100 lost, sent to {n} session(s)")

    def connectivity_restored(self, data_lost: bool) -> None:
        """1101 (data lost: re-subscribe) or 1102 (data maintained) to every session."""
        self.upstream_connected = True
        code, text = (1101, TEXT_1101) if data_lost else (1102, TEXT_1102)
        n = self._broadcast(code, text)
        self._emit("connectivity", f"{code} restored, sent to {n} session(s)")

    def farm_flap(self) -> None:
        """2103 (market data farm broken) then 2104 (OK) to every session."""
        n = self._broadcast(2103, TEXT_2103)
        self._broadcast(*FARMS_OK[0])
        self._emit("farm_flap", f"2103 then 2104 to {n} session(s)")

    def _set_red(self, why: str) -> None:
        if self._red:
            return
        self._red = True
        self.counters.red_episodes += 1
        self._emit("RED", why)

    def _close_all(self, reason: str) -> int:
        live = list(self._sessions.values())
        for s in live:
            s.close(reason)
        return len(live)

    def _broadcast(self, code: int, text: str) -> int:
        if self._red:
            return 0
        n = 0
        for s in self._sessions.values():
            if s.handshaken_at is not None and s.close_reason is None and s.version:
                s.send(wire.error_msg(s.version, -1, code, text))
                n += 1
        return n

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

    async def __aexit__(self, *exc_info: Any) -> None:
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
                if self._red:
                    self._emit("RED", "silent: started RED")
                task_status.started(self.port)
                while True:
                    await self._accept_until_down(listener, tg)
                    await self._wait_down_over()
                    listener = await self._bind()
                    self._emit("up", "back after down_for; GREEN")
        finally:
            self._tg = None
            self.listening = False
            self._notify()

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
        self._emit(
            "listening",
            f"{self.host}:{self.port} server version {self.server_version}"
            f" accounts {','.join(self.accounts)}"
            f" {'GREEN' if self.green else 'RED'}",
        )
        return listener

    async def _accept_until_down(self, listener: anyio.abc.SocketListener, tg: anyio.abc.TaskGroup) -> None:
        with anyio.CancelScope() as scope:
            self._listen_scope = scope
            if self._down_until > time.monotonic():
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
        while (remaining := self._down_until - time.monotonic()) > 0:
            await self._wait_change(remaining)
        self._holds.clear()  # a restarted Gateway: nothing held, not RED
        self._red = False
        self.upstream_connected = True

    # -------------------------------------------------------------------- one session

    async def _handle(self, stream: anyio.abc.SocketStream) -> None:
        peer = tuple(stream.extra(SocketAttribute.remote_address)[:2])
        local = tuple(stream.extra(SocketAttribute.local_address)[:2])
        s = _Session(self._next_sid, stream, peer, local)  # type: ignore[arg-type]
        self._next_sid += 1
        self._sessions[s.sid] = s
        self.counters.connections_accepted += 1
        self._emit("accept", f"session {s.sid} from {peer[0]}:{peer[1]}")
        by_client: str | None = None
        try:
            with anyio.CancelScope() as scope:
                s.scope = scope
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._writer, s)
                    try:
                        await self._read_loop(s, tg)
                        by_client = "EOF"
                    except (anyio.BrokenResourceError, ConnectionError) as exc:
                        by_client = f"reset ({type(exc).__name__})"
                    except wire.WireError as exc:
                        if not isinstance(exc, SessionRefused):
                            self.counters.malformed += 1
                        s.close_reason = f"{type(exc).__name__}: {exc}"
                        log.warning("session %d closed: %s", s.sid, s.close_reason)
                    except anyio.ClosedResourceError:
                        pass
                    tg.cancel_scope.cancel()
        except Exception as exc:  # a bug in one session must not take the server down
            log.exception("session %d failed", s.sid)
            if s.close_reason is None:
                s.close_reason = f"internal error: {type(exc).__name__}"
        finally:
            # bookkeeping first, so that no client sees our FIN before the state shows it
            now = time.monotonic()
            self._sessions.pop(s.sid, None)
            if by_client:
                self._on_client_close(s, now, by_client)
            else:
                self.counters.server_closes += 1
                self._emit(
                    "server_close",
                    f"session {s.sid} client id {s.client_id}: {s.close_reason or 'simulator stopped'}",
                )
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
        if by_client:
            await self._record_close(s, now)

    def _lookup_pid_now(self, s: _Session) -> None:
        """Find the peer's pid while its socket is open (once closed, no fd names it).

        Called by the writer around its first flush (see there); an exact netlink query plus
        an fd scan, well under a millisecond for a recent client.
        """
        s.pid_started = True
        try:
            if not s.pid_known:
                s.pid_value = find_peer_pid(s.peer, s.local, self._recent_pids)
                s.pid_known = True
            if s.pid_value is not None:
                if s.pid_value in self._recent_pids:
                    self._recent_pids.remove(s.pid_value)
                self._recent_pids.appendleft(s.pid_value)
        finally:
            s.pid_done.set()
            self._notify()

    async def _lookup_pid_soon(self, s: _Session) -> None:
        """For sessions that get no reply (RED): look up once the hello is read."""
        s.pid_started = True
        try:
            await anyio.sleep(0)
            self._lookup_pid_now(s)
        finally:
            s.pid_done.set()

    async def _writer(self, s: _Session) -> None:
        """Flush the outbox, coalescing whatever is queued into one send."""
        async with s.inbox:
            async for item in s.inbox:
                batch = [item]
                while True:
                    try:
                        batch.append(s.inbox.receive_nowait())
                    except anyio.WouldBlock:
                        break
                data = bytearray()
                close: _Close | None = None
                for x in batch:
                    if isinstance(x, _Close):
                        close = x
                        break
                    data += x
                # The pid lookup runs once, before the client can learn that its handshake
                # completed: after the hello reply when that goes alone (overlapping the
                # client's work), before the flush when more is queued behind it.
                lookup = self.track_pids and not s.pid_started and bool(data)
                if lookup and len(batch) > 1:
                    self._lookup_pid_now(s)
                if data:
                    try:
                        await s.stream.send(bytes(data))
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        return
                if lookup and not s.pid_started:
                    self._lookup_pid_now(s)
                if close is not None:
                    s.close(close.reason)
                    return

    async def _read_loop(self, s: _Session, tg: anyio.abc.TaskGroup) -> None:
        reader = wire.FrameReader()
        while True:
            try:
                data = await s.stream.receive(65536)
            except anyio.EndOfStream:
                return
            for payload in reader.feed(data):
                self._on_payload(s, payload, tg)

    def _on_payload(self, s: _Session, payload: bytes, tg: anyio.abc.TaskGroup) -> None:
        if not s.hello_seen:
            self._on_hello(s, payload, tg)
            return
        if self._red or s.rejected or not s.hello_answered:
            return  # RED: read and drop; nothing is answered
        assert s.version is not None
        try:
            fields = wire.decode_fields(payload)
            msg_id = int(fields[0])
        except (wire.WireError, ValueError, IndexError) as exc:
            self.counters.malformed += 1
            reason = _ascii(str(exc))
            log.warning("session %d: unreadable request: %s", s.sid, reason)
            s.send(
                wire.error_msg(
                    s.version,
                    -1,
                    CODE_READ_ERROR,
                    f"Server error when reading an API client request: {reason}",
                )
            )
            self._notify()
            return
        if s.handshaken_at is None:
            if msg_id != wire.START_API:
                raise SessionRefused(f"expected startApi (71) first, got message id {msg_id}")
            self._start_api(s, fields)
            return
        self._dispatch(s, msg_id, fields)

    def _on_hello(self, s: _Session, payload: bytes, tg: anyio.abc.TaskGroup) -> None:
        hello = wire.parse_hello(payload)
        s.hello_seen = True
        version = wire.negotiate(self.server_version, hello)
        if version is None:
            self.counters.refused_versions += 1
            raise SessionRefused(
                f"client minimum version {hello.min_version} is above ours ({self.server_version})"
            )
        s.version = version
        if self._red:
            if self.track_pids:
                tg.start_soon(self._lookup_pid_soon, s)
            self._emit("hello_ignored", f"session {s.sid}: RED, no handshake")
            return
        if self._handshake_delay > 0:
            tg.start_soon(self._answer_hello_later, s, self._handshake_delay)
        else:
            self._answer_hello(s)

    async def _answer_hello_later(self, s: _Session, delay: float) -> None:
        await anyio.sleep(delay)
        if self._red:
            self._emit("hello_ignored", f"session {s.sid}: went RED during handshake delay")
            return
        self._answer_hello(s)

    def _answer_hello(self, s: _Session) -> None:
        assert s.version is not None
        stamp = datetime.now(UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"
        s.send(wire.server_hello(s.version, stamp))
        s.hello_answered = True

    def _start_api(self, s: _Session, fields: list[str]) -> None:
        try:
            cid = int(fields[2])
        except (IndexError, ValueError):
            raise SessionRefused("startApi without a numeric client id") from None
        assert s.version is not None
        now = time.monotonic()
        s.client_id = cid
        self.client_ids_seen.add(cid)
        busy = self._busy_reason(cid, now)
        if busy:
            s.rejected = True
            self.counters.sent_326 += 1
            s.send(wire.error_msg(s.version, -1, 326, TEXT_326))
            s.send(_Close(f"326: client id {cid} {busy}"))
            self._emit("326", f"session {s.sid}: client id {cid} {busy}")
            return
        s.handshaken_at = now
        self.counters.handshakes += 1
        out = wire.next_valid_id(1) + wire.managed_accounts(self.accounts)
        # While IB's servers are unreachable a new session hears 1100, not "farm OK".
        for code, text in FARMS_OK if self.upstream_connected else ((1100, TEXT_1100),):
            out += wire.error_msg(s.version, -1, code, text)
        s.send(out)
        self._emit("handshake", f"session {s.sid}: client id {cid}, server version {s.version}")

    def _busy_reason(self, cid: int, now: float) -> str | None:
        for other in self._sessions.values():
            if other.client_id == cid and other.handshaken_at is not None:
                return f"is in use by session {other.sid}"
        until = self._holds.get(cid)
        if until is not None and until > now:
            left = "until restart" if math.isinf(until) else f"for {until - now:.2f} s more"
            return f"is held after its session closed ({left})"
        return None

    def _on_client_close(self, s: _Session, now: float, how: str) -> None:
        self.counters.client_closes += 1
        detail = f"session {s.sid} client id {s.client_id}: {how}"
        if s.handshaken_at is not None and s.client_id is not None:
            age = now - s.handshaken_at
            detail += f" {age * 1000:.1f} ms after its handshake"
            window = self._fast_window
            if window is not None and age <= window:
                self.counters.fast_closes += 1
                self._emit("client_close", detail + " (fast close)")
                self._set_red(
                    f"fast close: client id {s.client_id} closed "
                    f"{age * 1000:.1f} ms after its handshake (window {window} s)"
                )
            else:
                self._emit("client_close", detail)
            if self._hold:
                until = now + self._hold
                self._holds[s.client_id] = until
                self._emit("hold", f"client id {s.client_id} reserved for {self._hold} s")
                if not math.isinf(until) and self._tg is not None:
                    self._tg.start_soon(self._expire_hold, s.client_id, until)
        else:
            self._emit("client_close", detail + " before any handshake")

    async def _expire_hold(self, cid: int, until: float) -> None:
        await anyio.sleep(max(0.0, until - time.monotonic()))
        if self._holds.get(cid) == until:
            del self._holds[cid]
            self._emit("hold_expired", f"client id {cid} free again")

    async def _record_close(self, s: _Session, at: float) -> None:
        """Decide whether a live process closed the socket: ask psutil a moment after EOF."""
        if s.pid_started:
            with anyio.move_on_after(PID_LOOKUP_WAIT):
                await s.pid_done.wait()
        pid = s.pid_value
        alive: bool | None = None
        if pid is not None:
            await anyio.sleep(max(0.0, at + PEER_ALIVE_DELAY - time.monotonic()))
            alive = process_alive(pid)
        age = at - (s.handshaken_at if s.handshaken_at is not None else s.connected_at)
        rec = CloseRecord(s.client_id, pid, at, alive, s.peer, s.handshaken_at is not None, age)
        self.client_closes.append(rec)
        self._emit("close_record", f"client id {s.client_id} pid {pid} peer_alive {alive}")

    # -------------------------------------------------------------------- requests

    def _dispatch(self, s: _Session, msg_id: int, fields: list[str]) -> None:
        assert s.version is not None
        stall = _SYNC_NAME_BY_ID.get(msg_id)
        if stall is not None and stall == self._stall:
            self.counters.requests_stalled += 1
            log.info("session %d: stalled %s", s.sid, stall)
            self._notify()
            return
        handler = self._HANDLERS.get(msg_id)
        if handler is None:
            self.counters.malformed += 1
            log.warning("session %d: unknown message id %d", s.sid, msg_id)
            s.send(wire.error_msg(s.version, -1, CODE_UNKNOWN_ID, f"Unknown message id {msg_id}"))
            self._notify()
            return
        try:
            out = handler(self, s, fields)
        except (IndexError, ValueError) as exc:
            self.counters.malformed += 1
            reason = _ascii(f"message {msg_id}: {type(exc).__name__}: {exc}")
            log.warning("session %d: bad request: %s", s.sid, reason)
            s.send(
                wire.error_msg(
                    s.version,
                    -1,
                    CODE_READ_ERROR,
                    f"Server error when reading an API client request: {reason}",
                )
            )
            self._notify()
            return
        if out:
            s.send(out)
            self.counters.requests_served += 1
            self._notify()

    def _req_current_time(self, s: _Session, f: list[str]) -> bytes:
        return wire.current_time(int(time.time()))

    def _req_managed_accts(self, s: _Session, f: list[str]) -> bytes:
        return wire.managed_accounts(self.accounts)

    def _req_ids(self, s: _Session, f: list[str]) -> bytes:
        return wire.next_valid_id(1)

    def _req_positions(self, s: _Session, f: list[str]) -> bytes:
        out = b"".join(
            wire.position(acct, ins, qty, cost) for acct in self.accounts for ins, qty, cost, _ in HOLDINGS
        )
        return out + wire.position_end()

    def _req_open_orders(self, s: _Session, f: list[str]) -> bytes:
        return wire.open_order_end()

    def _req_completed_orders(self, s: _Session, f: list[str]) -> bytes:
        return wire.completed_orders_end()

    def _req_account_updates(self, s: _Session, f: list[str]) -> bytes | None:
        subscribe, account = int(f[2] or 0), f[3]
        if not subscribe:
            return None
        out = b""
        if account in self.accounts:
            out += b"".join(
                wire.account_value(tag, value, ccy, account) for tag, value, ccy in ACCOUNT_VALUES
            )
            out += b"".join(
                wire.portfolio_value(account, ins, qty, price, cost) for ins, qty, cost, price in HOLDINGS
            )
            out += wire.account_update_time(datetime.now(UTC).strftime("%H:%M"))
        return out + wire.account_download_end(account)

    def _req_account_updates_multi(self, s: _Session, f: list[str]) -> bytes:
        req_id, account, model = int(f[2]), f[3], f[4]
        accounts = self.accounts if account in ("", "All") else (account,)
        out = b"".join(
            wire.account_update_multi(req_id, acct, model, tag, value, ccy)
            for acct in accounts
            if acct in self.accounts
            for tag, value, ccy in ACCOUNT_VALUES
        )
        return out + wire.account_update_multi_end(req_id)

    def _req_executions(self, s: _Session, f: list[str]) -> bytes:
        req_id = int(f[2])
        acct_filter = f[4] if len(f) > 4 else ""
        symbol_filter = f[6] if len(f) > 6 else ""
        today = datetime.now(UTC).strftime("%Y%m%d")
        out = b""
        for n, acct in enumerate(self.accounts):
            if acct_filter and acct != acct_filter:
                continue
            if symbol_filter and symbol_filter != AAPL.symbol:
                continue
            fill = wire.Fill(
                exec_id=f"0000e0d5.65a1b2c3.01.{n + 1:02d}",
                account=acct,
                ins=AAPL,
                side="BOT",
                shares=10.0,
                price=186.95,
                time=f"{today} 13:30:00 UTC",
                order_id=0,
                perm_id=1_000_000 + n,
                client_id=0,
                commission=1.0,
            )
            out += wire.execution(s.version or wire.SERVER_MAX_VERSION, req_id, fill)
            out += wire.commission_report(fill)
        return out + wire.execution_end(req_id)

    def _req_account_summary(self, s: _Session, f: list[str]) -> bytes:
        req_id, tags = int(f[2]), set(f[4].split(",")) if len(f) > 4 else set()
        out = b"".join(
            wire.account_summary(req_id, acct, tag, value, ccy)
            for acct in self.accounts
            for tag, value, ccy in ACCOUNT_VALUES
            if not tags or tag in tags
        )
        return out + wire.account_summary_end(req_id)

    def _req_historical_data(self, s: _Session, f: list[str]) -> bytes:
        """Enough for ib_async's Watchdog probe: a few 5 s midpoint bars ending now."""
        req_id = int(f[1])
        now = int(time.time()) // 5 * 5
        bars = [(str(now - 5 * (5 - i)), 1.0850, 1.0852, 1.0849, 1.0851, -1.0, -1.0, -1) for i in range(6)]
        fmt = "%Y%m%d %H:%M:%S"
        start = datetime.fromtimestamp(now - 30, UTC).strftime(fmt) + " UTC"
        end = datetime.fromtimestamp(now, UTC).strftime(fmt) + " UTC"
        return wire.historical_data(req_id, start, end, bars)

    def _ignore(self, s: _Session, f: list[str]) -> None:
        """Cancels and subscriptions that need no reply."""
        return

    _HANDLERS: ClassVar[dict[int, Callable[[GatewaySim, _Session, list[str]], bytes | None]]] = {
        wire.REQ_CURRENT_TIME: _req_current_time,
        wire.REQ_MANAGED_ACCTS: _req_managed_accts,
        wire.REQ_IDS: _req_ids,
        wire.REQ_POSITIONS: _req_positions,
        wire.REQ_OPEN_ORDERS: _req_open_orders,
        wire.REQ_COMPLETED_ORDERS: _req_completed_orders,
        wire.REQ_ACCOUNT_UPDATES: _req_account_updates,
        wire.REQ_ACCOUNT_UPDATES_MULTI: _req_account_updates_multi,
        wire.REQ_EXECUTIONS: _req_executions,
        wire.REQ_ACCOUNT_SUMMARY: _req_account_summary,
        wire.REQ_HISTORICAL_DATA: _req_historical_data,
        wire.CANCEL_ACCOUNT_SUMMARY: _ignore,
        wire.CANCEL_POSITIONS: _ignore,
        wire.CANCEL_ACCOUNT_UPDATES_MULTI: _ignore,
        wire.REQ_AUTO_OPEN_ORDERS: _ignore,
        wire.START_API: _ignore,
    }
