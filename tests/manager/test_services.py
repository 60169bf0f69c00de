"""Session services (fsm.services): the hooks a feature gets, driven by a real worker, ib_async and
the simulator through a session, a 1100 -> 1101, a worker SIGKILL and its respawn; and the
registry's own rules (routing table, a failing hook, a failing open)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import anyio.abc
import pytest
from support.manager import assert_clean_exit, fast_settings, poll_until, session_older_than_window

from fsm.core import Reason, State
from fsm.errors import IbgwError, NotConnected, SessionLost
from fsm.manager import ConnectionManager
from fsm.services import Service, Services, Session
from gatewaysim import GatewaySim
from worker import protocol as wp

pytestmark = pytest.mark.anyio

CID = 7
# Quotes flow in regular trading hours: the simulator's wall clock runs from a Wednesday morning.
PINNED = dt.datetime(2026, 11, 25, 11, 0, tzinfo=ZoneInfo("US/Eastern")).timestamp()


class Recorder(Service):
    """Records every hook call in order; keeps the sessions it was handed."""

    events = frozenset({"quote"})

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.sessions: list[Session] = []
        self.quotes: list[tuple[int, int]] = []  # (generation, sub)

    def open(self, address: str) -> None:
        self.calls.append(("open", address))

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        self.calls.append(("run",))

    def on_session_up(self, session: Session) -> None:
        self.sessions.append(session)
        self.calls.append(("up", session.generation, session.new))

    def on_event(self, generation: int, event: wp.Event) -> None:
        assert event.event == "quote"
        self.quotes.append((generation, event.data["sub"]))

    def on_data_lost(self) -> None:
        self.calls.append(("data_lost",))

    def on_session_down(self, reason: Reason | None) -> None:
        self.calls.append(("down", reason))

    def close(self) -> None:
        self.calls.append(("close",))

    def hooks(self) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] not in ("open", "run")]


async def quotes_flow(rec: Recorder, session: Session) -> None:
    """Subscribe through the session handle; its quotes reach on_event with its generation."""
    r = await session.request("subscribe", stream="quotes", symbol="AAPL")
    sub = r["sub"]
    await poll_until(lambda: (session.generation, sub) in rec.quotes, 10, "a quote routed to the service")


async def test_hooks_through_session_1101_sigkill_and_respawn(tmp_path: Path) -> None:
    t0 = time.monotonic()
    rec = Recorder()
    async with GatewaySim(wall=lambda: PINNED + time.monotonic() - t0, tick_rate=20.0) as sim:
        m = ConnectionManager(fast_settings(tmp_path, sim.port, CID))
        m.services.add(rec)
        async with m:
            assert rec.calls[:2] == [("open", m.addresses[0]), ("run",)]
            await session_older_than_window(m)
            first = rec.sessions[0]
            assert rec.hooks() == [("up", first.generation, True)]
            assert first.handshake["client_id"] == CID
            await quotes_flow(rec, first)

            sim.connectivity_lost()  # 1100: the session stays, but is down
            await m.wait_for(State.DEGRADED_RED, 5)
            assert rec.hooks()[-1] == ("down", Reason.connectivity_lost)
            with pytest.raises(NotConnected) as down:
                await first.request("positions")
            assert not isinstance(down.value, SessionLost)

            sim.connectivity_restored(data_lost=True)  # 1101: the same session, data lost
            await m.wait_connected(5)
            await poll_until(lambda: rec.hooks()[-1] == ("data_lost",), 5, "on_data_lost")
            assert rec.hooks()[-3:] == [
                ("down", Reason.connectivity_lost),
                ("up", first.generation, False),
                ("data_lost",),
            ]
            assert rec.sessions[-1].generation == first.generation
            await quotes_flow(rec, rec.sessions[-1])  # re-requested in the same session

            old = m.worker_pid
            assert old is not None
            os.kill(old, signal.SIGKILL)
            await poll_until(lambda: len(rec.sessions) == 3, 20, "the respawned worker's session")
            second = rec.sessions[-1]
            assert rec.hooks()[-2:] == [("down", Reason.worker_exited), ("up", second.generation, True)]
            assert second.generation > first.generation and m.worker_pid != old
            with pytest.raises(SessionLost):
                await first.request("positions")  # that session is gone for good
            assert (await second.request("positions"))["positions"] is not None
            await quotes_flow(rec, second)
        await assert_clean_exit(m, sim)
    ups = [c for c in rec.hooks() if c[0] == "up"]
    downs = [c for c in rec.hooks() if c[0] == "down"]
    assert len(ups) == len(downs) == 3 and downs[-1] == ("down", Reason.shutdown)
    assert rec.calls[-1] == ("close",)
    with pytest.raises(NotConnected):
        await second.request("positions")


async def test_a_failing_hook_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(Service):
        events = frozenset({"quote", "bar"})

        def on_data_lost(self) -> None:
            raise RuntimeError("boom")

        def on_event(self, generation: int, event: wp.Event) -> None:
            raise RuntimeError("boom")

    services = Services()
    rec = Recorder()
    services.add(Broken())
    services.add(rec)
    services.data_lost()
    services.event(3, wp.Event(event="quote", data={"sub": 1}))
    services.event(3, wp.Event(event="bar", data={"sub": 1}))  # routed to Broken only
    assert rec.calls == [("data_lost",)] and rec.quotes == [(3, 1)]
    assert services.routes("quote") and services.routes("bar") and not services.routes("trade")
    assert sum("service hook" in r.getMessage() for r in caplog.records) == 3


class Refuses(Service):
    def open(self, address: str) -> None:
        raise IbgwError("the journal is damaged")


async def test_a_service_that_refuses_to_open_stops_the_start(tmp_path: Path) -> None:
    rec = Recorder()
    m = ConnectionManager(fast_settings(tmp_path, 1, CID))
    m.services.add(Refuses())
    m.services.add(rec)
    with pytest.raises(IbgwError, match="journal is damaged"):
        async with m:
            pytest.fail("the manager started")
    assert m.worker_pid is None and m.state == State.IDLE
    assert rec.calls == [("close",)]
