"""The `ibgw` command's contract with its users: one-line errors naming the culprit, exit 2.

Most cases call `fsm.cli.main` in-process (fast); one runs the real console entry as a
subprocess to prove the same holds outside pytest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fsm import cli


def _run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    code = exc.value.code
    return (code if isinstance(code, int) else 1), out, err


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No IBKR_* from the developer's shell; a private state dir."""
    for name in list(os.environ):
        if name.startswith("IBKR_") or name == "IBGW_STATE_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("IBGW_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


BAD_FLAGS = [
    (["run", "--port", "abc"], "--port"),
    (["run", "--port", "0"], "--port"),
    (["run", "--port", "70000"], "--port"),
    (["run", "--client-id", "-1"], "--client-id"),
    (["run", "--client-id", "x"], "--client-id"),
    (["run", "--timeout", "10"], "--timeout"),
    (["run", "--timeout", "soon"], "--timeout"),
    (["run", "--bogus"], "--bogus"),
    (["doctor", "--port", "0"], "--port"),
    (["doctor", "--port", "abc"], "--port"),
    (["status", "--port", "abc"], "--port"),
    (["demo", "--backend", "curio"], "--backend"),
    (["demo", "--pace", "nan"], "--pace"),
    (["demo", "--pace", "-1"], "--pace"),
    (["sim", "--port", "-5"], "--port"),
    (["sim", "--host", "0.0.0.0", "--port", "0"], "--host"),
    (["sim", "--fault", "bogus"], "--fault"),
    (["sim", "--fault", "handshake_delay=soon"], "--fault"),
    (["nosuchcommand"], "nosuchcommand"),
]


@pytest.mark.parametrize(("argv", "culprit"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_line_naming_it_and_exit_2(
    argv: list[str], culprit: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _run_main(argv, capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert culprit in lines[0], lines[0]
    assert "Traceback" not in err and out == ""


BAD_ENV = [
    ("IBKR_PORT", "abc"),
    ("IBKR_PORT", "0"),
    ("IBKR_CLIENT_ID", "-3"),
    ("IBKR_CLIENT_ID", "one"),
    ("IBKR_TIMEOUT", "15"),
    ("IBKR_TIMEOUT", "fast"),
    ("IBKR_READONLY", "perhaps"),
    ("IBKR_TIMEOUT", "nan"),
    ("IBGW_MAINTENANCE", "daily 25:00-26:00 UTC"),
]


# The variables each command reads: a bad value in one of them is the command's error.
READS = {
    "run": {
        "IBKR_HOST",
        "IBKR_PORT",
        "IBKR_CLIENT_ID",
        "IBKR_TIMEOUT",
        "IBKR_READONLY",
        "IBGW_STATE_DIR",
        "IBGW_MAINTENANCE",
    },
    "doctor": {"IBKR_PORT", "IBGW_STATE_DIR"},
    "status": {"IBGW_STATE_DIR"},
}
READ_CASES = [(cmd, var, value) for cmd in READS for var, value in BAD_ENV if var in READS[cmd]]
UNREAD_CASES = [(cmd, var, value) for cmd in READS for var, value in BAD_ENV if var not in READS[cmd]]


@pytest.mark.parametrize(
    ("command", "var", "value"), READ_CASES, ids=[f"{c}-{k}={v[:20]}" for c, k, v in READ_CASES]
)
def test_bad_env_value_is_one_line_naming_the_variable_and_exit_2(
    var: str,
    value: str,
    command: str,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(var, value)
    code, out, err = _run_main([command], capsys)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert var in lines[0], lines[0]


@pytest.mark.parametrize(
    ("command", "var", "value"), UNREAD_CASES, ids=[f"{c}-{k}={v[:20]}" for c, k, v in UNREAD_CASES]
)
def test_a_bad_variable_the_command_does_not_read_is_no_error(
    var: str,
    value: str,
    command: str,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`IBKR_CLIENT_ID=x ibgw status` shows the status: status reads no client id."""
    monkeypatch.setenv(var, value)
    code, out, err = _run_main([command, "--json"], capsys)
    assert code != 2 and err == "", err
    assert json.loads(out)  # it ran and reported


def test_a_flag_replaces_a_bad_env_value_instead_of_failing(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`IBKR_PORT=junk ibgw doctor --port N` inspects N: the flag wins, the variable is unused."""
    monkeypatch.setenv("IBKR_PORT", "junk")
    code, out, err = _run_main(["doctor", "--json", "--port", "1"], capsys)
    assert code in (0, 1), err
    assert json.loads(out)["port"] == 1


def test_bad_flag_through_the_real_console_entry(clean_env: Path) -> None:
    env = dict(os.environ, IBKR_TIMEOUT="12")
    proc = subprocess.run(
        [sys.executable, "-m", "fsm.cli", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "IBKR_TIMEOUT" in proc.stderr


# Values that once got past the checks and ended in exit 70 with a traceback (issue 11, item 7).
# Run as a user runs them, in a subprocess: should one get past the checks again, the test sees
# the manager fail (or, bounded by the timeout, run) instead of hanging the test process.
HOSTILE_ENV = [
    ("run", "IBKR_TIMEOUT", "1e308"),  # finite, but no deadline can be that far
    ("run", "IBKR_HOST", "a" * 235),  # no such host: a DNS label is at most 63 characters
    ("run", "IBGW_STATE_DIR", "/etc/passwd"),  # a file, not a directory
    ("status", "IBGW_STATE_DIR", "/etc/passwd"),
    ("doctor", "IBGW_STATE_DIR", "/etc/passwd"),
]


@pytest.mark.parametrize(
    ("command", "var", "value"), HOSTILE_ENV, ids=[f"{c}-{k}={v[:12]}" for c, k, v in HOSTILE_ENV]
)
def test_hostile_env_value_is_one_line_and_exit_2_never_a_traceback(
    command: str, var: str, value: str, clean_env: Path
) -> None:
    env = dict(os.environ, **{var: value})
    proc = subprocess.run(
        [sys.executable, "-m", "fsm.cli", command, "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert value[:40] in line or var in line, line


def test_help_lists_every_command_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_main(["--help"], capsys)
    assert code == 0
    for name in ("demo", "run", "status", "doctor", "diagram", "sim"):
        assert name in out
    assert "Exit status" in out


def test_status_without_snapshots_says_so_and_exits_4(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run_main(["status"], capsys)
    assert code == 4
    assert "no manager status snapshot" in out
    code, out, _ = _run_main(["status", "--json"], capsys)
    assert code == 4
    assert json.loads(out)["managers"] == []


# ------------------------------------------------------------------------------------ diagram
def test_diagram_check_passes_on_the_repo(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run_main(["diagram", "--check"], capsys)
    assert code == 0, out


def test_diagram_check_fails_on_a_stale_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A stale file is caught; the repo itself is never touched (work on a temp copy)."""
    from fsm import diagram

    repo = Path(diagram.__file__).resolve().parents[1]
    copy = tmp_path / "repo"
    shutil.copytree(repo / "diagrams", copy / "diagrams")
    shutil.copy(repo / "README.md", copy / "README.md")
    target = copy / "diagrams" / "connection.mmd"
    target.write_text(target.read_text() + "\n%% hand edit\n")
    code, out, _ = _run_main(["diagram", "--check", "--root", str(copy)], capsys)
    assert code == 1
    assert "connection.mmd" in out
    # regenerating the copy makes it fresh again, and only the copy was written
    code, out, _ = _run_main(["diagram", "--root", str(copy)], capsys)
    assert code == 0 and str(copy) in out and str(repo) + "/" not in out
    code, out, _ = _run_main(["diagram", "--check", "--root", str(copy)], capsys)
    assert code == 0, out


# ---------------------------------------------------------------------------------------- sim
def test_sim_serves_from_a_shell_and_stops_on_sigterm(clean_env: Path) -> None:
    """`ibgw sim` is `python -m gatewaysim`: it prints where it listens and stops cleanly."""
    import queue
    import signal
    import threading

    proc = subprocess.Popen(
        [sys.executable, "-m", "fsm.cli", "sim", "--port", "0", "--fault", "silent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    threading.Thread(
        target=lambda: [lines.put(x) for x in iter(proc.stdout.readline, "")], daemon=True
    ).start()
    try:
        seen = ""
        while "listening" not in seen:
            seen += lines.get(timeout=30)  # the simulator is up once it says where it listens
        assert "127.0.0.1:" in seen
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        while not lines.empty() or "stopped" not in seen:
            seen += lines.get(timeout=10)
        assert "RED" in seen and "gatewaysim stopped" in seen
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
