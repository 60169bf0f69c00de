"""`python -m gatewaysim --port 4002 [--fault NAME[=VALUE] ...]`: run the simulator from a shell.

Prints every state change. Lines on stdin call a control at run time, e.g. `go_red`,
`restart`, `down_for 5`, `client_id_hold inf`, `stall_sync positions`,
`connectivity_restored true`, `reject_next_order no margin`, `drop_on_place before_ack`,
`fill_order strat-A:0001`, `fill_while_away on`, `end_of_day`, `farm_outage 30`,
`pacing_violation`, `market_data_permission AAPL delayed`, `snapshot`. Ctrl-C (or SIGTERM)
stops it cleanly.
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
from .instruments import MAX_HOLDINGS
from .market import PERMISSIONS
from .observe import SimEvent
from .pacing import Limits
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
    "read_only_api",
    "reject_next_order",
    "drop_on_place",
    "fill_while_away",
    "fill_order",
    "partial_fills",
    "end_of_day",
)
MARKET_CONTROLS = ("farm_outage", "farm_restored", "pacing_violation", "market_data_permission", "data_lost")
TEXT_CONTROLS = ("reject_next_order", "fill_order", "market_data_permission")  # words stay text


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
    name = words[0]
    if name == "snapshot":
        click.echo(json.dumps(sim.snapshot(), default=str, indent=2))
        return
    if name not in CONTROLS + MARKET_CONTROLS:
        known = ", ".join(("snapshot", *CONTROLS, *MARKET_CONTROLS))
        click.echo(f"unknown command {name!r}; known: {known}", err=True)
        return
    args: list[Any]
    if name == "reject_next_order":
        args = [" ".join(words[1:])] if len(words) > 1 else []
    elif name in TEXT_CONTROLS:
        args = words[1:]
    else:
        args = [_arg(w) for w in words[1:]]
    if name == "pacing_violation":
        args = [int(a) for a in args]
    try:
        getattr(sim, name)(*args)
    except Exception as exc:  # a typo at the prompt must not stop the simulator
        click.echo(f"{name}: {type(exc).__name__}: {exc}", err=True)


def _print_event(ev: SimEvent) -> None:
    click.echo(str(ev))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _permission(spec: str) -> tuple[str, str]:
    symbol, _, level = spec.partition("=")
    if not symbol or level not in PERMISSIONS:
        raise click.BadParameter(f"{spec!r}: use SYMBOL=LEVEL, LEVEL one of {', '.join(PERMISSIONS)}")
    return symbol, level


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
    help="red_on_fast_close=S, silent, handshake_delay=S, stall_sync=REQUEST, client_id_hold=S|inf, "
    "read_only_api, reject_orders=N, drop_on_place=before_ack|discard, fill_while_away, "
    "partial_fills; repeatable.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the price process.")
@click.option(
    "--tick-rate",
    default=4.0,
    show_default=True,
    type=click.FloatRange(min=0.001, max=1e6),
    help="Market ticks per second (quotes, trades, fills).",
)
@click.option(
    "--permission",
    "permissions",
    multiple=True,
    metavar="SYMBOL=LEVEL",
    help=f"Market data permission per instrument: {', '.join(PERMISSIONS)}; repeatable.",
)
@click.option(
    "--positions",
    type=click.IntRange(0, MAX_HOLDINGS),
    default=None,
    help="Position rows of the first account: AAPL, MSFT, then synthetic stocks H00001... "
    "[default: AAPL and MSFT in every account]",
)
@click.option("--no-limits", is_flag=True, help="Switch off IB's pacing and market-data line limits.")
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
    seed: int,
    tick_rate: float,
    permissions: tuple[str, ...],
    positions: int | None,
    no_limits: bool,
    backend: str,
    track_pids: bool,
) -> None:
    faults = Faults()
    try:
        for spec in fault_specs:
            faults = faults.with_cli(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None
    grants = [_permission(p) for p in permissions]
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
            seed=seed,
            tick_rate=tick_rate,
            positions=positions,
        ) as sim:
            for symbol, level in grants:
                sim.market_data_permission(symbol, level)
            if no_limits:
                sim.set_limits(Limits(enabled=False))
            for line in sys.stdin:
                _command(sim, line)
            threading.Event().wait()  # stdin closed: serve until Ctrl-C / SIGTERM
    except KeyboardInterrupt:
        pass
    except (OSError, ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("gatewaysim stopped")


if __name__ == "__main__":
    main()
