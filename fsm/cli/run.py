"""`ibgw run`: one ConnectionManager against a real Gateway, until Ctrl-C or SIGTERM; with
``--serve``, its health and metrics over HTTP (fsm.health) for the same lifetime.

Signals are caught by an anyio signal receiver opened *before* the manager starts, so a Ctrl-C
at any moment turns into an orderly shutdown (the worker retired by process exit) instead of a
KeyboardInterrupt tearing through the manager half-way.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import signal
import sys
from contextlib import AsyncExitStack

import anyio

from fsm import (
    AlreadyRunning,
    ConnectionManager,
    RemoteBindRefused,
    ServeError,
    Settings,
    Subscription,
)
from fsm.cli.changes import describe
from fsm.cli.exits import Exit
from fsm.cli.text import one_line, printable


def emit(line: str) -> None:
    """One time-stamped line to stdout, flushed: `ibgw run` is usually read through a pipe."""
    print(f"{_dt.datetime.now().isoformat(timespec='milliseconds')} {line}", flush=True)


async def _print_changes(subscription: Subscription) -> None:
    async for change in subscription:
        emit(describe(change))


async def _run(settings: Settings, serve: tuple[str, int] | None, serve_remote: bool) -> int:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            manager = ConnectionManager(settings)
            subscription = manager.subscribe()  # before start: the first transitions too
            emit(
                f"ibgw run: manager pid {os.getpid()} for {printable(settings.host)}:{settings.port} "
                f"client id {settings.client_id} (readonly={settings.readonly}); "
                f"Ctrl-C or SIGTERM to stop"
            )
            async with AsyncExitStack() as stack:
                if serve is not None:
                    # Bound before the manager starts: a bad address fails before any worker
                    # exists, and the server outlives the manager's shutdown (/livez turns 503).
                    from fsm.health import serve_health

                    host, port = serve
                    try:
                        server = await stack.enter_async_context(
                            serve_health(manager, host, port, allow_remote=serve_remote)
                        )
                    except RemoteBindRefused:
                        return _error(
                            f"--serve {host}:{port}: not a loopback address; add --serve-remote "
                            "to expose health and metrics to other machines",
                            Exit.USAGE,
                        )
                    except ServeError as exc:
                        return _error(f"--serve: {exc}", Exit.USAGE)
                    emit(f"health and metrics on {server.url} (/livez /readyz /metrics)")
                async with manager, anyio.create_task_group() as tg:
                    tg.start_soon(_print_changes, subscription)
                    async for signum in signals:
                        emit(
                            f"received {signal.Signals(signum).name}: shutting down by retiring the "
                            f"worker (process exit; no disconnect)"
                        )
                        break
                    # The printer keeps running: it shows the shutdown transition, then its
                    # subscription ends with the manager.
                    await manager.shutdown()
            # Leaving the manager's block retired the worker; the history says how it went.
            emit(f"stopped: state {manager.state}; worker retired; disconnects issued: 0")
            return Exit.OK
        except AlreadyRunning as exc:
            return _error(str(exc), Exit.ALREADY_RUNNING)


def _error(message: str, status: Exit) -> int:
    print(f"ibgw run: error: {printable(one_line(message))}", file=sys.stderr, flush=True)
    return status


def run_forever(
    settings: Settings,
    *,
    backend: str = "asyncio",
    serve: tuple[str, int] | None = None,
    serve_remote: bool = False,
) -> int:
    """Run until a signal; return the exit status (see the README's exit-code table)."""
    # Warnings (a failed handshake, a reaped stale worker) go to stderr with a time stamp; the
    # state changes themselves are printed on stdout by _print_changes.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return anyio.run(_run, settings, serve, serve_remote, backend=backend)
