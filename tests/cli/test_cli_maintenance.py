"""Inside a maintenance window, as a user sees it: `ibgw run` prints the simulator's 1100 as an
expected state change, `ibgw status` (text and --json) and `/readyz` say the manager is inside the
window and the change was expected; outside one nothing is tagged."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from support.cli import CLIENT_ID, Run, ibgw
from support.http import http_get

from fsm import Reason, State, StateChange
from fsm.cli.changes import describe
from fsm.cli.views import print_status
from gatewaysim import ThreadedSim

WINDOW = "nightly"


def window_around_now() -> str:
    """An IBGW_MAINTENANCE spec whose window is open now: an hour either side, in UTC (a window
    that crosses midnight is one span, so this holds at any time of day)."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return f"{WINDOW}=daily {start:%H:%M}-{end:%H:%M} UTC"


def test_a_lost_connection_inside_a_window_is_expected_in_run_status_and_readyz(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(sim.port, tmp_path, "--serve", "127.0.0.1:0", env={"IBGW_MAINTENANCE": window_around_now()})
    runs.append(run)
    port = run.health_port()
    connected = run.out.wait_for(lambda line: "--> CONNECTED" in line, timeout=60)
    assert "(expected" not in connected  # a first connect is no outage: nothing to tag

    sim.connectivity_lost()  # IB's servers gone (1100), as at IB's nightly reset
    lost = run.out.wait_for(lambda line: "--> DEGRADED_RED" in line, timeout=20)
    assert lost.rstrip().endswith(
        f"CONNECTED --connectivity_lost--> DEGRADED_RED  (connectivity_lost)  (expected: {WINDOW})"
    )

    proc = ibgw("status", "--json", state_dir=tmp_path)
    assert proc.returncode == 1  # not connected, expected or not: the exit status is unchanged
    (snap,) = json.loads(proc.stdout)["managers"]
    assert (snap["state"], snap["reason"]) == ("DEGRADED_RED", "connectivity_lost")
    assert snap["maintenance_window"] == WINDOW and snap["expected"] is True
    text = ibgw("status", "--client-id", str(CLIENT_ID), state_dir=tmp_path).stdout
    assert f"maintenance      inside {WINDOW}; the last state change was expected (no alarm)" in text

    ready = anyio.run(http_get, port, "/readyz")
    assert ready.status == 503
    body = ready.json()
    assert (body["status"], body["expected"]) == ("maintenance", True)
    assert body["maintenance"]["window"] == WINDOW

    sim.connectivity_restored(data_lost=False)  # 1102: back, and still inside the window
    back = run.out.wait_for(lambda line: "DEGRADED_RED --" in line and "--> CONNECTED" in line, timeout=20)
    assert f"(expected: {WINDOW})" in back
    assert ibgw("status", state_dir=tmp_path).returncode == 0
    assert run.stop() == 0


def test_outside_a_window_the_same_loss_is_not_tagged(
    sim: ThreadedSim, tmp_path: Path, runs: list[Run]
) -> None:
    run = Run(sim.port, tmp_path)  # support.cli turns the windows off
    runs.append(run)
    run.wait_connected()
    sim.connectivity_lost()
    lost = run.out.wait_for(lambda line: "--> DEGRADED_RED" in line, timeout=20)
    assert "(connectivity_lost)" in lost and "expected" not in lost
    (snap,) = json.loads(ibgw("status", "--json", state_dir=tmp_path).stdout)["managers"]
    assert snap["maintenance_window"] is None and snap["expected"] is False
    assert "maintenance" not in ibgw("status", state_dir=tmp_path).stdout
    assert run.stop() == 0


@pytest.mark.parametrize(
    ("window", "expected", "shown"),
    [
        ("ib-reset", True, "  (expected: ib-reset)"),
        ("ib-reset", False, ""),  # inside a window, but our own cause: no tag
        ("\x1b[2Jx", True, "  (expected: \\x1b[2Jx)"),
    ],
)
def test_describe_tags_expected_changes_escaped(window: str, expected: bool, shown: str) -> None:
    change = StateChange(
        0.0, State.CONNECTED, "e", State.DEGRADED_RED, Reason.peer_closed, 0, window=window, expected=expected
    )
    assert describe(change) == f"CONNECTED --e--> DEGRADED_RED  (peer_closed){shown}"


def test_status_tells_an_open_window_from_an_unexpected_change_and_a_stopped_manager(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = {"state": "DEGRADED_RED", "maintenance_window": WINDOW, "expected": "yes", "manager_alive": True}
    print_status([snap], tmp_path)
    out = capsys.readouterr().out
    assert f" inside {WINDOW}; the last state change was not tagged expected" in out  # only True is
    print_status([dict(snap, manager_alive=False, expected=True)], tmp_path)
    out = capsys.readouterr().out
    assert f"was inside {WINDOW}; the last state change was expected" in out  # then, not now
