"""Terminal rendering for `ibgw status` and `ibgw doctor`: rich on a terminal, plain lines otherwise.

Plain lines carry the same facts, so logs, CI and `grep` see what a person sees. Every value
shown comes from a file or the process table and goes through `printable` first; on a terminal
it is handed to rich as Text, never as markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fsm.cli.doctor import Level, Report, who
from fsm.cli.text import in_state_for, printable, state_style


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _num(counters: dict[str, Any], key: str) -> str:
    v = counters.get(key)
    return "-" if v is None else printable(v)


def _maintenance_row(snap: dict[str, Any]) -> list[tuple[str, str]]:
    """Inside a maintenance window: which one, and whether the last state change was expected
    (IB's reset or the Gateway's restart, not an alarm). Nothing outside a window; "was inside"
    for a manager no longer running (its snapshot tells how it ended, not what holds now)."""
    window = snap.get("maintenance_window")
    if not window:
        return []
    where = "inside" if snap.get("manager_alive") is True else "was inside"
    tag = (
        "the last state change was expected (no alarm)"
        if snap.get("expected") is True
        else "the last state change was not tagged expected"
    )
    return [("maintenance", f"{where} {printable(window)}; {tag}")]


def _status_lines(snap: dict[str, Any]) -> list[tuple[str, str]]:
    """The facts a person asks first (each one printable); `--json` has every counter."""
    alive = snap.get("manager_alive")
    mpid = printable(snap.get("manager_pid"))
    manager = f"{mpid} ({'alive' if alive else 'stopped' if snap.get('stopped') else 'gone'})"
    c = snap.get("counters") or {}
    if not isinstance(c, dict):
        c = {}
    rows = [
        ("gateway", f"{printable(snap.get('host', '?'))}:{printable(snap.get('port', '?'))}"),
        ("client id", printable(snap.get("client_id", "?"))),
        ("state", printable(snap.get("state", "?"))),
        ("reason", printable(snap.get("reason") or "-")),
        *_maintenance_row(snap),
        ("in state for", in_state_for(snap) or "?"),
        ("worker pid", printable(snap.get("worker_pid") or "-")),
        ("manager pid", manager),
        (
            "sessions",
            f"{_num(c, 'sessions')} (attempts {_num(c, 'attempts')}, "
            f"retries {_num(c, 'retries')}, workers spawned {_num(c, 'workers_spawned')})",
        ),
        (
            "trouble",
            f"DEGRADED_RED episodes {_num(c, 'red_episodes')}, 326s {_num(c, 'client_id_in_use')}, "
            f"handshake timeouts {_num(c, 'handshake_timeouts')}, "
            f"zombies reaped {_num(c, 'zombies_reaped') if 'zombies_reaped' in c else 0}",
        ),
    ]
    lat = c.get("last_handshake_latency_ns")
    if isinstance(lat, (int, float)):
        rows.append(("last handshake", f"{lat / 1e6:.1f} ms"))
    times = {
        k[len("time_in_") : -2]: v
        for k, v in c.items()
        if isinstance(k, str)
        and k.startswith("time_in_")
        and k.endswith("_s")
        and isinstance(v, (int, float))
    }
    if times:
        order = ("SPAWNING", "HANDSHAKING", "CONNECTED", "DEGRADED_RED")
        rows.append(("time in state", ", ".join(f"{k} {times[k]:.1f} s" for k in order if k in times)))
    for key, title in (("last_error", "last error"), ("warning", "warning")):
        if snap.get(key):
            rows.append((title, printable(snap[key])))
    rows.append(("snapshot", printable(snap.get("path", ""))))
    return rows


def print_status(snaps: list[dict[str, Any]], state_dir: Path) -> None:
    """One block per manager snapshot."""
    if not snaps:
        click.echo(f"no manager status snapshot in {printable(state_dir)}")
        return
    con = _console()
    for snap in snaps:
        rows = _status_lines(snap)
        if con.is_terminal:
            t = Table(show_header=False, box=None, pad_edge=False)
            t.add_column(style="bold")
            t.add_column()
            for k, v in rows:
                style = state_style(v) if k == "state" else "yellow" if k == "maintenance" else ""
                t.add_row(k, Text(v, style=style))
            con.print(t)
            con.print()
        else:
            for k, v in rows:
                click.echo(f"{k:<16} {v}")
            click.echo("")


def render_plain(report: Report) -> list[str]:
    """The doctor's report as plain lines: the same facts the rich view shows."""
    lines = [
        f"ibgw doctor — port {report.port}, state dir {printable(report.state_dir)} (passive: no connection made)",
        f"listening: {len(report.listeners)}  client sockets: {len(report.client_sockets)}  "
        f"gateway-side sockets: {len(report.gateway_sockets)}  locks: {len(report.locks)}  "
        f"managers: {len(report.managers)}",
    ]
    for r in report.listeners + report.client_sockets + report.gateway_sockets:
        lines.append(
            f"  {r.side:<8} {r.status:<12} {r.laddr:<22} {r.raddr:<22} {printable(who(r.owner))} "
            f"[{printable(r.owner.status)}]{' ours' if r.owner.ours else ''}"
        )
    mark = {Level.OK: "ok  ", Level.NOTE: "note", Level.ATTENTION: "FIX "}
    for fd in report.findings:
        lines.append(f"{mark[fd.level]} {printable(fd.message)}")
    lines.append(report.verdict)
    return lines


def print_doctor(report: Report) -> None:
    """The checklist: sockets table, findings, verdict line."""
    con = _console()
    if not con.is_terminal:
        for line in render_plain(report):
            click.echo(line)
        return
    con.print(
        Text.assemble(
            ("ibgw doctor", "bold"),
            f" — port {report.port}, state dir {printable(report.state_dir)} ",
            ("(passive: no connection made)", "dim"),
        )
    )
    rows = report.listeners + report.client_sockets + report.gateway_sockets
    if rows:
        t = Table(title=f"TCP sockets on port {report.port}")
        for col in ("side", "state", "local", "remote", "owner", "process state", "ours"):
            t.add_column(col)
        for r in rows:
            o = r.owner
            t.add_row(
                r.side,
                Text(r.status, style="bold red" if r.status == "CLOSE_WAIT" else ""),
                r.laddr,
                r.raddr,
                Text(printable(f"{o.pid} {o.name}" + (f" {o.label}" if o.label else ""))),
                Text(printable(o.status)),
                "yes" if o.ours else "",
            )
        con.print(t)
    mark = {
        Level.OK: ("ok  ", "green"),
        Level.NOTE: ("note", "yellow"),
        Level.ATTENTION: ("FIX ", "bold red"),
    }
    for f in report.findings:
        con.print(Text.assemble(mark[f.level], " ", printable(f.message)))
    con.print(Text(report.verdict, style="bold green" if report.healthy else "bold red"))
