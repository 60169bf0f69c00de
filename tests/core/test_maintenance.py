"""Maintenance windows: spans across midnight and DST changes, checked against a brute-force
reading of the zone's clock minute by minute (an independent computation via zoneinfo), plus
the spec format, the defaults and the environment variable."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fsm.errors import SettingsError
from fsm.maintenance import (
    DEFAULT_SPEC,
    EVERY_DAY,
    Window,
    default_windows,
    in_window,
    local_zone,
    next_change,
    parse_windows,
)
from fsm.settings import Settings

NY = ZoneInfo("America/New_York")
MINUTE = timedelta(minutes=1)
ZONES = sorted(available_timezones() - {"localtime", "Factory"})
FIRST_YEAR, LAST_YEAR = 2000, 2040  # modern rules: offsets and jumps on whole minutes


@cache
def jump_days(key: str, year: int) -> tuple[date, ...]:
    """Local dates around each UTC-offset change of `key` in `year` (the interesting days)."""
    zone = ZoneInfo(key)
    days: list[date] = []
    noon = datetime(year, 1, 1, 12, tzinfo=UTC)
    before = noon.astimezone(zone).utcoffset()
    for n in range(1, 367):
        after = (noon + timedelta(days=n)).astimezone(zone).utcoffset()
        if after != before:
            d = (noon + timedelta(days=n)).date()
            days += [d - timedelta(days=2), d - timedelta(days=1), d]
        before = after
    return tuple(days)


def brute_span(w: Window, day: date) -> tuple[datetime, datetime]:
    """The window starting on `day`, from the clock's readings at every UTC minute: it starts at
    the first instant the clock reads >= start and ends at the instant after which it never
    again reads < end (the next day's end when the window crosses midnight)."""
    begin = datetime.combine(day, w.start)
    finish = datetime.combine(day + timedelta(days=w.end < w.start), w.end)
    t = begin.replace(tzinfo=UTC) - timedelta(hours=16)  # UTC offsets are -12..+14 h
    stop = finish.replace(tzinfo=UTC) + timedelta(hours=16)
    start = end = None
    while t <= stop:
        reading = t.astimezone(w.zone).replace(tzinfo=None)
        if start is None and reading >= begin:
            start = t
        if reading < finish:
            end = None
        elif end is None:
            end = t
        t += MINUTE
    assert start is not None and end is not None
    return start, max(start, end)


times = st.builds(time, st.integers(0, 23), st.sampled_from([0, 1, 15, 30, 44, 45, 59]))
early_times = st.builds(time, st.integers(0, 4), st.sampled_from([0, 15, 30, 45, 59]))


@st.composite
def window_days(draw: st.DrawFn) -> tuple[Window, date]:
    """A window in any zone on a day near one of its DST changes (or any day), with edges biased
    to the small hours when clocks jump."""
    key = draw(st.sampled_from(ZONES))
    year = draw(st.integers(FIRST_YEAR, LAST_YEAR))
    days = jump_days(key, year)
    if days and draw(st.booleans()):
        day = draw(st.sampled_from(days))
    else:
        day = date(year, 1, 1) + timedelta(days=draw(st.integers(0, 364)))
    start = draw(st.one_of(early_times, times))
    end = draw(st.one_of(early_times, times).filter(lambda t: t != start))
    return Window("w", start, end, ZoneInfo(key)), day


def w_(start: str, end: str, zone: str = "America/New_York", days: frozenset[int] = EVERY_DAY) -> Window:
    h1, m1 = map(int, start.split(":"))
    h2, m2 = map(int, end.split(":"))
    return Window("w", time(h1, m1), time(h2, m2), ZoneInfo(zone), days)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@settings(max_examples=150, deadline=None)
@given(window_days())
@example((w_("01:30", "02:30"), date(2024, 3, 10)))  # ends in the skipped hour
@example((w_("02:10", "02:20"), date(2024, 3, 10)))  # wholly skipped: empty
@example((w_("00:15", "01:45"), date(2024, 11, 3)))  # ends in the repeated hour: 2.5 h long
@example((w_("23:00", "03:00"), date(2024, 11, 2)))  # across midnight and the fall-back jump
@example((w_("23:00", "02:30"), date(2024, 3, 9)))  # across midnight into the skipped hour
@example((w_("10:00", "11:00", "Pacific/Apia"), date(2011, 12, 30)))  # a day Samoa skipped
@example((w_("01:45", "02:15", "Australia/Lord_Howe"), date(2024, 4, 7)))  # 30-minute DST
def test_a_span_matches_the_clock_read_minute_by_minute(case: tuple[Window, date]) -> None:
    w, day = case
    assert w.occurrence(day) == brute_span(w, day)


def test_spans_across_midnight_and_dst_in_new_york() -> None:
    weekend = parse_windows("ib-weekend")[0]
    assert weekend.occurrence(date(2024, 11, 1)) == (utc(2024, 11, 2, 3), utc(2024, 11, 2, 7))
    reset = parse_windows("ib-reset")[0]
    assert reset.occurrence(date(2024, 11, 3)) == (utc(2024, 11, 3, 4, 15), utc(2024, 11, 3, 6, 45))
    assert reset.occurrence(date(2024, 3, 10)) == (utc(2024, 3, 10, 5, 15), utc(2024, 3, 10, 6, 45))
    assert reset.occurrence(date(2024, 3, 11)) == (utc(2024, 3, 11, 4, 15), utc(2024, 3, 11, 5, 45))
    skipped = w_("02:10", "02:20")
    start, end = skipped.occurrence(date(2024, 3, 10))
    assert start == end == utc(2024, 3, 10, 7)
    assert in_window([skipped], utc(2024, 3, 10, 7)) is None


def test_days_are_the_days_a_window_starts_on() -> None:
    weekend = parse_windows("ib-weekend")  # Fri 23:00 -> Sat 03:00 New York
    assert in_window(weekend, utc(2024, 6, 7, 3, 30)) is None  # Thu 23:30 EDT
    assert in_window(weekend, utc(2024, 6, 8, 3, 30)) is weekend[0]  # Fri 23:30 EDT
    assert in_window(weekend, utc(2024, 6, 8, 6, 59)) is weekend[0]  # Sat 02:59 EDT
    assert in_window(weekend, utc(2024, 6, 8, 7, 0)) is None  # Sat 03:00 EDT
    assert in_window(weekend, utc(2024, 6, 9, 3, 30)) is None  # Sat 23:30 EDT
    reset = parse_windows("ib-reset")  # Sun-Fri: not on Saturday
    assert in_window(reset, utc(2024, 6, 8, 4, 30)) is None  # Sat 00:30 EDT
    assert in_window(reset, utc(2024, 6, 9, 4, 30)) is reset[0]  # Sun 00:30 EDT


@settings(max_examples=60, deadline=None)
@given(
    window_days(),
    st.sets(st.integers(0, 6), min_size=1),
    st.integers(-36 * 60, 36 * 60),
)
def test_in_window_agrees_with_the_brute_force_spans(
    case: tuple[Window, date], days: set[int], minutes: int
) -> None:
    w, day = case
    w = Window(w.name, w.start, w.end, w.zone, frozenset(days))
    wall = datetime.combine(day, time(12), tzinfo=UTC) + timedelta(minutes=minutes, seconds=30)
    local = wall.astimezone(w.zone).date()
    inside = any(
        s <= wall < e
        for d in (local - timedelta(days=n) for n in range(3))
        if d.weekday() in w.days
        for s, e in [brute_span(w, d)]
    )
    assert (in_window([w], wall) is w) == inside


@settings(max_examples=100, deadline=None)
@given(
    st.lists(window_days(), min_size=1, max_size=3),
    st.integers(0, 7 * 24 * 3600),
    st.randoms(use_true_random=False),
)
def test_nothing_changes_before_next_change(cases: list, offset: int, rng) -> None:
    windows = [Window(f"w{i}", w.start, w.end, w.zone, frozenset({i, 4})) for i, (w, _) in enumerate(cases)]
    wall = utc(2024, 1, 1) + timedelta(days=cases[0][1].toordinal() % 3000, seconds=offset)
    edge = next_change(windows, wall)
    assert edge is not None and wall < edge <= wall + timedelta(days=8, hours=2)
    now = in_window(windows, wall)
    for _ in range(20):
        t = min(wall + (edge - wall) * rng.random(), edge - timedelta(microseconds=1))
        assert in_window(windows, t) is now, f"changed at {t} before the next change {edge}"
    ends = {t for w in windows for d in range(-2, 9) for t in w.occurrence(edge.date() + timedelta(days=d))}
    assert edge in ends


def test_in_window_takes_settings_and_needs_an_aware_time() -> None:
    s = Settings(maintenance="ib-reset")
    assert in_window(s, utc(2024, 6, 10, 4, 30)) is s.maintenance[0]
    assert next_change(s, utc(2024, 6, 10, 4, 30)) == utc(2024, 6, 10, 5, 45)
    assert in_window([], utc(2024, 6, 10)) is None and next_change([], utc(2024, 6, 10)) is None
    with pytest.raises(ValueError, match="aware"):
        in_window(s, datetime(2024, 6, 10, 4, 30))


names = st.from_regex(r"[a-z][a-z0-9_.-]{0,12}", fullmatch=True)


@given(
    names,
    times,
    times,
    st.sampled_from(["UTC", "America/New_York", "Europe/Zurich", "Asia/Hong_Kong", "Asia/Kathmandu"]),
    st.sets(st.integers(0, 6), min_size=1),
)
def test_spec_round_trips(name: str, start: time, end: time, zone: str, days: set[int]) -> None:
    if start == end:
        return
    w = Window(name, start, end, ZoneInfo(zone), frozenset(days))
    assert parse_windows(w.spec()) == (w,)
    assert parse_windows(f"{w.spec()}; {w.spec()}") == (w, w)


def test_defaults_and_where_the_local_zone_comes_from() -> None:
    ws = default_windows({"TZ": "Europe/Zurich"})
    assert [w.spec() for w in ws] == [
        "ib-reset=Sun-Fri 00:15-01:45 America/New_York",
        "ib-weekend=Fri 23:00-03:00 America/New_York",
        "gateway-restart=daily 23:44-23:55 Europe/Zurich",
    ]
    assert parse_windows(DEFAULT_SPEC, local=ZoneInfo("Europe/Zurich")) == ws
    assert local_zone({"TZ": ":Asia/Tokyo"}) == ZoneInfo("Asia/Tokyo")
    assert isinstance(local_zone({"TZ": "Not/AZone"}), ZoneInfo)  # falls back to the system's
    assert [w.name for w in parse_windows("ib-reset-asia; ib-reset-eu")] == [
        "ib-reset-asia",
        "ib-reset-asia",
        "ib-reset-eu",
    ]


def test_the_environment_variable() -> None:
    env = {"TZ": "Europe/London"}
    assert Settings.from_env(env).maintenance == default_windows(env)
    assert Settings.from_env({**env, "IBGW_MAINTENANCE": "off"}).maintenance == ()
    s = Settings.from_env({**env, "IBGW_MAINTENANCE": "ib-reset; gw=daily 05:00-05:12 local"})
    assert [w.spec() for w in s.maintenance] == [
        "ib-reset=Sun-Fri 00:15-01:45 America/New_York",
        "gw=daily 05:00-05:12 Europe/London",
    ]
    assert Settings(maintenance=[]).maintenance == ()
    assert Settings(maintenance="Sat 10:00-11:00 UTC").maintenance[0].name == "window-1"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "is empty"),
        ("Fry 10:00-11:00 UTC", "days 'Fry'"),
        ("daily 10:00-10:00 UTC", "start and end are both 10:00"),
        ("daily 24:00-10:00 UTC", "'24:00' is not a time of day"),
        ("daily 10:00-11:00 Mars/Olympus", "'Mars/Olympus' is not a time zone"),
        ("ib-reset; nightly", "in 'nightly': not a window name"),
        ("a b=daily 10:00-11:00 UTC", "not a window name"),
    ],
)
def test_a_bad_spec_names_the_variable(spec: str, message: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"IBGW_MAINTENANCE": spec})
    assert str(info.value).startswith(f"IBGW_MAINTENANCE={spec!r}") and message in str(info.value)
    with pytest.raises(SettingsError, match="^maintenance="):
        Settings(maintenance=spec)
