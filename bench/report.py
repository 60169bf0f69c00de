"""Figure records, the rich table, the JSON file and the README block."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import Summary, summarize

PASS, MISS, INFO = "PASS", "MISS", "info"
NA = "n/a"  # not measured in this run: left out by --only (itself or a group it needs)
ERROR = "error"  # its group raised: the run exits 1

README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"


@dataclass
class Figure:
    """One row of the report: a measured series, its baseline(s), a ratio and a verdict."""

    key: str
    title: str
    unit: str
    target: str
    baseline_label: str = "—"
    value: Summary | None = None
    baseline: Summary | None = None
    baseline_unit: str | None = None
    others: dict[str, Summary] = field(default_factory=dict)
    ratio: float | None = None
    ratio_label: str = ""
    status: str = NA
    reason: str | None = None
    notes: list[str] = field(default_factory=list)
    extra: dict[str, float | int | str] = field(default_factory=dict)

    def judge(self, ok: bool) -> None:
        self.status = PASS if ok else MISS

    def measured(self, samples: Sequence[float]) -> Summary:
        """Set the value from a series of samples; returns its summary."""
        self.value = summarize(samples)
        return self.value

    def compared(self, samples: Sequence[float], baseline: Sequence[float]) -> float:
        """Set the value and the baseline; returns (and sets) the ratio of their medians."""
        value = self.measured(samples)
        self.baseline = summarize(baseline)
        self.ratio = value.median / self.baseline.median
        return self.ratio

    def unmeasured(self, status: str, reason: str) -> None:
        """No value in this run (NA or ERROR), and why."""
        self.status = status
        self.reason = reason
        self.value = self.baseline = None
        self.ratio = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "target": self.target,
            "status": self.status,
            "reason": self.reason,
            "value": self.value.to_dict() if self.value else None,
            "baseline_label": self.baseline_label,
            "baseline_unit": self.baseline_unit or self.unit,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "other_baselines": {k: v.to_dict() for k, v in self.others.items()},
            "ratio": self.ratio,
            "ratio_label": self.ratio_label,
            "notes": list(self.notes),
            "extra": dict(self.extra),
        }


def fmt(value: float | None, unit: str) -> str:
    """Human number in the figure's unit: three significant digits, thousands separators."""
    if value is None:
        return "—"
    if unit in ("events/s", "req/s"):
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


def _row(fig: Figure) -> list[str]:
    bunit = fig.baseline_unit or fig.unit
    if fig.value is None:
        cells = ["—"] * 4
    else:
        v = fig.value
        cells = [fmt(v.median, fig.unit), fmt(v.p90, fig.unit), fmt(v.p99, fig.unit), str(v.n)]
    base = "—" if fig.baseline is None else f"{fmt(fig.baseline.median, bunit)} {bunit}"
    ratio = "—" if fig.ratio is None else f"{fig.ratio:.2f}"
    reason = fig.reason or ""
    if len(reason) > 60:
        reason = reason[:57] + "..."
    result = f"{fig.status} ({reason})" if fig.status in (NA, ERROR) else fig.status
    return [f"{fig.title} [{fig.unit}]", *cells, base, ratio, fig.target, result]


HEADERS = ["figure [unit]", "median", "p90", "p99", "n", "baseline (median)", "ratio", "target", "result"]


def notes_lines(figures: list[Figure]) -> list[str]:
    """Per-figure notes: baselines in full, what the ratio is, throttle bypasses, extras."""
    out = []
    for fig in figures:
        if fig.status == NA and fig.reason and fig.reason.startswith("not selected"):
            continue
        parts = []
        if fig.status in (NA, ERROR) and fig.reason and len(fig.reason) > 60:
            parts.append(f"{fig.status}: {fig.reason}")
        if fig.baseline_label and fig.baseline_label != "—":
            parts.append(f"baseline: {fig.baseline_label}")
        if fig.ratio_label:
            parts.append(f"ratio = {fig.ratio_label}")
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
    lines.append("Notes (per figure: the baseline, what the ratio is, breakdowns):")
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
    out = []
    for d in doc["figures"]:
        fig = Figure(
            key=d["key"],
            title=d["title"],
            unit=d["unit"],
            target=d["target"],
            baseline_label=d.get("baseline_label", "—"),
        )
        fig.value = Summary(**d["value"]) if d.get("value") else None
        fig.baseline = Summary(**d["baseline"]) if d.get("baseline") else None
        fig.baseline_unit = d.get("baseline_unit")
        fig.others = {k: Summary(**v) for k, v in d.get("other_baselines", {}).items()}
        fig.ratio = d.get("ratio")
        fig.ratio_label = d.get("ratio_label", "")
        fig.status = d["status"]
        fig.reason = d.get("reason")
        fig.notes = list(d.get("notes", []))
        fig.extra = dict(d.get("extra", {}))
        out.append(fig)
    return out


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
