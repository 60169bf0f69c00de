"""Maintenance windows: when IB resets its servers or the Gateway restarts itself, as pure data.

A window is a time-of-day range in a named zone (zoneinfo) on given days. Inside one, a lost
session is expected: the core tags its state changes and keeps retrying with a short, capped
backoff, and the order gate refuses new orders. `in_window()` and `next_change()` are pure
functions of the windows and an aware wall time, so they are tested over any date and zone;
only `local_zone()` reads the system (TZ, /etc/localtime), once, when settings are built.

Semantics, DST-correct: the window that starts on day D is one span of real time, from the first
moment the zone's clock reaches `start` on D to the last moment it reaches `end` (on D, or on
D + 1 when end < start: the window crosses midnight). "Reaches" is counted from below: a time
the clock skips (spring forward) is reached at the jump; one it shows twice (fall back) is
reached at both showings, so a window starts at the first and ends at the second and never
shrinks by the repeated hour. `days` are the weekdays a window starts on.

Defaults, and where they come from:

- `ib-reset`: IB's daily North American server reset, 00:15-01:45 America/New_York, Sunday to
  Friday (IB's System Status page, "Daily reset schedule"; older IB pages and Lean's IBAutomater
  used 23:30/23:45-00:45/01:00 ET, so override it if your region or IB's schedule differs).
- `ib-weekend`: IB's weekend maintenance, Friday 23:00 to Saturday 03:00 America/New_York
  (same page).
- `gateway-restart`: the Gateway's own daily auto-restart, 23:44-23:55 in the local zone: IBC's
  and the Gateway's default auto-restart time is 11:45 PM local (Lean issue #242 lost orders sent
  at 23:45:00.02, so the window opens a minute early); Lean's IBAutomater allows 10 minutes for
  the restart. Set IBC's `AutoRestartTime` and this window together.

Also known by name (not on by default): `ib-reset-eu` (06:25-07:45 Europe/Zurich, Sun-Fri) and
`ib-reset-asia` (04:45-06:05 and 20:15-21:15 Asia/Hong_Kong, Sun-Fri), from the same IB page.

`IBGW_MAINTENANCE` replaces the defaults: `off`, or `;`-separated items, each a name above or
`[name=]DAYS HH:MM-HH:MM ZONE`, with DAYS `daily` or days and ranges like `Sun-Fri`, `Sat,Sun`,
and ZONE an IANA name (`America/New_York`), `UTC` or `local`. Example:
`IBGW_MAINTENANCE="ib-reset; ib-weekend; gateway=daily 05:00-05:12 Europe/London"`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import SettingsError

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
EVERY_DAY = frozenset(range(7))
SUN_TO_FRI = frozenset({6, 0, 1, 2, 3, 4})
ENV_VAR = "IBGW_MAINTENANCE"
DEFAULT_SPEC = "ib-reset; ib-weekend; gateway-restart"


@dataclass(frozen=True, slots=True)
class Window:
    """One recurring maintenance window; `days` are the weekdays (Mon=0) it starts on."""

    name: str
    start: time
    end: time
    zone: ZoneInfo
    days: frozenset[int] = field(default=EVERY_DAY)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise SettingsError(f"window name {self.name!r} is not a name (letters, digits, - _ .)")
        for edge in (self.start, self.end):
            if not isinstance(edge, time) or edge.tzinfo is not None or edge.second or edge.microsecond:
                raise SettingsError(f"window {self.name}: {edge!r} is not a whole-minute time of day")
        if self.start == self.end:
            raise SettingsError(f"window {self.name}: start and end are both {self.start:%H:%M}")
        if not isinstance(self.zone, ZoneInfo):
            raise SettingsError(f"window {self.name}: {self.zone!r} is not a zoneinfo.ZoneInfo")
        days = frozenset(self.days)
        if not days or not days <= EVERY_DAY:
            raise SettingsError(f"window {self.name}: days {sorted(days)} are not weekdays 0-6")
        object.__setattr__(self, "days", days)

    @property
    def crosses_midnight(self) -> bool:
        return self.end < self.start

    def spec(self) -> str:
        """The `IBGW_MAINTENANCE` item that gives this window back."""
        return (
            f"{self.name}={_days_spec(self.days)} {self.start:%H:%M}-{self.end:%H:%M} {_zone_name(self.zone)}"
        )

    def occurrence(self, day: date) -> tuple[datetime, datetime]:
        """The span [start, end) in UTC of the window starting on local `day` (listed or not);
        empty (start == end) when it falls wholly into a skipped hour."""
        return _occurrence(self, day)


class HasWindows(Protocol):
    """Anything carrying windows, such as Settings."""

    @property
    def maintenance(self) -> tuple[Window, ...]: ...


def in_window(windows: HasWindows | Iterable[Window], wall: datetime) -> Window | None:
    """The first window (in order) that `wall` (an aware datetime) falls in, or None."""
    wall = _aware(wall)
    for w in _windows(windows):
        today = wall.astimezone(w.zone).date()
        for back in (2, 1, 0):  # a window lasts under a day plus a DST shift
            day = today - timedelta(days=back)
            if day.weekday() in w.days:
                start, end = _occurrence(w, day)
                if start <= wall < end:
                    return w
    return None


def next_change(windows: HasWindows | Iterable[Window], wall: datetime) -> datetime | None:
    """The first window edge after `wall` (UTC), when in_window() may answer differently; None
    with no windows. A driver sleeps until then and asks in_window() again."""
    wall = _aware(wall)
    edges = []
    for w in _windows(windows):
        today = wall.astimezone(w.zone).date()
        for ahead in range(-2, 9):
            day = today + timedelta(days=ahead)
            if day.weekday() in w.days:
                edges += [t for t in _occurrence(w, day) if t > wall]
    return min(edges, default=None)


# ---- parsing ---------------------------------------------------------------------------------

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ITEM = re.compile(
    r"(?:(?P<name>[^=\s]+)\s*=\s*)?(?P<days>\S+)\s+"
    r"(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s+(?P<zone>\S+)"
)


def _preset(
    name: str, days: frozenset[int], spans: Iterable[tuple[str, str]], zone: str | None
) -> Callable[[ZoneInfo], tuple[Window, ...]]:
    def build(local: ZoneInfo) -> tuple[Window, ...]:
        tz = local if zone is None else _zone(zone, name)
        return tuple(Window(name, _time(a, name), _time(b, name), tz, days) for a, b in spans)

    return build


PRESETS: dict[str, Callable[[ZoneInfo], tuple[Window, ...]]] = {
    "ib-reset": _preset("ib-reset", SUN_TO_FRI, [("00:15", "01:45")], "America/New_York"),
    "ib-weekend": _preset("ib-weekend", frozenset({4}), [("23:00", "03:00")], "America/New_York"),
    "gateway-restart": _preset("gateway-restart", EVERY_DAY, [("23:44", "23:55")], None),
    "ib-reset-eu": _preset("ib-reset-eu", SUN_TO_FRI, [("06:25", "07:45")], "Europe/Zurich"),
    "ib-reset-asia": _preset(
        "ib-reset-asia", SUN_TO_FRI, [("04:45", "06:05"), ("20:15", "21:15")], "Asia/Hong_Kong"
    ),
}
"""Windows known by name; `None` zone = the local zone (the Gateway restarts by its own clock)."""


def parse_windows(spec: str, *, local: ZoneInfo | None = None, label: str = ENV_VAR) -> tuple[Window, ...]:
    """Windows from an `IBGW_MAINTENANCE`-style spec; errors name `label` and the bad item."""
    text = spec.strip()
    if text.lower() in ("off", "none"):
        return ()
    if not text:
        raise SettingsError(f"{label}={spec!r} is empty: list windows, or say 'off'")
    items = [i.strip() for i in text.split(";")]
    windows: list[Window] = []
    for n, item in enumerate(items, 1):
        try:
            windows += _parse_item(item, n, local)
        except SettingsError as exc:
            where = f" in {item!r}" if len(items) > 1 else ""
            raise SettingsError(f"{label}={spec!r}{where}: {exc}") from None
    return tuple(windows)


def _parse_item(item: str, n: int, local: ZoneInfo | None) -> tuple[Window, ...]:
    if item.lower() in PRESETS:
        return PRESETS[item.lower()](local or local_zone())
    m = _ITEM.fullmatch(item)
    if m is None:
        raise SettingsError(
            f"not a window name ({', '.join(PRESETS)}) nor '[name=]DAYS HH:MM-HH:MM ZONE' "
            "(e.g. 'Sun-Fri 00:15-01:45 America/New_York')"
        )
    name = m["name"] or f"window-{n}"
    zone = (local or local_zone()) if m["zone"].lower() == "local" else _zone(m["zone"], name)
    return (Window(name, _time(m["start"], name), _time(m["end"], name), zone, _days(m["days"])),)


def _days(text: str) -> frozenset[int]:
    if text.lower() == "daily":
        return EVERY_DAY
    index = {d.lower(): i for i, d in enumerate(DAY_NAMES)}
    days: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or any(e.lower() not in index for e in ends):
            raise SettingsError(
                f"days {text!r} are not 'daily' or Mon..Sun with ranges and commas (Sun-Fri, Sat,Sun)"
            )
        first, last = index[ends[0].lower()], index[ends[-1].lower()]
        days.update((first + i) % 7 for i in range((last - first) % 7 + 1))
    return frozenset(days)


def _time(text: str, name: str) -> time:
    hh, mm = text.split(":")
    if not (len(mm) == 2 and 0 <= int(hh) <= 23 and 0 <= int(mm) <= 59):
        raise SettingsError(f"window {name}: {text!r} is not a time of day HH:MM")
    return time(int(hh), int(mm))


def _zone(key: str, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            f"window {name}: {key!r} is not a time zone (an IANA name such as America/New_York, "
            "UTC or local; without system zone data install the tzdata package)"
        ) from None


def local_zone(env: Mapping[str, str] | None = None) -> ZoneInfo:
    """The zone this machine's clock uses: $TZ if it names a zone, else /etc/localtime, else UTC.
    Reads the system: call it when building settings, never from the pure functions above."""
    env = os.environ if env is None else env
    tz = env.get("TZ", "").lstrip(":")
    candidates = [tz] if tz else []
    target = os.path.realpath("/etc/localtime")
    if "/zoneinfo/" in target:
        candidates.append(target.split("/zoneinfo/", 1)[1])
    for key in candidates:
        try:
            return ZoneInfo(key)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return ZoneInfo("UTC")


def default_windows(env: Mapping[str, str] | None = None) -> tuple[Window, ...]:
    """The windows in force without IBGW_MAINTENANCE: IB's nightly and weekend resets and the
    Gateway's daily restart in the local zone."""
    return parse_windows(DEFAULT_SPEC, local=local_zone(env))


# ---- computing spans ---------------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _occurrence(w: Window, day: date) -> tuple[datetime, datetime]:
    start = _instant(day, w.start, w.zone, first=True)
    end = _instant(day + timedelta(days=w.crosses_midnight), w.end, w.zone, first=False)
    return start, max(start, end)


def _instant(day: date, clock: time, zone: ZoneInfo, *, first: bool) -> datetime:
    """When `zone`'s clock first or last reaches `clock` on `day` (from below): its first or
    last showing, or, in a skipped hour, the moment of the jump."""
    naive = datetime.combine(day, clock)
    shown = [
        utc
        for fold in (0, 1)
        if (utc := naive.replace(tzinfo=zone, fold=fold).astimezone(UTC))
        .astimezone(zone)
        .replace(tzinfo=None)
        == naive
    ]
    if shown:
        if first:
            return min(shown)
        # the second showing is reached from below unless the clock fell back onto it exactly
        second = max(shown)
        before = (second - timedelta(seconds=1)).astimezone(zone).replace(tzinfo=None)
        return second if before < naive else min(shown)
    # Skipped: fold=1 reads it with the offset after the jump (an instant before the jump),
    # fold=0 with the one before (an instant after it); find the jump between them.
    lo = int(naive.replace(tzinfo=zone, fold=1).timestamp())
    hi = int(naive.replace(tzinfo=zone, fold=0).timestamp())
    after = datetime.fromtimestamp(hi, UTC).astimezone(zone).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, UTC).astimezone(zone).utcoffset() == after:
            hi = mid
        else:
            lo = mid
    return datetime.fromtimestamp(hi, UTC)


def _aware(wall: datetime) -> datetime:
    if not isinstance(wall, datetime) or wall.utcoffset() is None:
        raise ValueError(f"wall must be a timezone-aware datetime, got {wall!r}")
    return wall


def _windows(source: HasWindows | Iterable[Window]) -> Iterable[Window]:
    return source if isinstance(source, Iterable) else source.maintenance


def _zone_name(zone: ZoneInfo) -> str:
    return "local" if zone.key in (None, "localtime") else zone.key


def _days_spec(days: frozenset[int]) -> str:
    if days == EVERY_DAY:
        return "daily"
    # runs of consecutive days, starting after a missing day so a run can wrap past Sunday
    start = next(d for d in range(7) if (d - 1) % 7 not in days)
    parts, d = [], start
    for _ in range(7):
        if d in days and (d - 1) % 7 not in days:
            last = d
            while (last + 1) % 7 in days:
                last = (last + 1) % 7
            parts.append(DAY_NAMES[d] if last == d else f"{DAY_NAMES[d]}-{DAY_NAMES[last]}")
        d = (d + 1) % 7
    return ",".join(parts)
