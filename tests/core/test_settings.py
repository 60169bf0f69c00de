"""Settings: every env variable read, every bad value refused with a message naming its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from fsm.core import ConnectionCore
from fsm.errors import SettingsError, UnknownHost, UnsafeStateDir
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


# ---- hostile values (issue 11, item 7): one SettingsError naming the variable, never a crash ------


@pytest.mark.parametrize("raw", ["1e308", "1e400", "86401", "-inf", "nan"])
def test_huge_or_non_finite_timeouts_are_refused(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IBKR_TIMEOUT": raw})
    assert str(info.value).startswith(f"IBKR_TIMEOUT={raw!r} ")
    assert "longer than the 86400 s" in str(info.value) or "not a finite number" in str(info.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"request_timeout": 1e308},
        {"probe_interval": 10**400},
        {"stable_period": float("nan")},
        {"maintenance_backoff_max": float("inf")},
        {"backoff_multiplier": float("inf")},
        {"backoff_jitter": float("nan")},
    ],
)
def test_no_setting_overflows_or_slips_through_as_nan(changes: dict) -> None:
    with pytest.raises(SettingsError, match=f"^{next(iter(changes))}="):
        Settings(**changes)


def test_the_longest_durations_still_fit_the_core() -> None:
    day = 86_400.0
    s = Settings(handshake_timeout=day, probe_interval=day, probe_timeout=day / 2, stable_period=day)
    core = ConnectionCore(s.replace(backoff_max=day, maintenance_backoff_max=day))
    core.start(0)
    core.worker_ready(1, pid=1)
    assert core.next_deadline() == 1 + 86_400 * 10**9


def test_a_state_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0::/root:/bin/sh\n")
    with pytest.raises(UnsafeStateDir) as info:
        Settings.from_env({"IBGW_STATE_DIR": str(file)})
    assert str(info.value) == f"IBGW_STATE_DIR={str(file)!r} is not a directory"
    with pytest.raises(UnsafeStateDir, match="cannot be a directory: .*passwd is not one"):
        Settings.from_env({"IBGW_STATE_DIR": str(file / "ibgw")})
    with pytest.raises(UnsafeStateDir, match="^state_dir='.*passwd' is not a directory$"):
        Settings(state_dir=file)
    assert Settings(state_dir=tmp_path / "new" / "ibgw").state_dir == tmp_path / "new" / "ibgw"
    if Path("/etc/passwd").is_file():
        with pytest.raises(SettingsError, match="^IBGW_STATE_DIR='/etc/passwd' is not a directory$"):
            Settings.from_env({"IBGW_STATE_DIR": "/etc/passwd"})


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("a" * 235, "label too long; a DNS name has labels of 1-63 characters"),
        (".".join(["a" * 60] * 5), "304 characters; a DNS name has at most 253"),
        ("gw..local", "labels of 1-63 characters"),
        ("-gw.local", "letters, digits and inner '-'"),
        ("gw/1", "letters, digits and inner '-'"),
        ("[::1]", "letters, digits and inner '-'"),
        ("bad\udcffname", "Invalid character '\\udcff'"),  # a lone surrogate, as os.environ can hold
    ],
)
def test_a_host_that_is_no_name_or_address_is_refused(host: str, why: str) -> None:
    with pytest.raises(UnknownHost) as info:
        Settings.from_env({"IBKR_HOST": host})
    message = str(info.value)
    assert message.startswith("IBKR_HOST=") and "is not a host name or address" in message
    assert why in message and "\n" not in message and len(message) < 200


def test_valid_hosts_pass() -> None:
    for host in ("localhost", "127.0.0.1", "::1", "fe80::1%lo", "gw_1.example.com.", "bücher.de", "a" * 63):
        assert Settings(host=host).host == host


def test_env_numbers_are_plain_ascii_integers() -> None:
    for raw in ("٤٠٠٢", "4_002", "4002.0", "0x10"):
        with pytest.raises(SettingsError, match="^IBKR_PORT="):
            Settings.from_env({"IBKR_PORT": raw})


def test_an_override_replaces_a_bad_variable() -> None:
    """A value given in code wins and the variable it replaces is not even read."""
    assert Settings.from_env({"IBKR_PORT": "junk"}, port=4001).port == 4001
