"""Text for a terminal: one line, no control characters, state names coloured by health.

Snapshot fields, process names and Gateway messages come from outside this process; printed raw,
an escape sequence in one of them would rewrite the operator's screen. Everything untrusted goes
through `printable` before it reaches stdout or stderr.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

STATE_STYLE = {
    "IDLE": "dim",
    "SPAWNING": "cyan",
    "HANDSHAKING": "yellow",
    "CONNECTED": "bold green",
    "DEGRADED_RED": "bold red",
}


def one_line(text: str) -> str:
    """Whitespace runs (newlines included) folded to single spaces."""
    return " ".join(text.split())


def printable(value: object) -> str:
    """`str(value)` with every non-printable character (ESC, CR, bidi controls...) escaped."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(c: str) -> str:
    o = ord(c)
    if o < 0x100:
        return f"\\x{o:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def state_style(state: str) -> str:
    """The rich style for a state name (white for anything unknown)."""
    return STATE_STYLE.get(state, "white")


def in_state_for(snap: Mapping[str, object]) -> str | None:
    """How long a status snapshot's manager has been in its state ("12.3 s"), if it says."""
    since = snap.get("since_wall", snap.get("since"))
    if isinstance(since, (int, float)) and since > 1e9:  # epoch seconds
        return f"{max(0.0, time.time() - since):.1f} s"
    return None
