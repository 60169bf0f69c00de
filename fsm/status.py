"""Status snapshot: a small JSON file per (Gateway address, port, client id) in the state dir.

The manager rewrites it atomically on every transition, so that ``ibgw status`` and supervisors
can read health without opening a session to the Gateway and never see half a file. On shutdown
the file stays, marked ``stopped``: the last state and counters remain readable.

Readers trust nothing: a snapshot is read only from a small regular file of ours (fsm.statedir),
and one that cannot be read or parsed comes back as state ``unknown`` with a one-line
``warning``. A manager is ``manager_alive`` only if its pid is running *with the start time the
snapshot recorded*: after pid reuse a dead manager's CONNECTED snapshot is not taken for health.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from fsm.pids import ProcessId, pid_alive
from fsm.settings import Settings
from fsm.statedir import UntrustedFile, ensure_state_dir, file_slug, read_bounded, write_atomic

log = logging.getLogger(__name__)

__all__ = ["UNKNOWN", "read_all", "read_status", "snapshot", "status_path", "write_status"]

UNKNOWN = "unknown"
"""The state of a snapshot that could not be read or trusted."""

_KEPT_OUT = frozenset({"state", "reason", "worker_pid", "client_id", "since_ns", "maintenance_window"})


def status_path(state_dir: Path, address: str, port: int, client_id: int) -> Path:
    """``<state_dir>/status-<address>-<port>-<client_id>.json``."""
    return Path(state_dir) / f"status-{file_slug(address)}-{port}-{client_id}.json"


def snapshot(
    settings: Settings,
    *,
    metrics: Mapping[str, Any],
    since: float,
    address: str,
    manager: ProcessId | None,
    farms: Mapping[int, str],
    last_error: str | None,
    stopped: bool,
    expected: bool = False,
) -> dict[str, Any]:
    """The snapshot of one manager: state, identity, counters (flat numbers) and farm notices.

    ``maintenance_window`` names the window in force (None outside one); ``expected`` says the
    last state change was tagged expected (Transition.expected: no alarm)."""
    counters = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and k not in _KEPT_OUT
    }
    for st, ns in metrics.get("time_in_state_ns", {}).items():
        counters[f"time_in_{st}_s"] = round(ns / 1e9, 3)
    return {
        "state": str(metrics["state"]),
        "since": since,
        "reason": metrics.get("reason"),
        "last_error": last_error,
        "maintenance_window": metrics.get("maintenance_window"),
        "expected": expected,
        "host": settings.host,
        "address": address,
        "port": settings.port,
        "client_id": settings.client_id,
        "worker_pid": metrics.get("worker_pid"),
        "manager_pid": manager.pid if manager else None,
        "manager_create_time": manager.create_time if manager else None,
        "counters": counters,
        "farms": {str(k): v for k, v in farms.items()},
        "stopped": stopped,
    }


def write_status(path: Path, snap: Mapping[str, Any]) -> None:
    """Replace ``path`` atomically with ``snap`` plus ``updated_at`` (epoch seconds)."""
    data = msgspec.json.encode(dict(snap, updated_at=time.time()), order="sorted")
    write_atomic(Path(path), data + b"\n")


def _unknown(path: Path, why: str) -> dict[str, Any]:
    log.warning("status snapshot %s: %s", path, why)
    return {"state": UNKNOWN, "warning": why, "manager_alive": False, "stopped": False}


def read_status(path: Path) -> dict[str, Any] | None:
    """One snapshot; None if there is no file; state ``unknown`` (with ``warning``) if it cannot
    be trusted or parsed. Adds ``manager_alive``: the manager is running (pid and start time)
    and did not mark the snapshot stopped."""
    path = Path(path)
    try:
        data = read_bounded(path)
    except UntrustedFile as exc:
        return _unknown(path, str(exc))
    if data is None:
        return None
    try:
        snap = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeError) as exc:
        return _unknown(path, f"not a status snapshot: {str(exc)[:120]}")
    if not isinstance(snap, dict) or not isinstance(snap.get("state"), str):
        return _unknown(path, "not a status snapshot: no state")
    created = snap.get("manager_create_time")
    stopped = snap.get("stopped") is True
    snap["stopped"] = stopped
    snap["manager_alive"] = (
        not stopped
        and isinstance(created, (int, float))
        and pid_alive(snap.get("manager_pid"), float(created))
    )
    return snap


def read_all(state_dir: Path) -> list[dict[str, Any]]:
    """Every snapshot in ``state_dir`` (with its ``path``), sorted by file name; [] if there is
    no such directory. UnsafeStateDir if the directory itself is not to be trusted."""
    if not ensure_state_dir(Path(state_dir), create=False):
        return []
    out = []
    for p in sorted(Path(state_dir).glob("status-*.json")):
        snap = read_status(p)
        if snap is not None:
            snap["path"] = str(p)
            out.append(snap)
    return out
