"""The worker's one Gateway session: an ib_async IB object, its phase, and how failures map to codes.

Phases: idle -> connecting -> connected -> lost, or connecting -> failed.

Reuse after a failure (decided here, tested in tests/worker/): a failed connect whose socket the
guard left open (handshake_timeout, a start-up sync cut off by the deadline, server_version_too_old
and not_a_gateway, whose socket worker.inbound stopped reading) makes
the worker *spent*: that half-open ib_async client is never reused (its Connection would first
try to close the old transport, and wait forever for a close the guard suppresses), and no second
socket is opened beside it (a second session from the same process, likely with the same client
id, is exactly the zombie pattern this project removes). Such a `connect` is answered
`worker_spent`; the manager retries by spawning a fresh worker. If the failed attempt left no
socket open (connection refused, dns_failure; the Gateway closed it after 326 or mid-handshake; a
session the Gateway dropped) a new `connect` builds a fresh IB() in the same worker.

Requests in flight when a connected session ends answer `session_lost`; the `session_lost` event
says why (`peer_closed`, or `not_a_gateway` when the peer broke the wire format).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from ib_async import IB
from ib_async.wrapper import RequestError

from worker import guard, ibapi
from worker.inbound import Inbound
from worker.liveness import USER_MESSAGES_PER_S, Liveness
from worker.protocol import (
    Code,
    CommandError,
    ConnectParams,
    ConnectResult,
    Event,
    EventName,
    ProbeParams,
    ProbeResult,
    event,
)

log = logging.getLogger("worker.session")


class Phase(StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    LOST = "lost"


# Gateway error codes that end a connect attempt at once instead of waiting out the deadline.
FAST_FAIL_CODES = {326: Code.CLIENT_ID_IN_USE}
CLOSE_AFTER_326_WAIT = 1.0  # s to let the Gateway's close follow its 326 before answering


def classify_connect_error(exc: BaseException) -> CommandError:
    """Map what ib_async raised from connectAsync to one protocol error code."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, socket.gaierror):
        return CommandError(Code.DNS_FAILURE, f"cannot resolve the Gateway's host name ({text})")
    if isinstance(exc, ConnectionRefusedError):
        return CommandError(
            Code.CONNECTION_REFUSED, f"connection refused ({text}); is the Gateway's API port open?"
        )
    if isinstance(exc, TimeoutError):
        return CommandError(Code.HANDSHAKE_TIMEOUT, f"ib_async timed out ({text})")
    if isinstance(exc, RequestError):
        return CommandError(
            Code.GATEWAY_ERROR, f"Gateway error during start-up sync: {exc}", ib_code=exc.code
        )
    if isinstance(exc, ConnectionError):
        if exc.args and isinstance(exc.args[0], list):  # raiseSyncErrors: sync steps timed out
            return CommandError(Code.HANDSHAKE_TIMEOUT, f"start-up sync incomplete: {exc.args[0]}")
        return CommandError(Code.PEER_CLOSED, f"the Gateway closed the connection ({text})")
    if isinstance(exc, OSError):
        return CommandError(Code.CONNECTION_REFUSED, f"cannot open a TCP connection ({text})")
    return CommandError(Code.INTERNAL_ERROR, f"connect failed unexpectedly ({text})")


def classify_request_error(command: str, exc: BaseException, timeout: float) -> CommandError:
    if isinstance(exc, TimeoutError):
        return CommandError(
            Code.REQUEST_TIMEOUT, f"{command}: no answer from the Gateway within {timeout:g} s"
        )
    if isinstance(exc, RequestError):
        return CommandError(
            Code.GATEWAY_ERROR, f"{command}: Gateway error {exc.code}: {exc.message}", ib_code=exc.code
        )
    if isinstance(exc, ConnectionError):
        return CommandError(
            Code.SESSION_LOST, f"{command}: the session was lost while waiting ({type(exc).__name__}: {exc})"
        )
    return CommandError(Code.INTERNAL_ERROR, f"{command}: {type(exc).__name__}: {exc}")


class Session:
    """Owns the IB object(s) of this worker; emits ib_error / session_lost through emit."""

    def __init__(self, emit: Callable[[Event], None]) -> None:
        self._emit = emit
        self.ib: IB | None = None
        self.phase = Phase.IDLE
        self.params: ConnectParams | None = None
        self.accounts: list[str] = []
        self.server_version: int | None = None
        self.connected_at: float | None = None  # monotonic s
        self.last_failure: CommandError | None = None
        self.counters: Counter[str] = Counter()
        self._fail: asyncio.Future[CommandError] | None = None
        self._closed = asyncio.Event()  # the current IB's socket was closed by the peer
        self._locks: dict[str, asyncio.Lock] = {}
        self.liveness: Liveness | None = None
        self.inbound: Inbound | None = None
        ibapi.pin_user_pacing(USER_MESSAGES_PER_S)
        # The first IB() in a process costs ~0.3-0.9 ms (later ones ~0.15 ms): built now, before
        # `ready`, so a warm spare's connect does not pay it. Kept until the first connect uses it
        # (an IB that is never used holds no socket).
        self._next_ib: IB | None = IB()

    # ---- state

    @property
    def emit(self) -> Callable[[Event], None]:
        """The worker's event writer, for the data and order commands' events."""
        return self._emit

    @property
    def connected(self) -> bool:
        return self.phase is Phase.CONNECTED and self.ib is not None and self.ib.isConnected()

    def socket_open(self) -> bool:
        """Is the current IB's transport still open (ours or left behind by the guard)?"""
        return self.ib is not None and self.ib.client.conn.transport is not None

    def lock(self, key: str) -> asyncio.Lock:
        """ib_async keys some requests by name ("currentTime", "positions"): one at a time."""
        return self._locks.setdefault(key, asyncio.Lock())

    def require_connected(self, command: str) -> IB:
        if self.connected:
            assert self.ib is not None
            return self.ib
        why = {
            Phase.IDLE: "no session yet: send connect first",
            Phase.CONNECTING: "connect is still in progress",
            Phase.FAILED: f"the connect failed ({self.last_failure.code if self.last_failure else '?'})",
            Phase.LOST: "the Gateway closed the session",
            Phase.CONNECTED: "ib_async reports the API connection is not ready",
        }[self.phase]
        raise CommandError(Code.NOT_CONNECTED, f"{command}: not connected: {why}")

    # ---- connect

    def _connected_result(self, elapsed_ms: float, already: bool) -> ConnectResult:
        assert self.params is not None
        return ConnectResult(
            connected=True,
            accounts=list(self.accounts),
            client_id=self.params.client_id,
            server_version=self.server_version or 0,
            already_connected=already,
            elapsed_ms=round(elapsed_ms, 3),
        )

    async def connect(self, p: ConnectParams) -> ConnectResult:
        if self.connected:
            if self.params and (p.host, p.port, p.client_id) != (
                self.params.host,
                self.params.port,
                self.params.client_id,
            ):
                log.warning(
                    "connect %s:%s id %s while connected as %s:%s id %s: kept the existing session",
                    p.host,
                    p.port,
                    p.client_id,
                    self.params.host,
                    self.params.port,
                    self.params.client_id,
                )
            return self._connected_result(0.0, already=True)
        if self.phase is Phase.CONNECTING:
            raise CommandError(
                Code.ALREADY_CONNECTING, "connect: a connect is already in progress in this worker"
            )
        if self.socket_open():
            prev = self.last_failure.code if self.last_failure else self.phase.value
            raise CommandError(
                Code.WORKER_SPENT,
                f"connect: the previous connect failed ({prev}) and its socket is left open "
                f"until this worker exits (the disconnect guard never closes it); the half-open "
                f"ib_async client is not reused: retry in a fresh worker",
            )
        return await self._connect_fresh(p)

    async def _connect_fresh(self, p: ConnectParams) -> ConnectResult:
        loop = asyncio.get_running_loop()
        ib, self._next_ib = self._next_ib or IB(), None
        guard.retain(ib)
        self.ib, self.params, self.phase = ib, p, Phase.CONNECTING
        self.accounts, self.server_version, self.last_failure = [], None, None
        self.counters["connect_attempts"] += 1
        self._closed = asyncio.Event()
        self._wire(ib)
        self.liveness = liveness = Liveness(
            send=lambda: ibapi.send_current_time_request(ib), backlog=lambda: ibapi.pacing_backlog(ib)
        )
        ibapi.divert_current_time_replies(ib, liveness.take_reply)
        self.inbound = inbound = Inbound(
            ib, on_arrival=liveness.arrived, on_violation=lambda code, msg: self._on_violation(ib, code, msg)
        )
        fail: asyncio.Future[CommandError] = loop.create_future()
        self._fail = fail
        t0 = time.perf_counter()
        task = asyncio.ensure_future(
            ib.connectAsync(
                p.host, p.port, p.client_id, timeout=p.timeout, readonly=p.readonly, raiseSyncErrors=True
            )
        )
        try:
            done, _ = await asyncio.wait({task, fail}, timeout=p.timeout, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            self._finish_failed(CommandError(Code.INTERNAL_ERROR, "connect cancelled"))
            raise
        finally:
            self._fail = None
        elapsed_ms = (time.perf_counter() - t0) * 1000
        if task in done and not task.cancelled() and task.exception() is None and not fail.done():
            self.phase = Phase.CONNECTED
            self.connected_at = time.monotonic()
            inbound.session_up()
            self.accounts = ib.managedAccounts()
            self.server_version = ib.client.serverVersion()
            ib.RaiseRequestErrors = True  # after the sync: request errors become gateway_error
            self.counters["connects"] += 1
            log.info(
                "connected to %s:%s as client id %s in %.1f ms (server version %s)",
                p.host,
                p.port,
                p.client_id,
                elapsed_ms,
                self.server_version,
            )
            return self._connected_result(elapsed_ms, already=False)

        if fail.done():
            err = fail.result()
        elif task.done() and not task.cancelled():
            err = classify_connect_error(task.exception())  # type: ignore[arg-type]
        else:
            err = CommandError(
                Code.HANDSHAKE_TIMEOUT,
                f"connect: no complete API handshake and start-up sync from "
                f"{p.host}:{p.port} within {p.timeout:g} s",
            )
        if not fail.done():
            fail.cancel()
        if err.code == Code.CLIENT_ID_IN_USE and self.socket_open():
            # The Gateway sends 326 and then closes: wait (briefly) for that close so the answer
            # reflects it (status socket_open false; a new connect here is then allowed).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closed.wait(), CLOSE_AFTER_326_WAIT)
        if not task.done():
            # Cancelling runs ib_async's `except BaseException: self.disconnect()` paths, which
            # the guard suppresses and counts; the socket stays open.
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" noise
        self._finish_failed(err)
        err.message = f"{err.message} (after {elapsed_ms:.0f} ms)"
        raise err

    def _finish_failed(self, err: CommandError) -> None:
        self.phase = Phase.FAILED
        self.last_failure = err
        self.counters["connect_failures"] += 1
        log.warning("connect failed: %s: %s; socket left open: %s", err.code, err.message, self.socket_open())

    def _set_fail(self, err: CommandError) -> None:
        if self._fail is not None and not self._fail.done():
            self._fail.set_result(err)

    def _on_violation(self, ib: IB, code: str, message: str) -> None:
        """Inbound stopped reading a stream that cannot be (this version of) a Gateway."""
        if ib is not self.ib:
            return
        if self.phase is Phase.CONNECTING:
            self._set_fail(CommandError(code, message))
        elif self.phase is Phase.CONNECTED:
            ibapi.abort_requests(ib, ConnectionError(message))
            self._lose(code, message)

    def _lose(self, code: str, message: str) -> None:
        """The connected session is gone: say so once; waiting probes and requests fail."""
        self.phase = Phase.LOST
        self.counters["sessions_lost"] += 1
        log.warning("session lost (%s): %s", code, message)
        if self.liveness is not None:
            self.liveness.lost(CommandError(Code.SESSION_LOST, f"probe: the session was lost: {message}"))
        self._emit(event(EventName.SESSION_LOST, {"code": code, "message": message}))

    # ---- ib_async events

    def _wire(self, ib: IB) -> None:
        def on_error(req_id: int, code: int, message: str, _contract: Any) -> None:
            self.counters["ib_errors"] += 1
            self._emit(event(EventName.IB_ERROR, {"code": code, "req_id": req_id, "message": message}))
            if ib is self.ib and code in FAST_FAIL_CODES:
                self._set_fail(
                    CommandError(FAST_FAIL_CODES[code], f"Gateway error {code}: {message}", ib_code=code)
                )

        def on_socket_closed(msg: str) -> None:
            if ib is not self.ib:
                return
            self._closed.set()
            detail = f": {msg}" if msg else ""
            if self.phase is Phase.CONNECTING:
                self._set_fail(
                    CommandError(
                        Code.PEER_CLOSED, f"the Gateway closed the socket during the handshake{detail}"
                    )
                )
            elif self.phase is Phase.CONNECTED:
                self._lose(Code.PEER_CLOSED, f"the Gateway closed the socket{detail}")
            else:
                log.info("a lingering socket was closed by the Gateway%s", detail)

        def on_api_error(msg: str) -> None:
            log.info("ib_async apiError: %s", msg)

        def on_throttle() -> None:
            self.counters["throttle_starts"] += 1

        ib.errorEvent += on_error
        ib.client.conn.disconnected += on_socket_closed
        ib.client.apiError += on_api_error
        ib.client.throttleStart += on_throttle

    # ---- requests

    async def probe(self, p: ProbeParams) -> ProbeResult:
        """Liveness from the session's own traffic; a direct round trip only when it is quiet."""
        self.require_connected("probe")
        assert self.liveness is not None
        return await self.liveness.probe(p.window, p.timeout)

    async def call(
        self, command: str, start: Callable[[], Any], timeout: float, *, one_at_a_time: str | None = None
    ) -> Any:
        """Start one Gateway round trip and await it; every failure becomes a CommandError.

        `one_at_a_time` names the ib_async request key to serialise on; waiting for it counts
        against the same timeout, so a queued request can never outlive its deadline."""
        try:
            async with asyncio.timeout(timeout):  # no extra task, unlike wait_for on 3.11
                if one_at_a_time is None:
                    return await start()
                async with self.lock(one_at_a_time):
                    return await start()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            raise classify_request_error(command, exc, timeout) from exc
