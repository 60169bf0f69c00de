"""Status snapshot: a small JSON file per (host, port, client id) in the state directory.

The manager rewrites it atomically (temp file + ``os.replace``) on every transition, so that
``ibgw status`` and supervisors can read health without opening a session to the Gateway and
never see a half-written file. On shutdown the file stays, marked ``stopped``: the last state and
counters remain readable after the manager has gone.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = [
    "host_slug",
    "read_all",
    "read_status",
    "status_path",
    "write_status",
]


def host_slug(host: str) -> str:
    """The host as it appears in file names (``::1`` -> ``__1``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)


def status_path(state_dir: Path, host: str, port: int, client_id: int) -> Path:
    """``<state_dir>/status-<host>-<port>-<client_id>.json``."""
    return Path(state_dir) / f"status-{host_slug(host)}-{port}-{client_id}.json"


def write_status(path: Path, snapshot: dict[str, Any]) -> None:
    """Replace ``path`` atomically with ``snapshot`` plus ``updated_at`` (epoch seconds)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = dict(snapshot, updated_at=time.time())
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, sort_keys=True, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(path: Path) -> dict[str, Any] | None:
    """Read one snapshot; None if absent or unreadable.

    Adds ``manager_alive``: a snapshot that is not marked stopped but whose manager pid is gone
    was left by a manager that died without shutting down, so its state is not to be trusted.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    data["manager_alive"] = _alive(data.get("manager_pid")) and not data.get("stopped", False)
    return data


def read_all(state_dir: Path) -> list[dict[str, Any]]:
    """Every readable snapshot in ``state_dir``, sorted by file name."""
    out = []
    for p in sorted(Path(state_dir).glob("status-*.json")):
        snap = read_status(p)
        if snap is not None:
            snap["path"] = str(p)
            out.append(snap)
    return out
