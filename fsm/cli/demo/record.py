"""What the demo's day records — its steps, lines, recoveries and closing report — as plain data
the views render. Nothing here runs anything."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """Where a line of the day's story comes from (the live view colours by it)."""

    TRANSITION = "transition"  # the manager's state machine moved
    NOTICE = "notice"  # the manager published a notice
    SIM = "sim"  # the simulated Gateway reported a change
    ACTION = "action"  # the script did something (a fault, a restart)
    CHILD = "child"  # a line from the second trader process
    DOCTOR = "doctor"  # what `ibgw doctor` would report
    QUOTE = "quote"  # the trader's quote stream: its first quote, each Gap and the prices after it
    ORDER = "order"  # what the trader's order calls returned, and each fill delivered to it


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    OK = "ok"
    FAILED = "FAILED"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Step:
    """One scripted step: `goal` says what must happen for it to pass."""

    title: str
    goal: str


@dataclass(slots=True)
class Phase:
    """A step as it plays: number `number` of `of`, its status and what it found."""

    number: int
    of: int
    step: Step
    status: Status = Status.PENDING
    detail: str = ""
    started: float | None = None
    ended: float | None = None

    @property
    def title(self) -> str:
        return self.step.title

    @property
    def goal(self) -> str:
        return self.step.goal

    @property
    def at(self) -> float:
        """When it last changed (seconds since the demo started)."""
        return self.ended if self.ended is not None else self.started or 0.0


@dataclass(frozen=True, slots=True)
class Recovery:
    what: str
    seconds: float
    how: str


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One transition of one of the day's managers (`manager` is "#1", "#2", ...)."""

    t: float
    manager: str
    source: str
    event: str
    dest: str
    reason: str


@dataclass(frozen=True, slots=True)
class Check:
    """An invariant of the whole day (no disconnect, one client id, no fast close, every Gap
    followed by prices, no fill delivered twice...)."""

    text: str
    ok: bool


@dataclass(frozen=True, slots=True)
class DayReport:
    phases: tuple[Phase, ...]
    timeline: tuple[TimelineRow, ...]
    summary: tuple[str, ...]
    ok: bool
