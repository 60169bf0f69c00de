"""One line per state change or notice: the one format `ibgw run` and `ibgw demo` both print."""

from __future__ import annotations

from fsm import Notice, StateChange
from fsm.cli.text import printable


def describe(change: StateChange | Notice) -> str:
    """`SOURCE --event--> DEST  (reason)` — plus `  (expected: WINDOW)` for a change the core
    tagged expected inside a maintenance window — or `notice KIND CODE: message`, terminal-safe."""
    if isinstance(change, StateChange):
        reason = f"  ({change.reason})" if change.reason else ""
        expected = f"  (expected: {printable(change.window)})" if change.expected else ""
        return f"{change.source} --{change.event}--> {change.dest}{reason}{expected}"
    code = f" {change.code}" if change.code is not None else ""
    return f"notice {printable(change.kind)}{code}: {printable(change.message)}"
