"""The `ibgw` command's exit statuses and its one-line user error.

Scripts and supervisors read the status to tell "you asked for something wrong" (2) from "the
Gateway is unwell" (1); the table below is the one definition, rendered into `ibgw --help`.
"""

from __future__ import annotations

from enum import IntEnum

import click


class Exit(IntEnum):
    OK = 0
    ATTENTION = 1
    USAGE = 2
    ALREADY_RUNNING = 3
    NOT_FOUND = 4
    INTERNAL = 70  # EX_SOFTWARE
    INTERRUPTED = 130


MEANING: dict[Exit, str] = {
    Exit.OK: "ok",
    Exit.ATTENTION: "needs attention / demo step failed",
    Exit.USAGE: "bad flag or environment value",
    Exit.ALREADY_RUNNING: "another manager holds this client id",
    Exit.NOT_FOUND: "no status snapshot found",
    Exit.INTERNAL: "internal error",
    Exit.INTERRUPTED: "interrupted",
}


def epilog() -> str:
    """The exit-status line of `ibgw --help`."""
    return "Exit status: " + "; ".join(f"{int(code)} {MEANING[code]}" for code in Exit) + "."


class CliError(Exception):
    """A one-line user error with its own exit status, reported by the command that raised it."""

    def __init__(self, message: str, exit_code: Exit = Exit.USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        ctx = click.get_current_context(silent=True)
        self.where = ctx.command_path if ctx is not None else "ibgw"
