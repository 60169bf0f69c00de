"""The demo's two views of the same day: plain lines (logs, CI) and a live rich panel.

Both get the same calls in the same order (`DemoView`); neither decides anything.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from fsm import ConnectionManager, Settings
from fsm.cli.demo.record import DayReport, Kind, Phase, Status
from fsm.cli.demo.trading import OrderDesk, Outcome, QuoteTape, describe_quote
from fsm.cli.text import state_style
from gatewaysim import GatewaySim

TIMELINE_TITLE = (
    "timeline (t = seconds since the demo started; #1 the trader, #2 the trader after its restart)"
)


class DemoView(Protocol):
    def start(self, settings: Settings, sim: GatewaySim, tg: anyio.abc.TaskGroup) -> None:
        """The simulator is up; the day begins (`tg` lives as long as the day)."""

    def watch(self, manager: ConnectionManager) -> None:
        """`manager` is now the trader's (the trader restarts once)."""

    def follow(self, tape: QuoteTape, desk: OrderDesk) -> None:
        """The trader's quote stream and orders (their lines come through `line` too)."""

    def line(self, t: float, text: str, kind: Kind) -> None:
        """One line of the story, at `t` seconds since the demo started."""

    def phase(self, phase: Phase) -> None:
        """A step started or ended."""

    def stop(self) -> None:
        """The day is over (or broke off): give the terminal back."""

    def final(self, report: DayReport) -> None:
        """The timeline, the steps and the summary."""


# Lines the script itself speaks stand out; what it observes is indented.
_UNINDENTED = frozenset({Kind.ACTION, Kind.DOCTOR})


class PlainView:
    """Plain lines: for logs and CI. Same facts as the live view."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self._write = write or (lambda s: print(s, flush=True))

    def start(self, settings: Settings, sim: GatewaySim, tg: anyio.abc.TaskGroup) -> None:
        s = settings
        self._write(
            f"ibgw demo: simulated Gateway on {s.host}:{s.port}, client id {s.client_id}, "
            f"probe every {s.probe_interval:g} s, handshake budget {s.handshake_timeout:g} s, "
            f"readonly={s.readonly}"
        )

    def watch(self, manager: ConnectionManager) -> None:
        pass

    def follow(self, tape: QuoteTape, desk: OrderDesk) -> None:
        pass

    def line(self, t: float, text: str, kind: Kind) -> None:
        self._write(f"[{t:7.3f}] {'' if kind in _UNINDENTED else '   '}{text}")

    def phase(self, phase: Phase) -> None:
        p = phase
        if p.status == Status.RUNNING:
            self._write(f"[{p.at:7.3f}] == step {p.number}/{p.of} {p.title}: {p.goal}")
        else:
            self._write(f"[{p.at:7.3f}] == step {p.number}/{p.of} {p.title}: {p.status} — {p.detail}")

    def stop(self) -> None:
        pass

    def final(self, report: DayReport) -> None:
        w = self._write
        w("")
        w(TIMELINE_TITLE)
        w(f"{'t':>8}  mgr  {'from':<13} {'event':<22} {'to':<13} reason")
        for r in report.timeline:
            w(f"{r.t:8.3f}  {r.manager:<3}  {r.source:<13} {r.event:<22} {r.dest:<13} {r.reason}")
        w("")
        w("steps")
        for p in report.phases:
            w(f"  {p.number}. {p.title:<36} {p.status:<7} {p.detail}")
        w("")
        w("summary")
        for line in report.summary:
            w(f"  {line}")


_STYLE: dict[Kind, str] = {
    Kind.TRANSITION: "bold",
    Kind.NOTICE: "yellow",
    Kind.SIM: "cyan",
    Kind.ACTION: "magenta",
    Kind.CHILD: "dim",
    Kind.DOCTOR: "red",
    Kind.QUOTE: "green",
    Kind.ORDER: "blue",
}
STALE_QUOTE = 0.5  # s without a quote before the live view says the flow has stopped


class LiveView:
    """A rich live panel while the day plays, then the same timeline and summary as tables."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self._log: deque[str] = deque(maxlen=16)
        self._live: Live | None = None
        self._settings: Settings | None = None
        self._sim: GatewaySim | None = None
        self._manager: ConnectionManager | None = None
        self._phase: Phase | None = None
        self._tape: QuoteTape | None = None
        self._desk: OrderDesk | None = None

    def start(self, settings: Settings, sim: GatewaySim, tg: anyio.abc.TaskGroup) -> None:
        self._settings, self._sim = settings, sim
        self._live = Live(self._render(), console=self.console, auto_refresh=False, transient=True)
        self._live.start()
        tg.start_soon(self._ticker)

    def watch(self, manager: ConnectionManager) -> None:
        self._manager = manager
        self._refresh()

    def follow(self, tape: QuoteTape, desk: OrderDesk) -> None:
        self._tape, self._desk = tape, desk
        self._refresh()

    async def _ticker(self) -> None:
        while self._live is not None:
            self._refresh()
            await anyio.sleep(0.1)  # screen refresh rate, not synchronisation

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render(), refresh=True)

    def line(self, t: float, text: str, kind: Kind) -> None:
        self._log.append(f"[dim]{t:7.3f}[/] [{_STYLE[kind]}]{escape(text)}[/]")
        self._refresh()

    def phase(self, phase: Phase) -> None:
        p = self._phase = phase
        if p.status != Status.RUNNING:
            mark = "[green]✓[/]" if p.status == Status.OK else "[red]✗[/]"
            self.console.print(
                f"{mark} step {p.number}/{p.of} [bold]{escape(p.title)}[/]: {escape(p.detail)}"
            )
        self._refresh()

    def _render(self) -> Panel:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right", style="bold")
        grid.add_column()
        p = self._phase
        grid.add_row("step", escape(f"{p.number}/{p.of} {p.title} — {p.goal}") if p else "starting")
        m = self._manager
        if m is not None:
            hist = m.history
            state = str(m.state)
            entered = hist[-1].at_ns if hist else time.monotonic_ns()
            dwell = (time.monotonic_ns() - entered) / 1e9
            grid.add_row(
                "state",
                f"[{state_style(state)}]{state}[/]   reason {m.reason or '-'}   for {dwell:5.1f} s",
            )
            grid.add_row("worker", f"pid {m.worker_pid or '-'}   client id {m.client_id}")
        sim = self._sim
        if sim is not None:
            light = "[bold green]● GREEN[/]" if sim.green else "[bold red]● RED[/]"
            upstream = "" if sim.upstream_connected else "   [yellow]upstream lost (1100)[/]"
            grid.add_row(
                "Gateway API",
                f"{light}{upstream}   sessions {len(sim.sessions)}   "
                f"handshakes {sim.counters.handshakes}   "
                f"326s {sim.counters.sent_326}",
            )
        tape = self._tape
        if tape is not None:
            grid.add_row(f"quotes {tape.symbol}", _tape_row(tape))
        desk = self._desk
        if desk is not None:
            grid.add_row("orders", _desk_row(desk, self._settings))
        body = Group(grid, "", *self._log)
        return Panel(body, title="ibgw demo — a day at the (simulated) Gateway", border_style="blue")

    def stop(self) -> None:
        if self._live is not None:
            live, self._live = self._live, None
            live.stop()

    def final(self, report: DayReport) -> None:
        con = self.console
        t = Table(title=TIMELINE_TITLE)
        t.add_column("t", justify="right")
        for col in ("mgr", "from", "event", "to", "reason"):
            t.add_column(col)
        for r in report.timeline:
            t.add_row(
                f"{r.t:.3f}", r.manager, r.source, r.event, f"[{state_style(r.dest)}]{r.dest}[/]", r.reason
            )
        con.print(t)
        steps = Table(title="steps")
        for col in ("#", "step", "result", "detail"):
            steps.add_column(col)
        for p in report.phases:
            res = "[green]ok[/]" if p.status == Status.OK else f"[red]{p.status}[/]"
            steps.add_row(str(p.number), escape(p.title), res, escape(p.detail))
        con.print(steps)
        con.print("[bold]summary[/]")
        for line in report.summary:
            style = ""
            good = ("disconnects issued: 0", "client ids used: exactly one", "verdict: every")
            if line.startswith(good) or (line.startswith("fills:") and line.endswith("delivered twice: 0")):
                style = "green"
            elif "FAILED" in line or "NOT" in line:
                style = "red"
            con.print(f"  [{style}]{escape(line)}[/]" if style else f"  {escape(line)}", highlight=False)


def _tape_row(tape: QuoteTape) -> str:
    gaps = tape.gaps
    counts = f"{tape.quotes} quotes   Gaps {len(gaps)}" + (f" (last: {gaps[-1].reason})" if gaps else "")
    if tape.last is None or tape.last_ns is None:
        return "[dim]not subscribed yet[/]"
    quote = escape(describe_quote(tape.last))
    if tape.ended is not None:
        return f"[dim]{quote}   {counts}   {escape(tape.ended)}[/]"
    quiet = (time.monotonic_ns() - tape.last_ns) / 1e9
    flow = "[green]flowing[/]" if quiet < STALE_QUOTE else f"[yellow]no quote for {quiet:4.1f} s[/]"
    return f"{quote}   {counts}   {flow}"


def _desk_row(desk: OrderDesk, settings: Settings | None) -> str:
    ro = "" if settings is None else f"readonly={settings.readonly}   "
    return (
        f"{ro}placed {desk.placed}   resolved after a crash {desk.count(Outcome.RESOLVED)}   "
        f"not placed {desk.count(Outcome.NOT_PLACED)}   "
        f"fills delivered {desk.fills_delivered} (twice: {desk.delivered_twice})"
    )
