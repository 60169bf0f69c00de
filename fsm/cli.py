"""The `ibgw` command: demo, run, status, doctor, diagram, sim.

Every error a user can cause — a bad flag, a bad IBKR_* value — ends in one line naming the
culprit and exit status 2, so that scripts and supervisors can tell "you asked for something
wrong" from "the Gateway is unwell".
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from fsm.settings import Settings

# Exit codes, documented in the README and in `ibgw --help`.
EXIT_OK = 0
EXIT_ATTENTION = 1  # doctor: something needs attention; demo: a step did not end as scripted
EXIT_USAGE = 2  # bad flag or bad environment value
EXIT_ALREADY_RUNNING = 3  # run: another manager holds this host/port/client id
EXIT_NOT_FOUND = 4  # status: no snapshot matches
EXIT_INTERNAL = 70  # an unexpected error (EX_SOFTWARE)

# The flag for each settings field, to name the culprit of a bad value. A flag given on the
# command line replaces its environment variable (fsm.settings.ENV_VARS) entirely, so a bad value
# in a variable the user overrode is not an error.
FLAG_OF = {
    "host": "--host",
    "port": "--port",
    "client_id": "--client-id",
    "readonly": "--readonly/--no-readonly",
    "handshake_timeout": "--timeout",
    "state_dir": "--state-dir",
}


class CliError(click.ClickException):
    """A one-line user error with its own exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        ctx = click.get_current_context(silent=True)
        self.where = ctx.command_path if ctx is not None else "ibgw"


def build_settings(env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
    """Settings from the environment, then each given flag applied on top.

    An error names its culprit: the environment variable (the core's SettingsError does that) or
    the flag (wrapped here), never a field name the user never typed.
    """
    from fsm.errors import SettingsError
    from fsm.settings import ENV_VARS, Settings

    given = {k: v for k, v in flags.items() if v is not None}
    source = dict(os.environ if env is None else env)
    for name in given:
        source.pop(ENV_VARS.get(name, ""), None)
    try:
        settings = Settings.from_env(source)
    except SettingsError as exc:
        raise CliError(_one_line(str(exc))) from None
    for name, value in given.items():
        try:
            settings = settings.replace(**{name: value})
        except SettingsError as exc:
            msg = _one_line(str(exc))
            flag = FLAG_OF.get(name, name)
            msg = f"{flag}={msg[len(name) + 1 :]}" if msg.startswith(f"{name}=") else f"{flag}: {msg}"
            raise CliError(msg) from None
    return settings


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _state_dir_option(f: Any) -> Any:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Lock files and status snapshots (default: $IBGW_STATE_DIR or a per-user directory).",
    )(f)


def _connection_options(f: Any) -> Any:
    opts = [
        click.option("--host", default=None, help="Gateway host [env IBKR_HOST, default 127.0.0.1]."),
        click.option(
            "--port", type=int, default=None, help="Gateway API port [env IBKR_PORT, default 4002]."
        ),
        click.option(
            "--client-id",
            type=int,
            default=None,
            help="The one client id this manager uses [env IBKR_CLIENT_ID, default 1].",
        ),
        click.option(
            "--readonly/--no-readonly",
            default=None,
            help="Read-only API session [env IBKR_READONLY, default readonly].",
        ),
        click.option(
            "--timeout",
            "handshake_timeout",
            type=float,
            default=None,
            help="Handshake budget in seconds, at least 30 [env IBKR_TIMEOUT, default 30].",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


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
    epilog="Exit status: 0 ok; 1 needs attention / demo step failed; 2 bad flag or environment value; "
    "3 another manager holds this client id; 4 no status snapshot found; 70 internal error; "
    "130 interrupted.",
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

    where = root if root is not None else d.ROOT
    if check:
        stale = d.check(where)
        for path in stale:
            click.echo(f"stale: {path} (run `ibgw diagram` to regenerate)")
        if stale:
            return EXIT_ATTENTION
        click.echo("diagrams are up to date")
        return EXIT_OK
    written = d.write(where)
    for path in written:
        click.echo(f"wrote {path}")
    if not written:
        click.echo("diagrams were already up to date")
    return EXIT_OK


# ----------------------------------------------------------------------------------------- sim
def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sim_command() -> click.Command:
    """`ibgw sim` is `python -m gatewaysim`: the same options, built on first use (lazy import)."""
    import gatewaysim.__main__ as gsm

    def callback(**kwargs: Any) -> int:
        host = kwargs.get("host", "127.0.0.1")
        if not _is_loopback(host):
            raise CliError(f"--host: {host!r} is not a loopback address; the simulator binds loopback only")
        gsm.main.callback(**kwargs)  # type: ignore[misc]
        return EXIT_OK

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
@_state_dir_option
def status(
    as_json: bool, host: str | None, port: int | None, client_id: int | None, state_dir: Path | None
) -> int:
    """Show the managers' status snapshots (reads files; never contacts the Gateway).

    Exit 0 when every live manager shown is CONNECTED, 1 when one is not (or its manager died),
    4 when no snapshot matches.
    """
    from fsm.status import read_all

    settings = build_settings(state_dir=state_dir)
    snaps = read_all(settings.state_dir) if Path(settings.state_dir).is_dir() else []
    snaps = [
        s
        for s in snaps
        if (host is None or s.get("host") == host)
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
        from fsm.views import print_status

        print_status(snaps, settings.state_dir)
    if not snaps:
        return EXIT_NOT_FOUND
    healthy = all(s.get("manager_alive") and s.get("state") == "CONNECTED" for s in snaps)
    return EXIT_OK if healthy else EXIT_ATTENTION


# -------------------------------------------------------------------------------------- doctor
@cli.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Gateway API port to inspect [env IBKR_PORT, default 4002].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@_state_dir_option
def doctor(port: int | None, as_json: bool, state_dir: Path | None) -> int:
    """Passive health check: listeners, CLOSE_WAIT sockets and their owners, locks, manager state.

    Reads the kernel's socket table and the state directory only: it never connects to the
    Gateway. Exit 0 when healthy, 1 when something needs attention.
    """
    from fsm.doctor import diagnose

    settings = build_settings(port=port, state_dir=state_dir)
    report = diagnose(settings.port, Path(settings.state_dir))
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2, default=str))
    else:
        from fsm.views import print_doctor

        print_doctor(report)
    return report.exit_code


# ----------------------------------------------------------------------------------------- run
@cli.command()
@_connection_options
@_state_dir_option
@click.option(
    "--backend",
    type=click.Choice(["asyncio", "trio"]),
    default="asyncio",
    show_default=True,
    help="anyio backend for the manager (ib_async itself always runs in the worker).",
)
def run(
    host: str | None,
    port: int | None,
    client_id: int | None,
    readonly: bool | None,
    handshake_timeout: float | None,
    state_dir: Path | None,
    backend: str,
) -> int:
    """Connect to a real Gateway and keep the session alive until Ctrl-C or SIGTERM.

    Prints every state change. On Ctrl-C / SIGTERM the worker is retired by process exit (stdin
    EOF, then SIGTERM, then SIGKILL) — never by disconnect(). Exit 0 after a clean shutdown,
    3 if another manager already holds this host/port/client id.
    """
    from fsm.runner import run_forever

    settings = build_settings(
        host=host,
        port=port,
        client_id=client_id,
        readonly=readonly,
        handshake_timeout=handshake_timeout,
        state_dir=state_dir,
    )
    return run_forever(settings, backend=backend)


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
    type=click.FloatRange(0, 10),
    default=None,
    metavar="SECONDS",
    help="Pause between steps so a person can follow [live view: 1.5; --plain: 0].",
)
def demo(plain: bool, backend: str, pace: float | None) -> int:
    """Play a scripted Gateway day against the built-in simulator (needs nothing but the install).

    Connect; Gateway API goes RED; operator restart; worker crash; a stale worker of ours holding
    the client id; nightly 1100 -> 1102; clean shutdown. Exit 0 only if every step ended as
    scripted.
    """
    from fsm.demo import run_demo

    return run_demo(plain=plain, backend=backend, pace=pace)


# ---------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry: click without its multi-line usage errors."""
    from fsm.errors import IbgwError, SettingsError

    try:
        rv = cli.main(args=list(argv) if argv is not None else None, prog_name="ibgw", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(EXIT_OK)
    except click.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "ibgw"
        click.echo(f"{where}: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(EXIT_USAGE)
    except CliError as exc:
        click.echo(f"{exc.where}: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except SettingsError as exc:
        click.echo(f"ibgw: error: {_one_line(str(exc))}", err=True)
        sys.exit(EXIT_USAGE)
    except click.ClickException as exc:
        click.echo(f"ibgw: error: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("ibgw: aborted", err=True)
        sys.exit(130)
    except IbgwError as exc:
        click.echo(f"ibgw: error: {_one_line(str(exc))}", err=True)
        sys.exit(EXIT_INTERNAL)
    except KeyboardInterrupt:
        click.echo("ibgw: interrupted", err=True)
        sys.exit(130)
    except Exception:  # a bug: keep the traceback, but with the documented status
        import traceback

        traceback.print_exc()
        sys.exit(EXIT_INTERNAL)
    sys.exit(rv if isinstance(rv, int) else EXIT_OK)


if __name__ == "__main__":
    main()
