"""Random short sequences of faults against one manager, with the fault matrix's invariants.

Real processes are slow, so only a few examples per backend, no shrinking (a failing sequence is
printed by Hypothesis as it was found) and no example database.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from support.manager import (
    FAST_CLOSE_WINDOW,
    assert_clean_exit,
    assert_session_invariants,
    await_recovery,
    fast_settings,
    poll_until,
    session_older_than_window,
)

from fsm.core import State
from fsm.manager import ConnectionManager
from gatewaysim import Faults, GatewaySim

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("report_recoveries")]

CID = 11
FAULTS = ["sigkill", "sigstop", "drop_all", "down_for", "lost_1102", "lost_1101", "id_hold", "farm_flap"]


async def inject(fault: str, m: ConnectionManager, sim: GatewaySim) -> None:
    """Apply one fault to a session that is older than the fast-close window."""
    pid = m.worker_pid
    assert pid is not None
    if fault == "sigkill":
        os.kill(pid, signal.SIGKILL)
    elif fault == "sigstop":
        os.kill(pid, signal.SIGSTOP)
    elif fault == "drop_all":
        sim.drop_all()
    elif fault == "down_for":
        sim.down_for(0.5)
    elif fault in ("lost_1102", "lost_1101"):
        sim.connectivity_lost()
        await m.wait_for(State.DEGRADED_RED, 5)
        sim.connectivity_restored(fault == "lost_1101")
    elif fault == "id_hold":
        sim.client_id_hold(0.6)  # switched off again once recovered
        os.kill(pid, signal.SIGKILL)
    elif fault == "farm_flap":
        sim.farm_flap()
    else:  # pragma: no cover
        raise AssertionError(fault)


@settings(
    max_examples=3,
    deadline=None,
    database=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(faults=st.lists(st.sampled_from(FAULTS), min_size=2, max_size=3))
async def test_random_fault_sequences_always_recover(anyio_backend: str, faults: list[str]) -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        async with GatewaySim(faults=Faults(red_on_fast_close=FAST_CLOSE_WINDOW)) as sim:
            async with ConnectionManager(fast_settings(Path(state_dir), sim.port, CID)) as m:
                for fault in faults:
                    await session_older_than_window(m)
                    spawned = m.metrics()["workers_spawned"]
                    t0 = time.monotonic_ns()
                    await inject(fault, m, sim)
                    if fault in ("lost_1102", "lost_1101", "farm_flap"):
                        await m.wait_connected(10)  # the session is kept: no new worker
                        assert m.metrics()["workers_spawned"] == spawned
                    else:
                        await poll_until(
                            lambda: m.metrics()["workers_spawned"] > spawned,
                            20,
                            f"a new worker after {fault}",
                        )
                        await await_recovery(
                            m, f"{anyio_backend} {'+'.join(faults)}", f"random: {fault} -> CONNECTED", t0
                        )
                        sim.client_id_hold(None)
                await assert_session_invariants(m, sim, CID)
                assert m.metrics()["sessions"] == 1 + sum(
                    f not in ("lost_1102", "lost_1101", "farm_flap") for f in faults
                )
            await assert_clean_exit(m, sim)
