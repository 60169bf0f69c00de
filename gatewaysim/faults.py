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

# What `drop_on_place` does with the order whose placeOrder arrives: keep it working at the
# broker but drop the session before any acknowledgement, or drop both.
DROP_MODES = ("before_ack", "discard")

_SWITCHES = ("silent", "read_only_api", "fill_while_away", "partial_fills")


@dataclass(frozen=True, slots=True)
class Faults:
    """Faults active when the simulator starts; each one also has a run-time method.

    red_on_fast_close: window in s; a client closing within it after its handshake turns RED.
    silent: start RED (TCP accepts, the hello is read, nothing answers).
    handshake_delay: s to wait before answering the hello.
    stall_sync: one of SYNC_REQUESTS that is never answered.
    client_id_hold: s a closed session's client id stays reserved (math.inf: until restart).
    read_only_api: the Gateway's "Read-Only API" setting: orders and cancels get error 321.
    reject_orders: the next N new orders get error 201 (and never exist).
    drop_on_place: the next placeOrder drops its session at once, the order kept working
        ("before_ack") or never created ("discard"); then switches itself off.
    fill_while_away: a working order fills at once (at its limit, else the market) whenever
        its client id has no session.
    partial_fills: one fill per tick of at most the size quoted or traded at that tick.
    """

    red_on_fast_close: float | None = None
    silent: bool = False
    handshake_delay: float = 0.0
    stall_sync: str | None = None
    client_id_hold: float | None = None
    read_only_api: bool = False
    reject_orders: int = 0
    drop_on_place: str | None = None
    fill_while_away: bool = False
    partial_fills: bool = False

    def __post_init__(self) -> None:
        check_window(self.red_on_fast_close, "red_on_fast_close")
        check_window(self.client_id_hold, "client_id_hold")
        check_seconds(self.handshake_delay, "handshake_delay")
        check_sync_name(self.stall_sync)
        check_drop_mode(self.drop_on_place)
        if not isinstance(self.reject_orders, int) or self.reject_orders < 0:
            raise ValueError(f"reject_orders must be a count >= 0, got {self.reject_orders!r}")

    def with_cli(self, spec: str) -> Faults:
        """Apply one `NAME[=VALUE]` from the command line (`silent`, `client_id_hold=inf`)."""
        name, _, raw = spec.partition("=")
        name = name.strip().replace("-", "_")
        known = {f.name for f in fields(self)}
        if name not in known:
            raise ValueError(f"unknown fault {name!r}; known: {', '.join(sorted(known))}")
        raw = raw.strip()
        value: Any
        if name in _SWITCHES:
            value = raw.lower() not in ("0", "false", "no", "off") if raw else True
        elif name == "stall_sync":
            if not raw:
                raise ValueError(f"stall_sync needs a request: {', '.join(SYNC_REQUESTS)}")
            value = raw
        elif name == "drop_on_place":
            value = None if raw.lower() in ("", "none", "off") else raw
        elif name == "reject_orders":
            try:
                value = int(raw) if raw else 1
            except ValueError:
                raise ValueError(f"reject_orders={raw!r} is not a count") from None
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
        changes: dict[str, Any] = {name: value}
        return replace(self, **changes)


def check_seconds(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


def check_window(value: float | None, name: str) -> None:
    if value is not None:
        check_seconds(value, name)


def check_sync_name(name: str | None) -> None:
    if name is not None and name not in SYNC_REQUESTS:
        raise ValueError(f"unknown sync request {name!r}; known: {', '.join(SYNC_REQUESTS)}")


def check_drop_mode(mode: str | None) -> None:
    if mode is not None and mode not in DROP_MODES:
        raise ValueError(f"drop_on_place must be one of {', '.join(DROP_MODES)} (or off), got {mode!r}")
