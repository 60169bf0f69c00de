"""Connection settings: one frozen value, validated once, read from the environment or code.

Durations are float seconds here (what people type); the core converts them to integer ns.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError, UnknownHost, UnsafeStateDir
from .maintenance import Window, default_windows, local_zone, parse_windows

MIN_HANDSHAKE_TIMEOUT = 30.0
"""Shorter handshake budgets were one of the original bugs: a busy Gateway needs up to 30 s."""
MAX_DURATION = 86_400.0
"""No duration is longer than a day: bigger numbers are typos, and 1e308 s overflows in ns."""

ENV_VARS: dict[str, str] = {
    "host": "IBKR_HOST",
    "port": "IBKR_PORT",
    "client_id": "IBKR_CLIENT_ID",
    "readonly": "IBKR_READONLY",
    "handshake_timeout": "IBKR_TIMEOUT",
    "state_dir": "IBGW_STATE_DIR",
    "warm_spare": "IBGW_WARM_SPARE",
    "maintenance": "IBGW_MAINTENANCE",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_DURATIONS = (
    "handshake_timeout",
    "spawn_timeout",
    "probe_interval",
    "probe_timeout",
    "backoff_initial",
    "backoff_max",
    "stable_period",
    "min_session",
    "retire_grace",
    "kill_grace",
    "request_timeout",
    "maintenance_backoff_max",
)


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """$XDG_STATE_HOME/ibgw, else ~/.local/state/ibgw (XDG: relative paths are ignored)."""
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME", "")
    root = Path(base) if os.path.isabs(base) else Path.home() / ".local" / "state"
    return root / "ibgw"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything one connection manager needs; invalid values never get past construction."""

    host: str = "127.0.0.1"
    port: int = 4002
    client_id: int = 1
    readonly: bool = True
    handshake_timeout: float = 30.0
    spawn_timeout: float = 20.0
    probe_interval: float = 10.0
    probe_timeout: float = 5.0
    backoff_initial: float = 1.0
    backoff_multiplier: float = 1.6
    backoff_jitter: float = 0.2
    backoff_max: float = 120.0
    stable_period: float = 60.0
    min_session: float = 5.0
    retire_grace: float = 2.0
    kill_grace: float = 2.0
    request_timeout: float = 30.0
    warm_spare: bool = False  # keep one idle worker (ib_async imported, no socket) for respawns
    state_dir: Path = field(default_factory=default_state_dir)
    # IB's resets and the Gateway's restart (fsm.maintenance); a spec string is parsed
    maintenance: tuple[Window, ...] = field(default_factory=default_windows)
    maintenance_backoff_max: float = 5.0  # inside a window every retry is due within this

    def __post_init__(self) -> None:
        for name in (*_DURATIONS, "backoff_multiplier", "backoff_jitter"):
            value = getattr(self, name)
            if type(value) is int and abs(value) <= 2**53:  # 30 means 30.0; bool is no duration
                object.__setattr__(self, name, float(value))
        given: dict[str, object] = {"state_dir": self.state_dir, "maintenance": self.maintenance}
        if isinstance(given["state_dir"], str):  # typed Path, but code may pass a str
            object.__setattr__(self, "state_dir", Path(given["state_dir"]))
        windows = given["maintenance"]
        if isinstance(windows, str):
            object.__setattr__(self, "maintenance", parse_windows(windows, label="maintenance"))
        elif isinstance(windows, (list, Window)):
            object.__setattr__(self, "maintenance", _as_tuple(windows))
        for f in dataclasses.fields(self):
            _check(f.name, getattr(self, f.name), f.name)
        if self.backoff_max < self.backoff_initial:
            raise SettingsError(
                f"backoff_max={self.backoff_max!r} is below backoff_initial={self.backoff_initial!r}"
            )
        if self.probe_timeout >= self.probe_interval:
            raise SettingsError(
                f"probe_timeout={self.probe_timeout!r} must be shorter than "
                f"probe_interval={self.probe_interval!r}: one probe times out before the next is due"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the variables in ENV_VARS (IBKR_HOST, IBKR_PORT, IBKR_CLIENT_ID, IBKR_READONLY,
        IBKR_TIMEOUT, IBGW_STATE_DIR, IBGW_WARM_SPARE, IBGW_MAINTENANCE); keyword overrides win
        over the environment."""
        env = os.environ if env is None else env
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {"state_dir": default_state_dir(env)}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if name == "maintenance" and name not in overrides:
                values[name] = (
                    default_windows(env)
                    if raw is None
                    else parse_windows(raw, local=local_zone(env), label=var)
                )
            elif raw is not None and name not in overrides:
                values[name] = _parse(name, var, raw)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with `changes`, validated like the constructor."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)


def _as_tuple(windows: list[Any] | Window) -> tuple[Any, ...]:
    return (windows,) if isinstance(windows, Window) else tuple(windows)


def _parse(name: str, var: str, raw: str) -> Any:
    """Turn one env string into a typed, checked value; errors name the variable."""
    text = raw.strip()
    value: Any
    if name in ("port", "client_id"):
        if not text.isascii() or not text.lstrip("+-").isdigit():
            raise SettingsError(f"{var}={_show(raw)} {_PROBLEM[name]}")
        value = int(text)
    elif name in ("readonly", "warm_spare"):
        if text.lower() in _TRUE:
            value = True
        elif text.lower() in _FALSE:
            value = False
        else:
            raise SettingsError(f"{var}={_show(raw)} {_PROBLEM[name]}")
    elif name == "handshake_timeout":
        try:
            value = float(text)
        except ValueError:
            raise SettingsError(f"{var}={_show(raw)} is not a number of seconds") from None
    elif name == "state_dir":
        value = Path(text) if text else ""
    else:
        value = text
    _check(name, value, var, raw)
    return value


_PROBLEM = {
    "host": "is not a host name or address",
    "port": "is not a port number (1-65535)",
    "client_id": "is not a client id (an integer 0-2147483647)",
    "readonly": "is not a boolean (true/false, 1/0, yes/no, on/off)",
    "warm_spare": "is not a boolean (true/false, 1/0, yes/no, on/off)",
    "state_dir": "is not a directory path",
    "backoff_multiplier": "is not a multiplier (a finite number >= 1)",
    "backoff_jitter": "is not a jitter fraction (0 <= jitter < 1)",
    "maintenance": "is not a tuple of fsm.maintenance.Window (or a spec string)",
}


def _check(name: str, value: Any, label: str, shown: Any = None) -> None:
    """Raise SettingsError naming `label` (env var or field) if `value` is not valid for `name`."""
    text = _show(value if shown is None else shown)
    if name in _DURATIONS:
        if not _is_number(value) or (isinstance(value, float) and not math.isfinite(value)):
            raise SettingsError(f"{label}={text} is not a finite number of seconds")
        if value > MAX_DURATION:
            raise SettingsError(f"{label}={text} is longer than the {MAX_DURATION:g} s (1 day) maximum")
        if name == "handshake_timeout" and value < MIN_HANDSHAKE_TIMEOUT:
            raise SettingsError(
                f"{label}={text} is below the {MIN_HANDSHAKE_TIMEOUT:g} s minimum handshake "
                "timeout: a busy Gateway can take that long, and shorter budgets caused "
                "false 'API connection failed: TimeoutError' reports"
            )
        if value <= 0:
            raise SettingsError(f"{label}={text} must be a positive number of seconds")
        return
    if name == "host":
        problem = _host_problem(value)
        if problem is not None:
            raise UnknownHost(f"{label}={text} {_PROBLEM[name]}{problem}")
        return
    if not _VALID[name](value):
        raise SettingsError(f"{label}={text} {_PROBLEM[name]}")
    if name == "state_dir":
        problem = _state_dir_problem(value)
        if problem is not None:
            raise UnsafeStateDir(f"{label}={text} {problem}")


_VALID: dict[str, Callable[[Any], bool]] = {
    "port": lambda v: _is_int(v) and 1 <= v <= 65535,
    "client_id": lambda v: _is_int(v) and 0 <= v <= 2**31 - 1,
    "readonly": lambda v: isinstance(v, bool),
    "warm_spare": lambda v: isinstance(v, bool),
    "state_dir": lambda v: isinstance(v, Path) and str(v) != "",
    "backoff_multiplier": lambda v: _is_number(v) and math.isfinite(v) and v >= 1,
    "backoff_jitter": lambda v: _is_number(v) and 0 <= v < 1,
    "maintenance": lambda v: isinstance(v, tuple) and all(isinstance(w, Window) for w in v),
}

_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?")


def _host_problem(v: Any) -> str | None:
    """Why `v` is neither an IP address nor a DNS name (RFC 1123 labels), or None."""
    if not isinstance(v, str) or not v:
        return ""
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    try:
        name = v.encode("idna").decode("ascii").removesuffix(".")
    except UnicodeError as exc:
        found = re.search(r"UnicodeError: (.*)\)$", str(exc))
        why = (found[1] if found else str(exc)).encode("ascii", "backslashreplace").decode()
        return f" ({why}; a DNS name has labels of 1-63 characters between dots)"
    if len(name) > 253:
        return f" ({len(name)} characters; a DNS name has at most 253)"
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return " (a DNS name has letters, digits and inner '-' between dots)"
    return None


def _state_dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a directory, judged by its nearest existing ancestor (or itself)."""
    for p in (path, *path.parents):
        try:
            st = os.stat(p)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (OSError, ValueError) as exc:
            return f"cannot be checked: {getattr(exc, 'strerror', None) or exc}"
        if stat.S_ISDIR(st.st_mode):
            return None
        return "is not a directory" if p == path else f"cannot be a directory: {p} is not one"
    return None


def _show(value: Any) -> str:
    """repr for a message: a Path whole (it is the culprit), anything else over 100 characters
    cut to a readable head."""
    if isinstance(value, Path):
        return repr(str(value))
    text = repr(value)
    if len(text) > 100:
        size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters"
        text = f"{text[:40]}... ({size})"
    return text


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)
