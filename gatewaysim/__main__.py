"""`python -m gatewaysim --port 4002 [--fault NAME[=VALUE] ...]`: run the simulator from a shell.

Prints every state change. Lines on stdin call a control at run time, e.g. `go_red`,
`restart`, `down_for 5`, `client_id_hold inf`, `stall_sync positions`,
`connectivity_restored true`, `snapshot`. Ctrl-C (or SIGTERM) stops it cleanly.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import threading
from typing import Any

import click

from .faults import Faults
from .observe import SimEvent
from .threaded import ThreadedSim, running_in_thread

CONTROLS = (
    "red_on_fast_close",
    "go_red",
    "restart",
    "drop_all",
    "down_for",
    "handshake_delay",
    "stall_sync",
    "client_id_hold",
    "connectivity_lost",
    "connectivity_restored",
    "farm_flap",
)


def _arg(text: str) -> Any:
    low = text.lower()
    if low in ("none", "off"):
        return None
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("inf", "forever"):
        return math.inf
    try:
        return float(text)
    except ValueError:
        return text


def _command(sim: ThreadedSim, line: str) -> None:
    words = line.split()
    if not words:
        return
    name, args = words[0], [_arg(w) for w in words[1:]]
    if name == "snapshot":
        click.echo(json.dumps(sim.snapshot(), default=str, indent=2))
        return
    if name not in CONTROLS:
        click.echo(f"unknown command {name!r}; known: snapshot, {', '.join(CONTROLS)}", err=True)
        return
    try:
        sim.call(name, *args)
    except Exception as exc:  # a typo at the prompt must not stop the simulator
        click.echo(f"{name}: {type(exc).__name__}: {exc}", err=True)


def _print_event(ev: SimEvent) -> None:
    click.echo(str(ev))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command(help=__doc__)
@click.option(
    "--port",
    default=4002,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port on loopback (0: a free one).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="A loopback address.")
@click.option("--accounts", default="DU1234567", show_default=True, help="Comma-separated managed accounts.")
@click.option(
    "--server-version", default=178, show_default=True, type=int, help="Highest server version to negotiate."
)
@click.option(
    "--fault",
    "fault_specs",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="red_on_fast_close=S, silent, handshake_delay=S, stall_sync=REQUEST, "
    "client_id_hold=S|inf; repeatable.",
)
@click.option("--backend", type=click.Choice(["asyncio", "trio"]), default="asyncio", show_default=True)
@click.option(
    "--track-pids/--no-track-pids",
    default=True,
    show_default=True,
    help="Look up each peer's pid (for close records) while its socket is open.",
)
def main(
    port: int,
    host: str,
    accounts: str,
    server_version: int,
    fault_specs: tuple[str, ...],
    backend: str,
    track_pids: bool,
) -> None:
    faults = Faults()
    try:
        for spec in fault_specs:
            faults = faults.with_cli(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        with running_in_thread(
            backend=backend,
            accounts=accounts.split(","),
            host=host,
            port=port,
            server_version=server_version,
            faults=faults,
            on_event=_print_event,
            track_pids=track_pids,
        ) as sim:
            for line in sys.stdin:
                _command(sim, line)
            threading.Event().wait()  # stdin closed: serve until Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("gatewaysim stopped")


if __name__ == "__main__":
    main()
