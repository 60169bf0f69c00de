"""Fault settings of the simulator: what it is switched to at start, parsed from the CLI too."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

# Start-up sync requests of ib_async 2.1.0 that `stall_sync` can leave unanswered, by the name a
# person would use, with the message id the client sends.
SYNC_REQUESTS: dict[str, int] = {
    "positions": 61,
    "open_orders": 5,
    "completed_orders": 99,
    "account_updates": 6,
    "account_updates_multi": 76,
    "executions": 7,
}


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults active when the simulator starts; each one also has a run-time method.

    red_on_fast_close: window in s; a client closing within it after its handshake turns RED.
    silent: start RED (TCP accepts, the hello is read, nothing answers).
    handshake_delay: s to wait before answering the hello.
    stall_sync: one of SYNC_REQUESTS that is never answered.
    client_id_hold: s a closed session's client id stays reserved (math.inf: until restart).
    """

    red_on_fast_close: float | None = None
    silent: bool = False
    handshake_delay: float = 0.0
    stall_sync: str | None = None
    client_id_hold: float | None = None

    def __post_init__(self) -> None:
        check_window(self.red_on_fast_close, "red_on_fast_close")
        check_window(self.client_id_hold, "client_id_hold")
        check_seconds(self.handshake_delay, "handshake_delay")
        check_sync_name(self.stall_sync)

    def with_cli(self, spec: str) -> Faults:
        """Apply one `NAME[=VALUE]` from the command line (`silent`, `client_id_hold=inf`)."""
        name, _, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        known = {f.name for f in fields(self)}
        if name not in known:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
        raw = raw.strip()
        value: Any
        if name == "silent":
            value = raw.lower() not in ("0", "false", "no", "off") if raw else True
        elif name == "stall_sync":
            if not raw:
                raise ValueError(f"stall_sync needs a request: {', '.join(SYNC_REQUESTS)}")
            value = raw
        elif not raw:
            raise ValueError(f"{name} needs a value in seconds, e.g. {name}=0.5")
        elif raw.lower() in ("inf", "forever", "infinite"):
            value = math.inf
        elif raw.lower() in ("none", "off"):
            value = 0.0 if name == "handshake_delay" else None
        else:
            try:
                value = float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
        return replace(self, **{name: value})


def check_seconds(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def check_window(value: float | None, name: str) -> None:
    if value is not None:
        check_seconds(value, name)


def check_sync_name(name: str | None) -> None:
    if name is not None and name not in SYNC_REQUESTS:
        raise ValueError(f"unknown sync request {name!r}; known: {', '.join(SYNC_REQUESTS)}")
