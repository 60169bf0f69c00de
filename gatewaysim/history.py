"""Historical bars as IB shapes them: bar sizes, durations, end times, trading sessions, the
date strings of formatDate 1 and 2. Pure: the price process and the time are passed in.

Sessions follow each instrument's hours in its own time zone, Monday to Friday (the simulator
knows no holidays): useRTH=1 keeps the liquid hours, useRTH=0 the whole session; instruments
marked always_open trade every day around the clock. Intraday bars start at multiples of the
bar size from local midnight, clipped to the session (so the first RTH hour bar is 09:30); a bar
belongs to a request when its start lies in [start, end), the last one running up to `end`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .instruments import Instrument
from .prices import NS, Bar, PriceProcess
from .refusals import invalid

BAR_SIZES: dict[str, int] = {
    "1 secs": 1,
    "5 secs": 5,
    "10 secs": 10,
    "15 secs": 15,
    "30 secs": 30,
    "1 min": 60,
    "2 mins": 120,
    "3 mins": 180,
    "5 mins": 300,
    "10 mins": 600,
    "15 mins": 900,
    "20 mins": 1200,
    "30 mins": 1800,
    "1 hour": 3600,
    "2 hours": 7200,
    "3 hours": 10800,
    "4 hours": 14400,
    "8 hours": 28800,
    "1 day": 86400,
    "1 week": 7 * 86400,
    "1 month": 31 * 86400,  # calendar months; the number only ranks it above a week
}
DAY = 86400
_DURATION_RE = re.compile(r"\s*(\d+)\s+([SDWMY])\s*")
_END_RE = re.compile(r"(\d{8})(?:[ -](\d{2}:\d{2}:\d{2}))?(?:\s+(\S+))?")


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed reqHistoricalData: what to compute, and how to write the dates."""

    ins: Instrument
    end_ns: int
    start_ns: int
    bar_seconds: int
    what_to_show: str
    use_rth: bool
    format_date: int


def bar_seconds(setting: str) -> int:
    try:
        return BAR_SIZES[setting.strip()]
    except KeyError:
        cause = "Historical data bar size setting is invalid. Legal ones are: " + ", ".join(BAR_SIZES)
        raise invalid("bP", cause) from None


def parse_end(text: str, zone: ZoneInfo, now_ns: int) -> int:
    """endDateTime: "" is now; `yyyymmdd hh:mm:ss [zone]` (no zone: the exchange's),
    `yyyymmdd-hh:mm:ss` (UTC), or a bare date (its end)."""
    text = text.strip()
    if not text:
        return now_ns
    m = _END_RE.fullmatch(text)
    if not m:
        raise invalid("bO", f"End date/time is invalid: {text}")
    day, clock, tz_name = m.groups()
    try:
        tz: dt.tzinfo = dt.UTC if "-" in text else (ZoneInfo(tz_name) if tz_name else zone)
        local = dt.datetime.strptime(day + (clock or "23:59:59"), "%Y%m%d%H:%M:%S").replace(tzinfo=tz)
    except (ValueError, ZoneInfoNotFoundError):
        raise invalid("bO", f"End date/time is invalid: {text}") from None
    return int(local.timestamp()) * NS


def sessions(
    ins: Instrument, use_rth: bool, first_day: dt.date, last_day: dt.date
) -> Iterator[tuple[dt.date, int, int]]:
    """(local date, start_ns, end_ns) of every session from first_day to last_day."""
    zone = ZoneInfo(ins.time_zone_id)
    open_, close = ins.liquid_hours if use_rth else ins.hours
    day = first_day
    while day <= last_day:
        if ins.always_open or day.weekday() < 5:
            yield day, _at(zone, day, open_), _at(zone, day, close)
        day += dt.timedelta(days=1)


def _at(zone: ZoneInfo, day: dt.date, hhmm: str) -> int:
    hours, minutes = int(hhmm[:2]), int(hhmm[2:])
    base = dt.datetime.combine(day, dt.time(), zone) + dt.timedelta(hours=hours, minutes=minutes)
    return int(base.timestamp()) * NS


def start_of(ins: Instrument, duration: str, end_ns: int, use_rth: bool) -> int:
    """The first instant a duration ending at end_ns covers. `N D` counts trading days back
    from the last session that began before end_ns; W, M, Y are calendar spans."""
    m = _DURATION_RE.fullmatch(duration)
    if not m or int(m.group(1)) < 1:
        raise invalid("bQ", f"Historical data duration is invalid: {duration!r}")
    n, unit = int(m.group(1)), m.group(2)
    zone = ZoneInfo(ins.time_zone_id)
    end_local = dt.datetime.fromtimestamp(end_ns / NS, zone)
    if unit == "S":
        return end_ns - n * NS
    if unit == "D":
        days = [
            d
            for d, s, _ in sessions(
                ins, use_rth, end_local.date() - dt.timedelta(days=2 * n + 7), end_local.date()
            )
            if s < end_ns
        ]
        first = days[-n] if len(days) >= n else days[0]
        return int(dt.datetime.combine(first, dt.time(), zone).timestamp()) * NS
    if unit == "W":
        return end_ns - 7 * n * DAY * NS
    months = n if unit == "M" else 12 * n
    y, mo = divmod(end_local.year * 12 + end_local.month - 1 - months, 12)
    day = min(end_local.day, _month_days(y, mo + 1))
    return int(end_local.replace(year=y, month=mo + 1, day=day).timestamp()) * NS


def _month_days(year: int, month: int) -> int:
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    return (nxt - dt.timedelta(days=1)).day


def bars(pp: PriceProcess, q: Query) -> list[Bar]:
    """Every bar of the query, oldest first, each dated at its (clipped) start."""
    zone = ZoneInfo(q.ins.time_zone_id)
    first_day = dt.datetime.fromtimestamp(q.start_ns / NS, zone).date() - dt.timedelta(days=1)
    last_day = dt.datetime.fromtimestamp(q.end_ns / NS, zone).date()
    out: list[Bar] = []
    if q.bar_seconds < DAY:
        width = q.bar_seconds * NS
        for day, s0, s1 in sessions(q.ins, q.use_rth, first_day, last_day):
            midnight = int(dt.datetime.combine(day, dt.time(), zone).timestamp()) * NS
            t = s0 - (s0 - midnight) % width
            while t < s1:
                start = max(t, s0)
                if q.start_ns <= start < q.end_ns:
                    bar = pp.bar(q.ins.con_id, start, min(t + width, s1, q.end_ns), q.what_to_show)
                    if bar is not None:
                        out.append(bar)
                t += width
        return out
    groups: dict[object, list[tuple[int, int]]] = {}
    for day, s0, s1 in sessions(q.ins, q.use_rth, first_day, last_day):
        if q.start_ns <= s0 < q.end_ns:
            key = _period(day, q.bar_seconds)
            groups.setdefault(key, []).append((s0, min(s1, q.end_ns)))
    for spans in groups.values():
        bar = pp.bar_over(q.ins.con_id, spans, q.what_to_show)
        if bar is not None:
            out.append(bar)
    return out


def _period(day: dt.date, seconds: int) -> object:
    if seconds == DAY:
        return day
    if seconds == BAR_SIZES["1 week"]:
        return day.isocalendar()[:2]
    return day.year, day.month


def format_bar_date(q: Query, start_ns: int) -> str:
    """formatDate 1: `yyyymmdd hh:mm:ss <zone>` in the exchange's zone; 2: epoch seconds;
    bars of a day or longer: `yyyymmdd` (their first session's date) either way."""
    zone = ZoneInfo(q.ins.time_zone_id)
    local = dt.datetime.fromtimestamp(start_ns // NS, zone)
    if q.bar_seconds >= DAY:
        return local.strftime("%Y%m%d")
    if q.format_date == 2:
        return str(start_ns // NS)
    return local.strftime("%Y%m%d %H:%M:%S ") + q.ins.time_zone_id


def format_span(ins: Instrument, t_ns: int) -> str:
    """The start/end strings heading a historicalData reply."""
    local = dt.datetime.fromtimestamp(t_ns // NS, ZoneInfo(ins.time_zone_id))
    return local.strftime("%Y%m%d %H:%M:%S ") + ins.time_zone_id


def trading_hours(ins: Instrument, use_rth: bool, today: dt.date, days: int = 3) -> str:
    """contractDetails' tradingHours/liquidHours: `yyyymmdd:hhmm-yyyymmdd:hhmm;…`, CLOSED days too."""
    open_, close = ins.liquid_hours if use_rth else ins.hours
    parts = []
    for i in range(days):
        day = today + dt.timedelta(days=i)
        d = day.strftime("%Y%m%d")
        if ins.always_open or day.weekday() < 5:
            end_day = day + dt.timedelta(days=1) if close == "2400" else day
            end = "0000" if close == "2400" else close
            parts.append(f"{d}:{open_}-{end_day.strftime('%Y%m%d')}:{end}")
        else:
            parts.append(f"{d}:CLOSED")
    return ";".join(parts)
