"""Settings: every env variable read, every bad value refused with a message naming its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsm.errors import SettingsError
from fsm.settings import Settings


def test_defaults() -> None:
    s = Settings.from_env({"HOME": "/h"})
    assert (s.host, s.port, s.client_id, s.readonly, s.handshake_timeout) == (
        "127.0.0.1",
        4002,
        1,
        True,
        30.0,
    )
    assert (s.backoff_initial, s.backoff_multiplier, s.backoff_jitter, s.backoff_max) == (
        1.0,
        1.6,
        0.2,
        120.0,
    )
    assert s.state_dir.name == "ibgw"


@pytest.mark.parametrize(
    ("var", "raw", "field", "value"),
    [
        ("IBKR_HOST", "10.0.0.5", "host", "10.0.0.5"),
        ("IBKR_PORT", "4001", "port", 4001),
        ("IBKR_PORT", " 7497 ", "port", 7497),
        ("IBKR_CLIENT_ID", "0", "client_id", 0),
        ("IBKR_CLIENT_ID", "17", "client_id", 17),
        ("IBKR_READONLY", "false", "readonly", False),
        ("IBKR_READONLY", "No", "readonly", False),
        ("IBKR_READONLY", "1", "readonly", True),
        ("IBKR_READONLY", "ON", "readonly", True),
        ("IBKR_TIMEOUT", "30", "handshake_timeout", 30.0),
        ("IBKR_TIMEOUT", "45.5", "handshake_timeout", 45.5),
        ("IBGW_STATE_DIR", "/var/lib/ibgw", "state_dir", Path("/var/lib/ibgw")),
    ],
)
def test_each_env_var(var: str, raw: str, field: str, value: object) -> None:
    assert getattr(Settings.from_env({var: raw}), field) == value


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("IBKR_HOST", ""),
        ("IBKR_HOST", "two words"),
        ("IBKR_PORT", "0"),
        ("IBKR_PORT", "65536"),
        ("IBKR_PORT", "-1"),
        ("IBKR_PORT", "abc"),
        ("IBKR_PORT", "4002.0"),
        ("IBKR_PORT", ""),
        ("IBKR_CLIENT_ID", "-1"),
        ("IBKR_CLIENT_ID", "one"),
        ("IBKR_CLIENT_ID", "2147483648"),
        ("IBKR_READONLY", "maybe"),
        ("IBKR_READONLY", ""),
        ("IBKR_TIMEOUT", "10"),
        ("IBKR_TIMEOUT", "29.999"),
        ("IBKR_TIMEOUT", "-30"),
        ("IBKR_TIMEOUT", "soon"),
        ("IBKR_TIMEOUT", "nan"),
        ("IBKR_TIMEOUT", "inf"),
        ("IBGW_STATE_DIR", ""),
    ],
)
def test_bad_env_value_names_the_variable(var: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: raw})
    assert str(info.value).startswith(f"{var}={raw!r} ")
    assert isinstance(info.value, ValueError)


def test_short_handshake_timeout_message_says_why() -> None:
    with pytest.raises(SettingsError, match=r"IBKR_TIMEOUT='15' is below the 30 s minimum"):
        Settings.from_env({"IBKR_TIMEOUT": "15"})
    with pytest.raises(SettingsError, match=r"handshake_timeout=15\.0 is below the 30 s minimum"):
        Settings(handshake_timeout=15)


def test_overrides_win_over_env_and_are_validated() -> None:
    s = Settings.from_env({"IBKR_PORT": "4001", "IBKR_CLIENT_ID": "5"}, port=7497)
    assert (s.port, s.client_id) == (7497, 5)
    with pytest.raises(SettingsError, match="port=0 "):
        Settings.from_env({}, port=0)
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env({}, prot=4001)


@pytest.mark.parametrize(
    "changes",
    [
        {"port": 0},
        {"port": True},
        {"client_id": -1},
        {"readonly": "yes"},
        {"probe_timeout": 0},
        {"spawn_timeout": -1.0},
        {"backoff_multiplier": 0.5},
        {"backoff_jitter": 1.0},
        {"backoff_max": 0.5},
        {"probe_timeout": 10.0},
        {"min_session": float("inf")},
        {"host": ""},
    ],
)
def test_constructor_and_replace_validate(changes: dict) -> None:
    with pytest.raises(SettingsError, match=next(iter(changes))):
        Settings().replace(**changes)
    with pytest.raises(SettingsError):
        Settings(**changes)


def test_replace_and_frozen() -> None:
    s = Settings().replace(client_id=9, state_dir="/tmp/x", stable_period=90)
    assert s.client_id == 9 and s.state_dir == Path("/tmp/x") and s.stable_period == 90.0
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(SettingsError, match="unknown setting"):
        s.replace(colour="red")


def test_state_dir_follows_xdg() -> None:
    assert Settings.from_env({"XDG_STATE_HOME": "/xdg"}).state_dir == Path("/xdg/ibgw")
    assert Settings.from_env({"XDG_STATE_HOME": "relative"}).state_dir == (Path.home() / ".local/state/ibgw")
    assert Settings.from_env({"XDG_STATE_HOME": "/xdg", "IBGW_STATE_DIR": "/s"}).state_dir == Path("/s")


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IBKR_CLIENT_ID", "23")
    assert Settings.from_env().client_id == 23
