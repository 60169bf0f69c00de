"""`ibgw run`: one ConnectionManager against a real Gateway, until Ctrl-C or SIGTERM.

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
from typing import Any

import anyio

from fsm.cli import EXIT_ALREADY_RUNNING, EXIT_OK
from fsm.settings import Settings


def _stamp() -> str:
    return _dt.datetime.now().isoformat(timespec="milliseconds")


def emit(line: str) -> None:
    """One line to stdout, flushed: `ibgw run` is usually read through a pipe by a supervisor."""
    print(f"{_stamp()} {line}", flush=True)


def describe_change(change: Any) -> str:
    """A state change or notice from ConnectionManager.subscribe() as one readable line."""
    source = getattr(change, "source", None)
    dest = getattr(change, "dest", None)
    event = getattr(change, "event", None)
    reason = getattr(change, "reason", None)
    if source is not None and dest is not None:
        text = f"{_name(source)} --{_name(event)}--> {_name(dest)}"
        return text + (f"  ({_name(reason)})" if reason else "")
    kind = getattr(change, "kind", None) or type(change).__name__
    code = getattr(change, "code", None)
    message = getattr(change, "message", "")
    return f"notice {kind}" + (f" {code}" if code is not None else "") + f": {message}"


def _name(x: Any) -> str:
    return str(getattr(x, "value", x))


async def _print_changes(subscription: Any) -> None:
    async for change in subscription:
        emit(describe_change(change))


async def _run(settings: Settings) -> int:
    from fsm.errors import AlreadyRunning
    from fsm.manager import ConnectionManager

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            manager = ConnectionManager(settings)
            subscription = manager.subscribe()  # before start: the first transitions too
            emit(
                f"ibgw run: manager pid {os.getpid()} for {settings.host}:{settings.port} "
                f"client id {settings.client_id} (readonly={settings.readonly}); "
                f"Ctrl-C or SIGTERM to stop"
            )
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
            emit(f"stopped: state {_name(manager.state)}; worker retired; disconnects issued: 0")
            return EXIT_OK
        except AlreadyRunning as exc:
            print(f"ibgw run: error: {' '.join(str(exc).split())}", file=sys.stderr, flush=True)
            return EXIT_ALREADY_RUNNING


def run_forever(settings: Settings, *, backend: str = "asyncio") -> int:
    """Run until a signal; return the exit status (see the README's exit-code table)."""
    # Warnings (a failed handshake, a reaped stale worker) go to stderr with a time stamp; the
    # state changes themselves are printed on stdout by _print_changes.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return anyio.run(_run, settings, backend=backend)
