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
    "worker crash with an order in flight",
    "order send lost",
    "nightly 1100 -> 1101, 1100 -> 1102",
    "stale worker holding the client id",
    "clean shutdown",
)
N = len(STEPS)
QUOTE = r"bid [0-9.]+  ask [0-9.]+  last [0-9.]+"


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
        assert f"== step {n}/{N} {title}: ok" in out, title
    # each fault shows up in the manager's own history, with its reason
    for reason in ("probe_failed", "peer_closed", "worker_exited", "client_id_in_use", "connectivity_lost"):
        assert re.search(rf"--> DEGRADED_RED\s+\({reason}\)", out), reason
    assert "notice zombie_reaped" in out
    assert "gateway: 326" in out
    assert "gateway: hello_ignored" in out  # the RED Gateway really left a handshake hanging
    assert "notice data_lost 1101" in out
    assert "gateway: market_data_lost 1 subscription(s) dropped" in out
    assert "disconnects issued: 0 " in out
    assert "client ids used: exactly one (17)" in out
    assert "(min_session 1 s: no fast close)" in out
    assert "verdict: every step ended as scripted" in out
    assert re.search(r"wall time: [0-9.]+ s", out)
    # the timeline table has every transition, both managers
    assert re.search(r"#1\s+IDLE\s+start\s+SPAWNING", out)
    assert re.search(r"#2\s+CONNECTED\s+shutdown\s+IDLE", out)
    _quote_stream_lived_through_every_break(out)
    _orders_had_one_true_outcome_each(out)


def _quote_stream_lived_through_every_break(out: str) -> None:
    """One Gap for each break the stream lived through, each followed at once by prices again;
    the manager re-subscribed after each new session and after 1101, not after 1102."""
    lines = [ln for ln in out.splitlines() if "   quotes AAPL: " in ln]
    assert re.search(rf"quotes AAPL: {QUOTE}$", lines[0])  # the glance before the order
    assert re.search(rf"quotes AAPL: first quote {QUOTE}$", lines[1])
    gaps = [i for i, ln in enumerate(lines) if "quotes AAPL: Gap " in ln]
    reasons = [re.search(r"Gap [0-9.]+ s \((\w+)\)", lines[i]).group(1) for i in gaps]  # type: ignore[union-attr]
    assert reasons == ["worker_exited", "peer_closed", "connectivity_lost", "connectivity_lost"]
    for i in gaps:
        assert re.search(rf"quotes AAPL: prices again {QUOTE}$", lines[i + 1]), lines[i : i + 2]
    assert re.search(
        r"quotes AAPL: stream left after \d+ quotes; m.metrics\(\): streams_restored 3, stream_gaps 4",
        lines[-1],
    )
    summary = (
        r"quote stream AAPL: \d+ quotes \(none repeated or out of order\), 4 Gaps "
        r"\(worker_exited, peer_closed, connectivity_lost, connectivity_lost\), each followed by prices again"
    )
    assert re.search(summary, out)
    assert re.search(r"streams restored: 3 \(re-subscribed by the manager\); longest gap: [0-9.]+ s", out)
    assert "after 1101 the stream was re-subscribed, after 1102 nothing was re-sent" in out


def _orders_had_one_true_outcome_each(out: str) -> None:
    """The order sent as the worker died is the live one, the lost send is OrderNotPlaced (and
    its retry placed once), and the fill made during the outage is delivered exactly once, to
    the first trader only, not again after two crashes and a restart of the trader."""
    assert "readonly=False" in out.splitlines()[0]
    assert "readonly is the default, and the demo turns it off against the simulator" in out
    assert re.search(r"place_order 'demo-rest' -> Submitted .*: placed$", out, re.M)
    assert re.search(r"gateway: fill client id 17 order \d+ 'demo-rest': BOT 10 AAPL", out)
    crash = out.index("SIGKILL our worker pid")
    assert re.search(
        r"place_order 'demo-crash' -> Submitted .*: placed, resolved after a crash$", out[crash:], re.M
    )
    assert re.search(r"gateway: order client id 17 order \d+ 'demo-lost': discarded with its session", out)
    assert re.search(r"place_order 'demo-lost' -> OrderNotPlaced: ", out)
    assert re.search(r"place_order 'demo-lost' -> Submitted .*: placed$", out, re.M)
    assert "one at the broker, sent once" in out
    assert len(re.findall(r"fill delivered to trader #\d", out)) == 1
    assert re.search(r"fill delivered to trader #1: BOT 10 AAPL @ [0-9.]+ \('demo-rest'", out)
    assert re.search(r"order_status 'demo-rest' -> Filled 10/10", out)
    assert re.search(r"order_status 'demo-crash' -> Submitted 0/10", out)
    assert (
        "orders (readonly=False, against the simulator): 3 placed, 1 resolved after a crash, 1 not placed"
        in out
    )
    assert "fills: 1 delivered, 1 recovered after the outage, delivered twice: 0" in out


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
    assert f"== step 1/{N} connect: ok" in out
    assert f"== step 2/{N} Gateway API goes RED: FAILED" in out
    assert re.search(rf"{N}\. clean shutdown\s+skipped", out)
    assert "verdict: FAILED" in out
    assert re.search(r"#1\s+\S+\s+shutdown\s+IDLE", out)  # shut down all the same

    def running(p: psutil.Process) -> bool:
        try:
            return p.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and running(p)]
    assert left == []
