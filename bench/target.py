"""A figure's target as a value: it renders its own text and judges a measurement."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass(frozen=True, slots=True)
class Target:
    """`stat op limit`: the limit is `value unit` (absolute), `value x baseline` (a multiple of the
    baseline's median) or `baseline + value unit` (an allowance over it)."""

    op: Literal["<=", ">="]
    value: float
    unit: str  # "x": a multiple of the baseline; otherwise the figure's unit
    baseline: str | None = None  # what the limit is relative to (its median); None: absolute
    stat: str = "median"  # the number judged

    def __post_init__(self) -> None:
        if self.unit == "x" and self.baseline is None:
            raise ValueError("a ratio target needs a baseline")

    def render(self) -> str:
        if self.unit == "x":
            limit = f"{self.value:g} x {self.baseline}"
        elif self.baseline is not None:
            limit = f"{self.baseline} + {_num(self.value)} {self.unit}"
        else:
            limit = f"{_num(self.value)} {self.unit}"
        return f"{self.stat} {self.op} {limit}"

    def met(self, x: float) -> bool:
        """`x` is the judged number in the target's terms: the ratio for "x", the excess over the
        baseline for an allowance, else the statistic itself."""
        return x <= self.value if self.op == "<=" else x >= self.value

    def show(self, x: float) -> str:
        """The judged number as the target reads it."""
        if self.unit == "x":
            return f"{x:.3f} x"
        if self.baseline is not None:
            return f"{x:+.1f} {self.unit}"
        return f"{fmt(x, self.unit)} {self.unit}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "text": self.render()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        return cls(d["op"], d["value"], d["unit"], d.get("baseline"), d.get("stat", "median"))


def _num(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:g}"


def fmt(value: float | None, unit: str) -> str:
    """Human number in the figure's unit: three significant digits, thousands separators."""
    if value is None:
        return "—"
    if unit in ("events/s", "req/s", "ticks/s"):
        return f"{value:,.0f}"
    if unit == "MiB":
        return f"{value:.1f}"
    if unit == "s":
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"
