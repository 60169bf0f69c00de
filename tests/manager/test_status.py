"""Status snapshots and the state dir: atomic writes, nothing trusted that is not provably ours,
a dead manager never taken for a live one (pid *and* start time)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import anyio
import pytest
from support.manager import poll_until
from support.orders import limit, on_sim_order, trading

from fsm.core import State
from fsm.errors import OrderInDoubt, UnsafeStateDir
from fsm.lockfile import lock_path
from fsm.pids import process_id
from fsm.reports import Reports
from fsm.settings import Settings
from fsm.statedir import MAX_STATE_FILE_BYTES, ensure_state_dir
from fsm.statefiles import StateFiles
from fsm.status import UNKNOWN, read_all, read_status, snapshot, status_path, write_status


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    ensure_state_dir(d)
    return d


def mine(state: str = "CONNECTED", **extra: object) -> dict[str, object]:
    me = process_id()
    assert me is not None
    snap = snapshot(
        Settings(host="localhost", port=4002, client_id=5),
        metrics={"state": state, "reason": None, "sessions": 1, "time_in_state_ns": {"IDLE": 2_000_000}},
        since=1.0,
        address="127.0.0.1",
        manager=me,
        farms={2104: "ok"},
        last_error=None,
        stopped=False,
    )
    snap.update(extra)
    return snap


def test_write_then_read_roundtrip_leaves_no_temp_files(state_dir: Path) -> None:
    path = status_path(state_dir, "127.0.0.1", 4002, 5)
    assert path.name == "status-127.0.0.1-4002-5.json"
    write_status(path, mine())
    write_status(path, mine("DEGRADED_RED"))
    got = read_status(path)
    assert got is not None
    assert got["state"] == "DEGRADED_RED" and got["manager_alive"] is True
    assert got["counters"] == {"sessions": 1, "time_in_IDLE_s": 0.002}
    assert got["farms"] == {"2104": "ok"} and isinstance(got["updated_at"], float)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["client_id"] == 5


def test_dead_stopped_or_reused_pid_manager_is_not_alive(state_dir: Path) -> None:
    me = process_id()
    assert me is not None
    cases = {
        "dead": mine(manager_pid=999_999_999),
        "stopped": mine(stopped=True),
        # pid reuse: our pid, but the snapshot's manager started at another time
        "reused": mine(manager_create_time=me.create_time - 100),
        "no_start_time": mine(manager_create_time=None),
    }
    for name, snap in cases.items():
        write_status(status_path(state_dir, name, 4002, 1), snap)
    got = {Path(s["path"]).name.split("-")[1]: s for s in read_all(state_dir)}
    assert {k: v["manager_alive"] for k, v in got.items()} == dict.fromkeys(cases, False)


@pytest.mark.parametrize(
    "content",
    [
        b"{not json",
        b"[" * 200_000 + b"]" * 200_000,
        b'{"state": "CONNECTED", "manager_pid": 1' + b"0" * 500 + b', "manager_create_time": 1.0}',
        b'{"state": ' + b"1" * 40 + b"}",
        b'{"state": "CONNECTED", "pad": "' + b"x" * MAX_STATE_FILE_BYTES + b'"}',
    ],
    ids=["garbage", "nested", "huge_pid", "state_not_text", "oversized"],
)
def test_damaged_snapshots_read_as_unknown_with_a_warning(state_dir: Path, content: bytes) -> None:
    path = status_path(state_dir, "h", 1, 1)
    path.write_bytes(content)
    snap = read_status(path)
    assert snap is not None
    if snap["state"] != UNKNOWN:  # a huge pid is a valid number: it just names no live manager
        assert snap["manager_alive"] is False
    else:
        assert "\n" not in snap["warning"] and snap["manager_alive"] is False


def test_a_fifo_or_a_link_to_dev_zero_never_hangs_the_reader(state_dir: Path, tmp_path: Path) -> None:
    os.mkfifo(status_path(state_dir, "fifo", 1, 1))
    status_path(state_dir, "zero", 1, 1).symlink_to("/dev/zero")
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_STATE_FILE_BYTES * 4))
    status_path(state_dir, "link", 1, 1).symlink_to(big)
    # in a child process, so that a regression fails by timeout instead of hanging the suite
    code = (
        "import sys; from fsm.status import read_all\n"
        "for s in read_all(sys.argv[1]): print(s['state'], s.get('warning'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(state_dir)], capture_output=True, timeout=20)
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.decode().splitlines())
    assert len(lines) == 3 and all(line.startswith(UNKNOWN) for line in lines), lines
    assert "not a regular file" in lines[0] and "symbolic link" in lines[1] and "symbolic link" in lines[2]


def test_missing_dir_or_file_reads_as_nothing(tmp_path: Path) -> None:
    assert read_status(tmp_path / "nope.json") is None
    assert read_all(tmp_path / "absent") == []


def test_state_dir_is_created_private(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    assert ensure_state_dir(d)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("what", ["symlink", "file", "other_writable", "other_owner"])
def test_a_state_dir_not_ours_is_refused(tmp_path: Path, what: str) -> None:
    d = tmp_path / "state"
    if what == "symlink":
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        d.symlink_to(real)
    elif what == "file":
        d.write_text("root:x:0:0::/root:/bin/sh\n")  # IBGW_STATE_DIR=/etc/passwd
    else:
        d.mkdir(mode=0o700)
        if what == "other_writable":
            d.chmod(0o777)
        else:
            os.chown(d, 65534, 65534)
    expected = {
        "symlink": "symbolic link",
        "file": "not a directory",
        "other_writable": "writable by group or others",
        "other_owner": "owned by uid 65534",
    }[what]
    with pytest.raises(UnsafeStateDir, match=expected):
        ensure_state_dir(d)
    if what != "other_owner":  # root may read a user's dir (sudo ibgw doctor), never write it
        with pytest.raises(UnsafeStateDir, match=expected):
            read_all(d)


def test_state_files_write_the_latest_snapshot_and_the_last_one_at_close(state_dir: Path) -> None:
    s = Settings(host="127.0.0.1", port=4002, client_id=5, state_dir=state_dir)
    files = StateFiles(s, ("127.0.0.1",))
    path = status_path(state_dir, "127.0.0.1", 4002, 5)
    files.open()
    for i in range(200):  # handed over faster than written: the writer keeps only the newest
        files.write_status(mine(sessions=i))
    files.write_status(mine("IDLE", stopped=True))
    files.close()  # writes what it was last handed, then releases the lock
    snap = read_status(path)
    assert snap is not None and snap["state"] == "IDLE" and snap["stopped"] is True
    assert not lock_path(state_dir, "127.0.0.1", 4002, 5).exists()
    files.write_status(mine("CONNECTED"))  # after close: the lock is not ours, the file is not either
    snap = read_status(path)
    assert snap is not None and snap["state"] == "IDLE"
    assert [p.name for p in state_dir.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.anyio
async def test_the_snapshot_shows_a_reconciliation_without_waiting_for_a_transition(tmp_path: Path) -> None:
    """An order in doubt is resolved by the reconciliation that follows the new session's
    CONNECTED: the snapshot written at that transition still counts it in doubt; the service's
    report_changed() rewrites it with no further transition. The stream figures are there too."""
    async with trading(tmp_path) as (sim, m):
        sim.drop_on_place("before_ack")
        on_sim_order(sim, "snap-1", lambda: sim.down_for(3.0))
        with pytest.raises(OrderInDoubt):
            await m.place_order(**limit("snap-1"), timeout=1.0)
        await poll_until(lambda: m.metrics()["orders_resolved"] == 1, 30, "the reconciliation")
        last = m.history[-1]
        assert last.dest == State.CONNECTED
        path = status_path(m.settings.state_dir, m.addresses[0], m.settings.port, m.client_id)

        def counters() -> dict[str, object]:
            snap = read_status(path)
            assert snap is not None
            return dict(snap["counters"])

        want = {k: m.metrics()[k] for k in ("orders_in_doubt", "orders_resolved", "reconciliations")}
        assert want["orders_in_doubt"] == 0
        await poll_until(lambda: {k: counters().get(k) for k in want} == want, 5, "the snapshot rewritten")
        assert m.history[-1] == last  # no transition wrote it
        c = counters()
        for k in ("fills_recovered", "streams_open", "stream_gaps", "streams_restored", "longest_gap_s"):
            assert c[k] == m.metrics()[k]


@pytest.mark.anyio
async def test_a_burst_of_changes_builds_one_snapshot_after_it() -> None:
    """status() inside a burst (a respawn asks ~4 times in a millisecond) only marks the snapshot
    due: one snapshot of the end state is built once the burst yields, so building it never
    delays the action the core chose; the last words at close are written at once."""
    built: list[dict[str, object]] = []

    class Files:
        def write_status(self, snap: dict[str, object]) -> None:
            built.append(snap)

    now = {"state": "SPAWNING"}
    reports = Reports(Settings(port=4002, client_id=5), 16, Counter(), lambda: dict(now), None)
    reports.bind(Files(), "127.0.0.1")  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        reports.run(tg)
        for state in ("SPAWNING", "HANDSHAKING", "CONNECTED"):
            now["state"] = state
            reports.status()
        assert built == []  # nothing built inside the burst
        await anyio.wait_all_tasks_blocked()
        assert [(b["state"], b["stopped"]) for b in built] == [("CONNECTED", False)]
        now["state"] = "IDLE"
        reports.close()
        assert [(b["state"], b["stopped"]) for b in built[1:]] == [("IDLE", True)]
        tg.cancel_scope.cancel()
