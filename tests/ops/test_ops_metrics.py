"""Units: the health answers as pure functions of a manager's metrics, the collector's counting
over a real core's bounded history, and address parsing for `--serve`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from fsm.core import HISTORY_LIMIT, ConnectionCore, Reason, State, Transition
from fsm.errors import ServeError
from fsm.health import DEFAULT_HOST, DEFAULT_PORT, liveness, maintenance_ends, parse_address, readiness
from fsm.maintenance import Window
from fsm.metrics import registry_for, request_counts
from fsm.settings import Settings

NOW_NS = 1_000_000_000


class CoreSource:
    """What the collector reads from a manager, taken from a real core (plus `extra` keys, for
    the hooks a manager will fill in)."""

    def __init__(self, tmp_path: Path, **extra: Any) -> None:
        self.settings = Settings(port=4002, client_id=9, state_dir=tmp_path)
        self.core = ConnectionCore(self.settings)
        self.now = NOW_NS
        self.extra = extra

    def step(self, event: str, *args: Any) -> None:
        self.now += 1_000_000
        getattr(self.core, event)(self.now, *args)

    @property
    def history(self) -> list[Transition]:
        return list(self.core.history)

    def metrics(self) -> dict[str, Any]:
        return {**self.core.metrics(self.now), **self.extra}

    def connect(self) -> None:
        self.step("start")
        self.step("worker_ready", 4242)
        self.step("handshake_ok")


def samples(source: CoreSource) -> Iterator[tuple[str, dict[str, str], float]]:
    text = generate_latest(registry_for(source)).decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            yield s.name, s.labels, s.value


def test_transition_counts_never_drop_when_the_history_rolls_over(tmp_path: Path) -> None:
    source = CoreSource(tmp_path)
    registry = registry_for(source)
    source.connect()
    losses = 0
    for _ in range(3):  # 3 x 4000 transitions: more than the history keeps
        for _ in range(2000):
            source.step("connectivity_lost")
            source.step("connectivity_restored", False)
            losses += 1
        text = generate_latest(registry).decode()
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "ibgw_transitions"]
        counts = {
            (s.labels["source"], s.labels["dest"], s.labels["reason"], s.labels["expected"]): s.value
            for s in family.samples
        }
        assert counts == {
            ("IDLE", "SPAWNING", "", "false"): 1,
            ("SPAWNING", "HANDSHAKING", "", "false"): 1,
            ("HANDSHAKING", "CONNECTED", "", "false"): 1,
            ("CONNECTED", "DEGRADED_RED", "connectivity_lost", "false"): losses,
            ("DEGRADED_RED", "CONNECTED", "connectivity_lost", "false"): losses,
        }
    assert losses * 2 > HISTORY_LIMIT == len(source.history)


def test_every_series_names_its_manager_and_state_is_one_hot(tmp_path: Path) -> None:
    source = CoreSource(tmp_path)
    source.connect()
    rows = list(samples(source))
    assert rows and all(
        {("host", "127.0.0.1"), ("port", "4002"), ("client_id", "9")} <= set(labels.items())
        for _, labels, _ in rows
    )
    state = {labels["state"]: v for name, labels, v in rows if name == "ibgw_state"}
    assert state == {s.value: float(s == State.CONNECTED) for s in State}


def test_a_loss_inside_a_maintenance_window_is_expected(tmp_path: Path) -> None:
    """The real core tags it; the metrics and /readyz carry the tag."""
    source = CoreSource(tmp_path)
    source.connect()
    window = source.settings.maintenance[0]
    source.step("maintenance", window)
    source.step("session_lost")
    rows = list(samples(source))
    (gauge,) = [v for name, _, v in rows if name == "ibgw_maintenance"]
    assert gauge == 1
    (lost,) = [
        (labels["reason"], labels["expected"], v)
        for name, labels, v in rows
        if name == "ibgw_transitions_total" and labels["dest"] == "DEGRADED_RED"
    ]
    assert lost == ("peer_closed", "true", 1)
    answer = readiness(source.metrics(), source.settings)
    assert answer.status == 503 and answer.body["status"] == "maintenance"
    assert answer.body["maintenance"]["window"] == window.name
    source.step("maintenance", None)
    (gauge,) = [v for name, _, v in samples(source) if name == "ibgw_maintenance"]
    assert gauge == 0
    assert readiness(source.metrics(), source.settings).body["status"] == "not_ready"


def test_requests_by_command_when_the_manager_counts_them() -> None:
    by_command = {"requests_by_command": {"ping": {"ok": 3}, "positions": {"ok": 1, "timed_out": 2}}}
    assert request_counts(by_command) == {
        ("ping", "ok"): 3,
        ("positions", "ok"): 1,
        ("positions", "timed_out"): 2,
    }
    totals = {"requests_ok": 4, "requests_failed": 1, "requests_timed_out": 0}
    assert request_counts(totals) == {("", "ok"): 4, ("", "failed"): 1, ("", "timed_out"): 0}


def test_ready_only_when_connected(tmp_path: Path) -> None:
    source = CoreSource(tmp_path)
    source.step("start")
    answer = readiness(source.metrics(), source.settings)
    assert answer.status == 503 and answer.body["state"] == "SPAWNING" and answer.headers == ()
    source.step("worker_ready", 4242)
    source.step("handshake_ok")
    answer = readiness(source.metrics(), source.settings)
    assert answer.status == 200 and answer.body["status"] == "ready" and answer.body["client_id"] == 9
    source.step("connectivity_lost")  # a live session waiting for IB to restore it is not ready
    answer = readiness(source.metrics(), source.settings)
    assert answer.status == 503
    assert answer.body["status"] == "not_ready" and answer.body["reason"] == Reason.connectivity_lost
    assert answer.body["expected"] is False


GATEWAY_RESTART = Window("gateway-restart", dt.time(23, 44), dt.time(23, 55), ZoneInfo("UTC"))
AT_2350 = dt.datetime(2026, 3, 4, 23, 50, tzinfo=dt.UTC).timestamp()  # inside GATEWAY_RESTART


def test_inside_a_maintenance_window_the_answer_says_so(tmp_path: Path) -> None:
    source = CoreSource(tmp_path)
    source.connect()
    source.step("maintenance", GATEWAY_RESTART)
    source.step("session_lost")
    answer = readiness(source.metrics(), [GATEWAY_RESTART], now=AT_2350 + 0.2)
    assert answer.status == 503
    assert answer.body["status"] == "maintenance" and answer.body["expected"] is True
    assert answer.body["maintenance"] == {"window": "gateway-restart", "ends": AT_2350 + 300}
    assert answer.body["reason"] == "peer_closed"
    assert answer.headers == (("retry-after", "300"),)  # 299.8 s, rounded up

    connected = CoreSource(tmp_path)
    connected.connect()
    connected.step("maintenance", GATEWAY_RESTART)
    answer = readiness(connected.metrics(), [GATEWAY_RESTART], now=AT_2350)
    assert answer.status == 200 and answer.body["status"] == "ready" and answer.body["expected"] is False
    assert answer.body["maintenance"] == {"window": "gateway-restart", "ends": AT_2350 + 300}
    assert answer.headers == ()

    outside = CoreSource(tmp_path)
    outside.step("start")
    answer = readiness(outside.metrics(), [GATEWAY_RESTART], now=AT_2350)
    assert answer.body["status"] == "not_ready" and answer.body["maintenance"] is None
    assert answer.headers == ()


def test_maintenance_ends_where_no_window_is_in_force() -> None:
    utc = ZoneInfo("UTC")
    late = Window("late", dt.time(23, 0), dt.time(1, 0), utc)  # across midnight
    early = Window("early", dt.time(0, 30), dt.time(2, 0), utc)  # overlaps it
    day = dt.datetime(2026, 3, 4, tzinfo=dt.UTC)
    hours = dt.timedelta(hours=1)
    assert maintenance_ends([late, early], (day + 23.5 * hours).timestamp()) == (day + 26 * hours).timestamp()
    assert maintenance_ends([late], (day + 23.5 * hours).timestamp()) == (day + 25 * hours).timestamp()
    now = (day + 3 * hours).timestamp()
    assert maintenance_ends([late, early], now) == now  # none in force: ended already
    halves = [
        Window("am", dt.time(0, 0), dt.time(12, 0), utc),
        Window("pm", dt.time(12, 0), dt.time(0, 0), utc),
    ]
    assert maintenance_ends(halves, now) is None  # never ends: no Retry-After


def test_alive_while_running(tmp_path: Path) -> None:
    source = CoreSource(tmp_path)
    assert liveness(source.metrics()).status == 503  # not started
    source.connect()
    assert liveness(source.metrics()).status == 200
    source.step("shutdown")
    answer = liveness(source.metrics())
    assert answer.status == 503 and answer.body["alive"] is False and answer.body["state"] == "IDLE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9200", ("::1", 9200)),
        ("0.0.0.0:9108", ("0.0.0.0", 9108)),  # parsed; serve_health decides whether to allow it
        ("9300", (DEFAULT_HOST, 9300)),
        (" 127.0.0.1:9108 ", ("127.0.0.1", 9108)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected
    assert parse_address(str(DEFAULT_PORT)) == (DEFAULT_HOST, DEFAULT_PORT)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("::1:9108", "brackets"),
        (":9108", "no host"),
        ("127.0.0.1:http", "must be a number"),
        ("127.0.0.1:70000", "not a TCP port"),
        ("", "must be a number"),
    ],
)
def test_parse_address_rejects(text: str, why: str) -> None:
    with pytest.raises(ServeError, match=why):
        parse_address(text)
