"""The `ibgw` command: demo, run, status, doctor, diagram, sim.

Every error a user can cause — a bad flag, a bad IBKR_* value — ends in one line naming the
culprit and exit status 2, so that scripts and supervisors can tell "you asked for something
wrong" from "the Gateway is unwell". Commands import what they need when they run, so `ibgw
--help` stays quick and `sim` alone imports the simulator.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from fsm import IbgwError, SettingsError
from fsm.cli.exits import CliError, Exit, epilog
from fsm.cli.params import FiniteRange, build_settings, connection_options, state_dir_option
from fsm.cli.text import one_line, printable


class _Group(click.Group):
    """Adds `sim` lazily, so that commands which do not need the simulator never import it."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "sim"})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name == "sim":
            return _sim_command()
        return super().get_command(ctx, name)


@click.group(
    cls=_Group,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=epilog(),
)
@click.pass_context
def cli(ctx: click.Context) -> None:
    """ibgw: one IB Gateway connection, owned by an explicit state machine."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


# --------------------------------------------------------------------------------------- diagram
@cli.command()
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 listing the generated files that are stale."
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Repository root holding diagrams/ and README.md (default: this checkout).",
)
def diagram(check: bool, root: Path | None) -> int:
    """Regenerate (or --check) diagrams/ and the README's diagram from fsm/core.py's table."""
    from fsm import diagram as d
    from fsm.errors import CheckoutError

    try:
        where = d.checkout() if root is None else root
    except CheckoutError as exc:
        raise CliError(str(exc)) from None
    if check:
        stale = d.check(where)
        for path in stale:
            click.echo(f"stale: {path} (run `ibgw diagram` to regenerate)")
        if stale:
            return Exit.ATTENTION
        click.echo("diagrams are up to date")
        return Exit.OK
    written = d.write(where)
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo("diagrams were already up to date")
    return Exit.OK


# ----------------------------------------------------------------------------------------- sim
def _sim_command() -> click.Command:
    """`ibgw sim` is `python -m gatewaysim`: the same options, built on first use (lazy import)."""
    import gatewaysim.__main__ as gsm
    from fsm.hosts import is_loopback

    def callback(**kwargs: Any) -> int:
        host = kwargs.get("host", "127.0.0.1")
        if not is_loopback(host):
            raise CliError(
                f"--host: {printable(host)!r} is not a loopback address; the simulator binds loopback only"
            )
        assert gsm.main.callback is not None
        gsm.main.callback(**kwargs)
        return Exit.OK

    return click.Command(
        "sim",
        params=list(gsm.main.params),
        callback=callback,
        help="Run the simulated IB Gateway (same as `python -m gatewaysim`).\n\n"
        + (gsm.__doc__ or "").split("\n\n", 1)[-1],
        short_help="Run the simulated IB Gateway (faults: --fault NAME[=VALUE]).",
    )


# -------------------------------------------------------------------------------------- status
@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the snapshots as JSON.")
@click.option("--host", default=None, help="Only the manager for this host.")
@click.option("--port", type=int, default=None, help="Only managers for this port.")
@click.option("--client-id", type=int, default=None, help="Only the manager for this client id.")
@state_dir_option
def status(
    as_json: bool, host: str | None, port: int | None, client_id: int | None, state_dir: Path | None
) -> int:
    """Show the managers' status snapshots (reads files; never contacts the Gateway).

    Inside a maintenance window (IB's reset, the Gateway's restart) it says which, and whether
    the last state change was expected (no alarm). Exit 0 when every live manager shown is
    CONNECTED, 1 when one is not (expected or not; or its manager died, or its snapshot cannot
    be trusted), 4 when no snapshot matches.
    """
    from fsm.status import read_all

    settings = build_settings(uses={"state_dir"}, state_dir=state_dir)
    snaps = [
        s
        for s in read_all(settings.state_dir)
        if (host is None or host in (s.get("host"), s.get("address")))
        and (port is None or s.get("port") == port)
        and (client_id is None or s.get("client_id") == client_id)
    ]
    if as_json:
        click.echo(
            json.dumps(
                {"state_dir": str(settings.state_dir), "managers": snaps},
                indent=2,
                sort_keys=True,
                default=str,
            )
        )
    else:
        from fsm.cli.views import print_status

        print_status(snaps, settings.state_dir)
    if not snaps:
        return Exit.NOT_FOUND
    healthy = all(s.get("manager_alive") and s.get("state") == "CONNECTED" for s in snaps)
    return Exit.OK if healthy else Exit.ATTENTION


# -------------------------------------------------------------------------------------- doctor
@cli.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Gateway API port to inspect [env IBKR_PORT, default 4002].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@state_dir_option
def doctor(port: int | None, as_json: bool, state_dir: Path | None) -> int:
    """Passive health check: listeners, CLOSE_WAIT sockets and their owners, locks, manager state.

    Reads the kernel's socket table and the state directory only: it never connects to the
    Gateway. Exit 0 when healthy, 1 when something needs attention.
    """
    from fsm.cli.doctor import diagnose

    settings = build_settings(uses={"port", "state_dir"}, port=port, state_dir=state_dir)
    report = diagnose(settings.port, Path(settings.state_dir))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        from fsm.cli.views import print_doctor

        print_doctor(report)
    return report.exit_code


# ----------------------------------------------------------------------------------------- run
def _serve_address(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, int] | None:
    """--serve HOST:PORT parsed by the health server's own rule (fsm.health.parse_address)."""
    if value is None:
        return None
    from fsm.errors import ServeError
    from fsm.health import parse_address

    try:
        return parse_address(value)
    except ServeError as exc:
        raise click.BadParameter(printable(one_line(str(exc))), ctx, param) from None


@cli.command()
@connection_options
@state_dir_option
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="anyio backend for the manager (ib_async itself always runs in the worker).",
)
@click.option(
    "--serve",
    metavar="HOST:PORT",
    default=None,
    callback=_serve_address,
    help="Serve /livez, /readyz and /metrics (Prometheus) over HTTP at this address, e.g. "
    "127.0.0.1:9108 (a bare PORT means 127.0.0.1; 0 picks a free port). Loopback only unless "
    "--serve-remote.",
)
@click.option(
    "--serve-remote",
    is_flag=True,
    help="Allow --serve on a non-loopback address: health and metrics become reachable from "
    "other machines (unauthenticated).",
)
def run(
    host: str | None,
    port: int | None,
    client_id: int | None,
    readonly: bool | None,
    handshake_timeout: float | None,
    state_dir: Path | None,
    backend: str,
    serve: tuple[str, int] | None,
    serve_remote: bool,
) -> int:
    """Connect to a real Gateway and keep the session alive until Ctrl-C or SIGTERM.

    Prints every state change. On Ctrl-C / SIGTERM the worker is retired by process exit (stdin
    EOF, then SIGTERM, then SIGKILL) — never by disconnect(). With --serve, health and metrics
    are served over HTTP from before the first connect until the shutdown ends. Exit 0 after a
    clean shutdown, 2 if the --serve address cannot be used, 3 if another manager already holds
    this host/port/client id.
    """
    from fsm.cli.run import run_forever

    if serve_remote and serve is None:
        raise CliError("--serve-remote: only meaningful with --serve HOST:PORT")

    settings = build_settings(
        host=host,
        port=port,
        client_id=client_id,
        readonly=readonly,
        handshake_timeout=handshake_timeout,
        state_dir=state_dir,
    )
    return run_forever(settings, backend=backend, serve=serve, serve_remote=serve_remote)


# ---------------------------------------------------------------------------------------- demo
@cli.command()
@click.option("--plain", is_flag=True, help="Plain lines instead of the live view (logs, CI).")
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="anyio backend for the manager and the simulator.",
)
@click.option(
    "--pace",
    type=FiniteRange(0, 10),
    default=None,
    metavar="SECONDS",
    help="Pause between steps so a person can follow [live view: 1.5; --plain: 0].",
)
def demo(plain: bool, backend: str, pace: float | None) -> int:
    """Play a scripted Gateway day against the built-in simulator (needs nothing but the install).

    A quote stream and orders (readonly off, against the simulator only) ride through the day:
    connect; Gateway API goes RED; operator restart; worker crash with an order in flight; an
    order send lost; nightly 1100 -> 1101 and 1100 -> 1102; a stale worker of ours holding the
    client id; clean shutdown. Exit 0 only if every step and check held.
    """
    from fsm.cli.demo import run_demo

    return run_demo(plain=plain, backend=backend, pace=pace)


# ---------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry: click without its multi-line usage errors."""
    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="ibgw", standalone_mode=False)
    except BaseException as exc:  # every way out gets its documented status
        sys.exit(_exit_status(_innermost(exc)))
    sys.exit(rv if isinstance(rv, int) else Exit.OK)


def _innermost(exc: BaseException) -> BaseException:
    """The one error inside (nested) single-member exception groups from anyio task groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _exit_status(exc: BaseException) -> int:
    """Report `exc` in the one line it deserves and return the exit status."""
    match exc:
        case SystemExit():
            raise exc
        case click.exceptions.NoArgsIsHelpError():
            click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
            return Exit.OK
        case click.UsageError():
            return _error(exc.ctx.command_path if exc.ctx else "ibgw", exc.format_message(), Exit.USAGE)
        case CliError():
            return _error(exc.where, exc.message, exc.exit_code)
        case click.ClickException():
            return _error("ibgw", exc.format_message(), exc.exit_code)
        case SettingsError():
            return _error("ibgw", str(exc), Exit.USAGE)
        case IbgwError():
            return _error("ibgw", str(exc), Exit.INTERNAL)
        case click.Abort():
            click.echo("ibgw: aborted", err=True)
            return Exit.INTERRUPTED
        case KeyboardInterrupt():
            click.echo("ibgw: interrupted", err=True)
            return Exit.INTERRUPTED
        case Exception():  # a bug: keep the traceback, but with the documented status
            traceback.print_exception(exc)
            return Exit.INTERNAL
        case _:
            raise exc


def _error(where: str, message: str, status: int) -> int:
    click.echo(f"{where}: error: {printable(one_line(message))}", err=True)
    return status
