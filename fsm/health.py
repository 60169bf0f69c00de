"""Health and metrics over HTTP for one ConnectionManager: /livez, /readyz, /metrics.

Run it next to the manager, on the manager's own event loop (asyncio or trio)::

    async with ConnectionManager(settings) as m, serve_health(m, "127.0.0.1", 9108):
        ...  # the trader's code

or as a task: ``await tg.start(run_health, m, "127.0.0.1", 9108)``. The answers are computed
from ``m.metrics()`` when a probe asks (pure functions below); the HTTP side is hypercorn
(whichever of its asyncio or trio servers matches the running backend) around a tiny ASGI app,
with /metrics served by prometheus_client's own ASGI app from a per-manager registry.

Because the server runs on the manager's loop, inside the caller's ``async with`` of the
manager, an answer at all means that loop is turning: a blocked loop times the probe out, and a
manager whose tasks died has taken the server down with it.

Loopback only unless ``allow_remote=True``; no access log unless ``access_log=True`` (probes
every few seconds would flood the trader's logs).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import msgspec
import sniffio
from hypercorn.config import Config, Sockets
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope
from prometheus_client import make_asgi_app

from fsm.core import State
from fsm.errors import RemoteBindRefused, ServeError
from fsm.maintenance import HasWindows, Window, in_window, next_change
from fsm.metrics import MetricsSource, registry_for, wall_time

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Answer",
    "HealthApp",
    "HealthServer",
    "liveness",
    "maintenance_ends",
    "parse_address",
    "readiness",
    "run_health",
    "serve_health",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9108
SHUTDOWN_GRACE = 2.0
"""Seconds a stopping server gives open connections (hypercorn's graceful_timeout) and itself."""

PATHS = ("/livez", "/readyz", "/metrics")
MAX_EDGES = 64
"""Window edges walked to find where maintenance ends (overlapping windows chain)."""

Windows = HasWindows | Iterable[Window]

# ------------------------------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True)
class Answer:
    """One health answer: HTTP status, JSON body, extra headers."""

    status: int
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = field(default=())


def liveness(metrics: Mapping[str, Any]) -> Answer:
    """/livez: 200 while the manager runs (any state but IDLE, which it is in only before its
    start and after its shutdown); 503 otherwise."""
    alive = metrics["state"] != State.IDLE
    body = {"alive": alive, "state": metrics["state"], "pid": os.getpid()}
    return Answer(200 if alive else 503, body)


def readiness(metrics: Mapping[str, Any], windows: Windows, now: float | None = None) -> Answer:
    """/readyz: 200 when CONNECTED (a session is up and not waiting for IB to restore it);
    otherwise 503 with the state and the reason.

    Inside a maintenance window (``metrics["maintenance_window"]``: the core's name for the
    window in force) a missing session is expected: still 503, but ``status`` is
    ``"maintenance"`` and ``expected`` is true, and a ``Retry-After`` header says when the
    maintenance ends (``maintenance_ends`` of ``windows``, the manager's settings). Connected
    inside a window stays 200 and names the window and its end.
    """
    now = time.time() if now is None else now
    state = metrics["state"]
    since = metrics.get("since_ns")
    window = metrics.get("maintenance_window")
    ends = None if window is None else maintenance_ends(windows, now)
    ready = state == State.CONNECTED
    body: dict[str, Any] = {
        "status": "ready" if ready else "maintenance" if window else "not_ready",
        "ready": ready,
        "state": state,
        "reason": metrics.get("reason"),
        "since": None if since is None else round(wall_time(since), 3),
        "client_id": metrics.get("client_id"),
        "expected": window is not None and not ready,
        "maintenance": None if window is None else {"window": window, "ends": ends},
    }
    headers: tuple[tuple[str, str], ...] = ()
    if window is not None and not ready and ends is not None:
        headers = (("retry-after", str(max(1, math.ceil(ends - now)))),)
    return Answer(200 if ready else 503, body, headers)


def maintenance_ends(windows: Windows, now: float) -> float | None:
    """When no window is in force any more (epoch seconds), from ``now`` (epoch seconds): the
    first window edge outside every window, as windows may overlap or abut (fsm.maintenance);
    ``now`` if none is in force; None if maintenance never ends within MAX_EDGES edges."""
    t: datetime | None = datetime.fromtimestamp(now, UTC)
    for _ in range(MAX_EDGES):
        if t is None:
            return None
        if in_window(windows, t) is None:
            return t.timestamp()
        t = next_change(windows, t)
    return None


# ------------------------------------------------------------------------------------ ASGI app


class HealthApp:
    """The ASGI app: /livez and /readyz from the manager's metrics, /metrics from its registry."""

    def __init__(self, m: MetricsSource) -> None:
        self._m = m
        self._metrics_app = make_asgi_app(registry_for(m))

    async def __call__(self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets: not ours; the server refuses the upgrade
        path = scope["path"]
        if scope["method"] != "GET":
            answer = Answer(405, {"error": f"{scope['method']} is not allowed; use GET"}, (("allow", "GET"),))
        elif path == "/metrics":
            await self._metrics_app(scope, receive, send)
            return
        elif path == "/livez":
            answer = liveness(self._m.metrics())
        elif path == "/readyz":
            answer = readiness(self._m.metrics(), self._m.settings)
        else:
            answer = Answer(404, {"error": f"no such path: {path}", "paths": list(PATHS)})
        await _send_json(send, answer)


async def _send_json(send: ASGISendCallable, answer: Answer) -> None:
    body = msgspec.json.encode(answer.body) + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"cache-control", b"no-store"),
        *((k.encode(), v.encode()) for k, v in answer.headers),
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _lifespan(receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Nothing to set up or tear down: acknowledge both, so the server starts and stops cleanly."""
    while True:
        event = await receive()
        if event["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif event["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


# -------------------------------------------------------------------------------------- server


@dataclass(frozen=True, slots=True)
class HealthServer:
    """Where a running health server listens (``port`` is the real one when 0 was asked)."""

    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (loopback) -> (host, port); ServeError
    for anything else. For command-line options such as ``--serve 127.0.0.1:9108``."""
    raw = text.strip()
    host, sep, port_text = raw.rpartition(":")
    if not sep:
        host, port_text = DEFAULT_HOST, raw
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ServeError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:{DEFAULT_PORT}")
    if not host:
        raise ServeError(f"{text!r}: no host before the port (e.g. {DEFAULT_HOST}:{DEFAULT_PORT})")
    try:
        port = int(port_text)
    except ValueError:
        raise ServeError(
            f"{text!r}: the port must be a number (e.g. {DEFAULT_HOST}:{DEFAULT_PORT})"
        ) from None
    _check_port(port)
    return host, port


def _check_port(port: int) -> None:
    if type(port) is not int or not 0 <= port <= 65535:
        raise ServeError(f"port {port!r} is not a TCP port number (0-65535; 0 picks a free one)")


async def _listen(host: str, port: int, allow_remote: bool) -> socket.socket:
    """A listening socket on host:port; loopback unless allow_remote."""
    _check_port(port)
    try:
        # "" means every interface, as in socket.bind(("", port))
        infos = await anyio.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as exc:
        raise ServeError(f"cannot resolve {host!r}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    address = sockaddr[0]
    if not allow_remote and not ipaddress.ip_address(address.split("%")[0]).is_loopback:
        raise RemoteBindRefused(
            f"refusing to serve health and metrics on {host!r} ({address}): not a loopback "
            "address. Pass allow_remote=True to expose them."
        )
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # inherited by accepted connections: a response written in parts is not held back by
        # Nagle's algorithm waiting on the client's delayed ACK (~40 ms per keep-alive request)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(socket.SOMAXCONN)  # probes that come before the server's first accept queue
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class _Config(Config):
    """hypercorn's Config serving on a socket we bound and own: we close it when hypercorn is
    done, so the port is free the moment serve_health returns (hypercorn's trio server never
    closes its listener; only the garbage collector would)."""

    def __init__(self, sock: socket.socket, access_log: bool) -> None:
        super().__init__()
        self._sock = sock
        self.errorlog = logging.getLogger(f"{__name__}.server")  # hypercorn's own messages
        self.accesslog = logging.getLogger(f"{__name__}.access") if access_log else None
        self.graceful_timeout = SHUTDOWN_GRACE

    def create_sockets(self) -> Sockets:
        return Sockets(secure_sockets=[], insecure_sockets=[self._sock], quic_sockets=[])


def _backend_serve() -> Callable[..., Awaitable[None]]:
    """hypercorn's server for the running anyio backend."""
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        return trio_serve
    from hypercorn.asyncio import serve as asyncio_serve

    return asyncio_serve


async def _serve(app: HealthApp, config: Config, stop: anyio.Event) -> None:
    """Serve until ``stop``; shielded, so that a cancelled caller still gets a graceful stop
    (hypercorn's shutdown_trigger) bounded by SHUTDOWN_GRACE, on asyncio and trio alike."""
    serve = _backend_serve()
    with anyio.CancelScope(shield=True) as scope:

        async def shutdown_trigger() -> None:
            await stop.wait()
            scope.deadline = anyio.current_time() + SHUTDOWN_GRACE

        await serve(app, config, shutdown_trigger=shutdown_trigger)


@asynccontextmanager
async def serve_health(
    m: MetricsSource,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    access_log: bool = False,
) -> AsyncIterator[HealthServer]:
    """Serve /livez, /readyz and /metrics for ``m`` while the block runs.

    Listening when the block is entered (port 0 picks a free port: see ``.port``). ServeError if
    the address cannot be used; RemoteBindRefused for a non-loopback address without
    ``allow_remote=True``. Leaving the block (or being cancelled) stops the server gracefully.
    """
    sock = await _listen(host, port, allow_remote)
    server = HealthServer(host, sock.getsockname()[1])
    config = _Config(sock, access_log)
    stop = anyio.Event()
    body_error: BaseException | None = None
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, HealthApp(m), config, stop)
            log.info("health and metrics on %s (/livez /readyz /metrics)", server.url)
            try:
                yield server
            except BaseException as exc:  # re-raised below as it is, not in an ExceptionGroup
                body_error = exc
            finally:
                stop.set()
    finally:
        sock.close()
    if body_error is not None:
        raise body_error


async def run_health(
    m: MetricsSource,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    allow_remote: bool = False,
    access_log: bool = False,
    task_status: anyio.abc.TaskStatus[HealthServer] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """serve_health as a task: ``server = await tg.start(run_health, m, host, port)``; serves
    until cancelled (keyword options through functools.partial)."""
    async with serve_health(m, host, port, allow_remote=allow_remote, access_log=access_log) as server:
        task_status.started(server)
        await anyio.sleep_forever()
