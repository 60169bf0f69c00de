"""Status snapshot: atomic writes, readable by another process, stale managers flagged."""

from __future__ import annotations

import json
import os
from pathlib import Path

from fsm.status import read_all, read_status, status_path, write_status


def test_write_then_read_roundtrip_leaves_no_temp_files(tmp_path: Path) -> None:
    path = status_path(tmp_path / "sub", "127.0.0.1", 4002, 5)
    assert path.name == "status-127.0.0.1-4002-5.json"
    snap = {"state": "CONNECTED", "client_id": 5, "manager_pid": os.getpid(), "worker_pid": 1}
    write_status(path, snap)
    write_status(path, dict(snap, state="DEGRADED_RED"))
    got = read_status(path)
    assert got is not None
    assert got["state"] == "DEGRADED_RED" and got["manager_alive"] is True
    assert isinstance(got["updated_at"], float)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert json.loads(path.read_text())["client_id"] == 5


def test_dead_or_stopped_manager_is_not_alive(tmp_path: Path) -> None:
    a = status_path(tmp_path, "::1", 4002, 1)
    b = status_path(tmp_path, "127.0.0.1", 4002, 2)
    write_status(a, {"state": "CONNECTED", "manager_pid": 999_999_999})
    write_status(b, {"state": "IDLE", "manager_pid": os.getpid(), "stopped": True})
    assert read_status(a)["manager_alive"] is False
    assert read_status(b)["manager_alive"] is False
    assert [s["state"] for s in read_all(tmp_path)] == ["IDLE", "CONNECTED"]


def test_missing_or_damaged_reads_as_none(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope.json") is None
    bad = tmp_path / "status-x-1-1.json"
    bad.write_text("{not json")
    assert read_status(bad) is None
    assert read_all(tmp_path) == []
