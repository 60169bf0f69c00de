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

import anyio

from fsm import AlreadyRunning, ConnectionManager, Settings, Subscription
from fsm.cli.changes import describe
from fsm.cli.exits import Exit
from fsm.cli.text import one_line, printable


def emit(line: str) -> None:
    """One time-stamped line to stdout, flushed: `ibgw run` is usually read through a pipe."""
    print(f"{_dt.datetime.now().isoformat(timespec='milliseconds')} {line}", flush=True)


async def _print_changes(subscription: Subscription) -> None:
    async for change in subscription:
        emit(describe(change))


async def _run(settings: Settings) -> int:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            manager = ConnectionManager(settings)
            subscription = manager.subscribe()  # before start: the first transitions too
            emit(
                f"ibgw run: manager pid {os.getpid()} for {printable(settings.host)}:{settings.port} "
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
            emit(f"stopped: state {manager.state}; worker retired; disconnects issued: 0")
            return Exit.OK
        except AlreadyRunning as exc:
            print(f"ibgw run: error: {printable(one_line(str(exc)))}", file=sys.stderr, flush=True)
            return Exit.ALREADY_RUNNING


def run_forever(settings: Settings, *, backend: str = "asyncio") -> int:
    """Run until a signal; return the exit status (see the README's exit-code table)."""
    # Warnings (a failed handshake, a reaped stale worker) go to stderr with a time stamp; the
    # state changes themselves are printed on stdout by _print_changes.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return anyio.run(_run, settings, backend=backend)
