"""`ibgw demo --plain` end to end: the real CLI, a real manager, real workers, the simulator.

The demo's own exit status already says whether every step ended as scripted; the test also
reads the output, so a demo that quietly stops telling the story fails too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

STEPS = (
    "connect",
    "Gateway API goes RED",
    "operator restart",
    "worker crash",
    "stale worker holding the client id",
    "nightly 1100 -> 1102",
    "clean shutdown",
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_demo_plain_plays_every_step_with_no_disconnect_and_one_client_id(backend: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "IBGW_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "fsm.cli", "demo", "--plain", "--backend", backend],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for n, title in enumerate(STEPS, 1):
        assert f"== step {n}/7 {title}: ok" in out, title
    # each fault shows up in the manager's own history, with its reason
    for reason in ("probe_failed", "peer_closed", "worker_exited", "client_id_in_use", "connectivity_lost"):
        assert re.search(rf"--> DEGRADED_RED\s+\({reason}\)", out), reason
    assert "notice zombie_reaped" in out
    assert "gateway: 326" in out
    assert "gateway: hello_ignored" in out  # the RED Gateway really left a handshake hanging
    assert "disconnects issued: 0 " in out
    assert "client ids used: exactly one (17)" in out
    assert "(min_session 1 s: no fast close)" in out
    assert "verdict: every step ended as scripted" in out
    wall = float(re.search(r"wall time: ([0-9.]+) s", out).group(1))  # type: ignore[union-attr]
    assert wall < 60
    # the timeline table has every transition, both managers
    assert re.search(r"#1\s+IDLE\s+start\s+SPAWNING", out)
    assert re.search(r"#2\s+CONNECTED\s+shutdown\s+IDLE", out)


def test_a_step_that_misses_its_deadline_fails_the_demo_and_leaves_nothing_behind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit status 0 means every step ended as scripted: a missed deadline is exit 1, the rest
    of the day is skipped, and the manager still shuts down (no worker left running)."""
    import psutil

    from fsm.cli.demo import Deadlines, run_demo

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    # no probe can notice a RED Gateway that fast
    assert run_demo(plain=True, deadlines=Deadlines(detect=0.05)) == 1
    out = capsys.readouterr().out
    assert "== step 1/7 connect: ok" in out
    assert "== step 2/7 Gateway API goes RED: FAILED" in out
    assert re.search(r"7\. clean shutdown\s+skipped", out)
    assert "verdict: FAILED" in out
    assert re.search(r"#1\s+\S+\s+shutdown\s+IDLE", out)  # shut down all the same

    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and running(p)]
    assert left == []
