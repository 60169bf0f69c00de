"""`ibgw status` and `ibgw doctor` over a state directory someone else has been writing into.

Status snapshots and lock files come from outside the process reading them: a FIFO must not hang
the reader, nested JSON or a pid beyond any pid must not crash it, and a field holding terminal
escape sequences must reach the screen escaped (issue 11, items 3 and 7). Each command runs as a
user runs it, in a subprocess with a deadline, so a hang fails the test instead of stalling it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.cli import ibgw

ESC = "\x1b"
TITLE = "\x1b]0;owned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen


@pytest.fixture
def state(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return d


def write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def hostile_snapshot(state: Path) -> None:
    write(
        state / "status-127.0.0.1-4002-7.json",
        json.dumps(
            {
                "state": f"CONNECTED{CLEAR}",
                "reason": f"{ESC}[31mred",
                "host": f"{TITLE}gw",
                "port": 4002,
                "client_id": 7,
                "manager_pid": 1,
                "manager_create_time": 0.0,
                "last_error": f"server said {TITLE}",
                "counters": {"sessions": f"{CLEAR}1"},
                "maintenance_window": f"{ESC}[31mreset",
                "expected": True,
                "stopped": False,
            }
        ),
    )


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "rich"])
def test_status_prints_escape_sequences_escaped(state: Path, terminal: bool) -> None:
    hostile_snapshot(state)
    proc = ibgw("status", state_dir=state, terminal=terminal)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a dead manager: not healthy
    for raw in (TITLE, CLEAR, f"{ESC}[31mred", f"{ESC}[31mreset"):
        assert raw not in proc.stdout
    assert "\\x1b]0;owned\\x07gw" in proc.stdout  # shown, escaped
    assert "inside \\x1b[31mreset; the last state change was expected" in proc.stdout
    assert "\\x1b[2J" in proc.stdout
    if not terminal:
        assert ESC not in proc.stdout


@pytest.mark.parametrize("terminal", [False, True], ids=["plain", "rich"])
def test_doctor_prints_escape_sequences_escaped(state: Path, terminal: bool) -> None:
    hostile_snapshot(state)
    write(state / f"ibgw-{CLEAR}.lock", "{}")
    proc = ibgw("doctor", "--port", "1", state_dir=state, terminal=terminal)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert TITLE not in proc.stdout and CLEAR not in proc.stdout
    assert "\\x1b[2J" in proc.stdout
    if not terminal:
        assert ESC not in proc.stdout


def test_a_fifo_for_a_status_or_lock_file_hangs_nothing(state: Path) -> None:
    os.mkfifo(state / "status-127.0.0.1-4002-1.json", 0o600)
    os.mkfifo(state / "ibgw-127.0.0.1-4002-1.lock", 0o600)
    proc = ibgw("status", "--json", state_dir=state)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (snap,) = json.loads(proc.stdout)["managers"]
    assert snap["state"] == "unknown" and "not a regular file" in snap["warning"]

    proc = ibgw("doctor", "--json", "--port", "1", state_dir=state)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    (lock,) = report["locks"]
    assert "not a regular file" in lock["problem"]
    text = ibgw("doctor", "--port", "1", state_dir=state).stdout
    assert "lock ibgw-127.0.0.1-4002-1.lock: unreadable, ignored" in text
    assert "status snapshot status-127.0.0.1-4002-1.json: unreadable, ignored" in text


def test_a_link_to_dev_zero_is_not_read(state: Path) -> None:
    (state / "status-127.0.0.1-4002-1.json").symlink_to("/dev/zero")
    (state / "ibgw-127.0.0.1-4002-1.lock").symlink_to("/dev/zero")
    proc = ibgw("status", "--json", state_dir=state)
    (snap,) = json.loads(proc.stdout)["managers"]
    assert snap["state"] == "unknown" and "symbolic link" in snap["warning"]
    proc = ibgw("doctor", "--json", "--port", "1", state_dir=state)
    (lock,) = json.loads(proc.stdout)["locks"]
    assert "symbolic link" in lock["problem"]


@pytest.mark.parametrize(
    "content",
    [
        "[" * 100_000,  # nested deeper than any parser's recursion
        json.dumps({"state": "CONNECTED", "manager_pid": 10**30, "manager_create_time": 1.0}),
        json.dumps({"manager_pid": 10**30, "host": "h", "port": 4002, "client_id": 1}),
        "\x00" * 100,
    ],
    ids=["nested", "huge-pid-snapshot", "huge-pid-lock", "nul"],
)
def test_damaged_files_are_unknown_never_a_crash(state: Path, content: str) -> None:
    write(state / "status-127.0.0.1-4002-1.json", content)
    write(state / "ibgw-127.0.0.1-4002-1.lock", content)
    for args in (
        ("status",),
        ("status", "--json"),
        ("doctor", "--port", "1"),
        ("doctor", "--json", "--port", "1"),
    ):
        proc = ibgw(*args, state_dir=state)
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)  # never 70
        assert "Traceback" not in proc.stderr, proc.stderr
    snap = json.loads(ibgw("status", "--json", state_dir=state).stdout)["managers"][0]
    assert snap["manager_alive"] is False  # whatever it says, no dead manager looks alive


def test_a_state_dir_writable_by_others_is_refused_in_one_line(state: Path) -> None:
    state.chmod(0o777)
    for command in ("status", "doctor"):
        proc = ibgw(command, state_dir=state)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        (line,) = proc.stderr.strip().splitlines()
        assert "writable by group or others" in line
