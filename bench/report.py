"""Figure records, the rich table, the JSON file and the README block."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import Summary, summarize
from .target import Target, fmt

PASS, MISS, INFO = "PASS", "MISS", "info"
NA = "n/a"  # not measured in this run: left out by --only (itself or a group it needs)
ERROR = "error"  # its group raised: the run exits 1

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


@dataclass
class Figure:
    """One row of the report: a measured series, its baseline(s), the number its target judges
    and the verdict."""

    key: str
    title: str
    unit: str
    target: Target | None  # None: reported, not judged
    baseline_label: str = "—"
    value: Summary | None = None
    baseline: Summary | None = None
    baseline_unit: str | None = None
    others: dict[str, Summary] = field(default_factory=dict)
    judged: float | None = None  # the number the target judges, in its terms (Target.met)
    status: str = NA
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def judge(self, x: float) -> None:
        """Record the judged number and the verdict of the target on it."""
        if self.target is None:
            raise ValueError(f"{self.key} has no target to judge against")
        self.judged = x
        self.status = PASS if self.target.met(x) else MISS

    def measured(self, samples: Sequence[float]) -> Summary:
        """Set the value from a series of samples; returns its summary."""
        self.value = summarize(samples)
        return self.value

    def compared(self, samples: Sequence[float], baseline: Sequence[float]) -> float:
        """Set the value and the baseline; returns the ratio of their medians."""
        value = self.measured(samples)
        self.baseline = summarize(baseline)
        return value.median / self.baseline.median

    def unmeasured(self, status: str, reason: str) -> None:
        """No value in this run (NA or ERROR), and why."""
        self.status = status
        self.reason = reason
        self.value = self.baseline = None
        self.judged = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "target": self.target.to_dict() if self.target else None,
            "status": self.status,
            "reason": self.reason,
            "value": self.value.to_dict() if self.value else None,
            "baseline_label": self.baseline_label,
            "baseline_unit": self.baseline_unit or self.unit,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "other_baselines": {k: v.to_dict() for k, v in self.others.items()},
            "judged": self.judged,
            "notes": list(self.notes),
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Figure:
        """Rebuild a figure from to_dict()'s output (for `--from-json`)."""
        return cls(
            key=d["key"],
            title=d["title"],
            unit=d["unit"],
            target=Target.from_dict(d["target"]) if d.get("target") else None,
            baseline_label=d.get("baseline_label", "—"),
            value=Summary(**d["value"]) if d.get("value") else None,
            baseline=Summary(**d["baseline"]) if d.get("baseline") else None,
            baseline_unit=d.get("baseline_unit"),
            others={k: Summary(**v) for k, v in d.get("other_baselines", {}).items()},
            judged=d.get("judged"),
            status=d["status"],
            reason=d.get("reason"),
            notes=list(d.get("notes", [])),
            extra=dict(d.get("extra", {})),
        )


def _row(fig: Figure) -> list[str]:
    bunit = fig.baseline_unit or fig.unit
    if fig.value is None:
        cells = ["—"] * 4
    else:
        v = fig.value
        cells = [fmt(v.median, fig.unit), fmt(v.p90, fig.unit), fmt(v.p99, fig.unit), str(v.n)]
    base = "—" if fig.baseline is None else f"{fmt(fig.baseline.median, bunit)} {bunit}"
    if fig.target is not None and fig.judged is not None:
        judged = fig.target.show(fig.judged)
    elif fig.value is not None and fig.baseline is not None and bunit == fig.unit:
        judged = f"{fig.value.median / fig.baseline.median:.2f} x"  # context for a report-only row
    else:
        judged = "—"
    reason = fig.reason or ""
    if len(reason) > 60:
        reason = reason[:57] + "..."
    result = f"{fig.status} ({reason})" if fig.status in (NA, ERROR) else fig.status
    target = fig.target.render() if fig.target else "report"
    return [f"{fig.title} [{fig.unit}]", *cells, base, judged, target, result]


HEADERS = ["figure [unit]", "median", "p90", "p99", "n", "baseline (median)", "vs target", "target", "result"]


def notes_lines(figures: list[Figure]) -> list[str]:
    """Per-figure notes: baselines in full, other baselines, extras, then free notes."""
    out = []
    for fig in figures:
        if fig.status == NA and fig.reason and fig.reason.startswith("not selected"):
            continue
        parts = []
        if fig.status in (NA, ERROR) and fig.reason and len(fig.reason) > 60:
            parts.append(f"{fig.status}: {fig.reason}")
        if fig.baseline_label and fig.baseline_label != "—":
            parts.append(f"baseline: {fig.baseline_label}")
        for name, s in fig.others.items():
            parts.append(
                f"{name}: median {fmt(s.median, fig.unit)} p90 {fmt(s.p90, fig.unit)} "
                f"p99 {fmt(s.p99, fig.unit)} n {s.n}"
            )
        for k, v in fig.extra.items():
            parts.append(f"{k} = {fmt(v, '') if isinstance(v, float) else v}")
        parts.extend(fig.notes)
        if parts:
            out.append(f"{fig.key}: " + "; ".join(parts))
    return out


def print_table(figures: list[Figure], meta: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=200)
    table = Table(
        title=f"ibgw-fsm bench — {meta['date']} — {meta['cores']} cores, "
        f"load {meta.get('load_before', '?')} — "
        f"{'quick' if meta.get('quick') else 'full'} run"
    )
    for h in HEADERS:
        table.add_column(h, overflow="fold", no_wrap=h == HEADERS[0])
    styles = {PASS: "green", MISS: "bold red", NA: "yellow", INFO: "cyan", ERROR: "bold red"}
    for fig in figures:
        cells = [escape(c) for c in _row(fig)]
        style = styles.get(fig.status)
        if style:
            cells[-1] = f"[{style}]{cells[-1]}[/]"
        table.add_row(*cells)
    console.print(table)
    for line in notes_lines(figures):
        console.print(f"  • {escape(line)}", highlight=False, soft_wrap=True)
    for line in meta.get("notes", []):
        console.print(f"  • {escape(line)}", highlight=False, soft_wrap=True)


def markdown_table(figures: list[Figure], meta: dict[str, Any]) -> str:
    """The README block: date, cores, load, the table, then the notes."""
    lines = [
        f"Measured {meta['date']} on {meta['cores']} cores "
        f"({meta['python'].split(' (')[0]}, ib_async {meta.get('ib_async', '?')}, "
        f"anyio backend {meta.get('backend', 'asyncio')}, "
        f"load average before the run {meta.get('load_before', '?')}, "
        f"{'quick' if meta.get('quick') else 'full'} run, {meta.get('duration_s', 0):.0f} s). "
        "Every baseline was measured in the same run, interleaved with the figure; "
        "`python -m bench` reproduces it.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    for fig in figures:
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _row(fig)) + " |")
    lines.append("")
    lines.append("Notes (per figure: how the baseline is measured, other baselines, breakdowns):")
    lines.append("")
    for note in [*notes_lines(figures), *meta.get("notes", [])]:
        key, sep, rest = note.partition(": ")
        bold = sep and key.replace("_", "").isalnum() and key.islower()
        lines.append(f"- **{key}**: {rest}" if bold else f"- {note}")
    return "\n".join(lines)


def write_json(path: Path, figures: list[Figure], meta: dict[str, Any]) -> None:
    doc = {"meta": meta, "figures": [f.to_dict() for f in figures]}
    path.write_text(json.dumps(doc, indent=2) + "\n")


def figures_from_json(doc: dict[str, Any]) -> list[Figure]:
    """Rebuild figures from a saved JSON (for `--update-readme --from-json`)."""
    return [Figure.from_dict(d) for d in doc["figures"]]


def update_readme(readme: Path, block: str) -> bool:
    """Rewrite only the text between the bench markers; False if the file or markers are missing."""
    try:
        text = readme.read_text()
    except FileNotFoundError:
        return False
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END), re.S)
    if not pattern.search(text):
        return False
    new = pattern.sub(lambda _m: f"{README_BEGIN}\n{block}\n{README_END}", text, count=1)
    readme.write_text(new)
    return True
