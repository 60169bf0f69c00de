"""One line per state change or notice: the one format `ibgw run` and `ibgw demo` both print."""

from __future__ import annotations

from fsm import Notice, StateChange
from fsm.cli.text import printable


def describe(change: StateChange | Notice) -> str:
    """`SOURCE --event--> DEST  (reason)` or `notice KIND CODE: message`, terminal-safe."""
    if isinstance(change, StateChange):
        reason = f"  ({change.reason})" if change.reason else ""
        return f"{change.source} --{change.event}--> {change.dest}{reason}"
    code = f" {change.code}" if change.code is not None else ""
    return f"notice {printable(change.kind)}{code}: {printable(change.message)}"
