"""Flags shared by several commands, and Settings built from the environment plus those flags.

A flag given on the command line replaces its environment variable entirely, and a command reads
only the variables it uses: a bad value in a variable the user overrode or that the command does
not need (`IBKR_CLIENT_ID=x ibgw status`) is not an error.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from fsm import Settings, SettingsError
from fsm.cli.exits import CliError
from fsm.cli.text import one_line, printable
from fsm.settings import ENV_VARS

F = TypeVar("F", bound=Callable[..., Any])

#: The flag for each settings field, to name the culprit of a bad value.
FLAG_OF = {
    "host": "--host",
    "port": "--port",
    "client_id": "--client-id",
    "readonly": "--readonly/--no-readonly",
    "handshake_timeout": "--timeout",
    "state_dir": "--state-dir",
}


def build_settings(
    *, uses: Collection[str] | None = None, env: Mapping[str, str] | None = None, **flags: Any
) -> Settings:
    """Settings from the environment variables of the fields in `uses` (all if None), then each
    given flag applied on top.

    An error names its culprit: the environment variable (the core's SettingsError does that) or
    the flag (wrapped here), never a field name the user never typed.
    """
    given = {k: v for k, v in flags.items() if v is not None}
    source = dict(os.environ if env is None else env)
    for name, var in ENV_VARS.items():
        if name in given or (uses is not None and name not in uses):
            source.pop(var, None)
    try:
        settings = Settings.from_env(source)
    except SettingsError as exc:
        raise CliError(printable(one_line(str(exc)))) from None
    for name, value in given.items():
        try:
            settings = settings.replace(**{name: value})
        except SettingsError as exc:
            msg = printable(one_line(str(exc)))
            flag = FLAG_OF.get(name, name)
            msg = f"{flag}={msg[len(name) + 1 :]}" if msg.startswith(f"{name}=") else f"{flag}: {msg}"
            raise CliError(msg) from None
    return settings


class FiniteRange(click.FloatRange):
    """A float within a range; click's FloatRange lets `nan` through (every comparison is False)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


def state_dir_option(f: F) -> F:
    return click.option(
        "--state-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Lock files and status snapshots (default: $IBGW_STATE_DIR or a per-user directory).",
    )(f)


def connection_options(f: F) -> F:
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
