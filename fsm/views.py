"""Terminal rendering for `ibgw status` and `ibgw doctor`: rich on a terminal, plain lines otherwise.

Plain lines carry the same facts, so logs, CI and `grep` see what a person sees.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from fsm.doctor import ATTENTION, NOTE, OK, Report, render_plain

STATE_STYLE = {
    "IDLE": "dim",
    "SPAWNING": "cyan",
    "HANDSHAKING": "yellow",
    "CONNECTED": "bold green",
    "DEGRADED_RED": "bold red",
}


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def state_text(state: str) -> str:
    """Rich markup for a state name, coloured by health."""
    return f"[{STATE_STYLE.get(state, 'white')}]{state}[/]"


def _age(snap: dict[str, Any]) -> str:
    since = snap.get("since_wall", snap.get("since"))
    if isinstance(since, (int, float)) and since > 1e9:
        return f"{max(0.0, time.time() - since):.1f} s"
    return "?"


def _num(counters: dict[str, Any], key: str) -> str:
    v = counters.get(key)
    return "-" if v is None else str(v)


def _status_lines(snap: dict[str, Any]) -> list[tuple[str, str]]:
    """The facts a person asks first; `--json` has every counter."""
    alive = snap.get("manager_alive")
    mpid = snap.get("manager_pid")
    manager = f"{mpid} ({'alive' if alive else 'stopped' if snap.get('stopped') else 'gone'})"
    c = snap.get("counters") or {}
    if not isinstance(c, dict):
        c = {}
    rows = [
        ("gateway", f"{snap.get('host', '?')}:{snap.get('port', '?')}"),
        ("client id", str(snap.get("client_id", "?"))),
        ("state", str(snap.get("state", "?"))),
        ("reason", str(snap.get("reason") or "-")),
        ("in state for", _age(snap)),
        ("worker pid", str(snap.get("worker_pid") or "-")),
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
        if k.startswith("time_in_") and k.endswith("_s") and isinstance(v, (int, float))
    }
    if times:
        order = ("SPAWNING", "HANDSHAKING", "CONNECTED", "DEGRADED_RED")
        rows.append(("time in state", ", ".join(f"{k} {times[k]:.1f} s" for k in order if k in times)))
    rows.append(("snapshot", str(snap.get("path", ""))))
    return rows


def print_status(snaps: list[dict[str, Any]], state_dir: Path) -> None:
    """One block per manager snapshot."""
    if not snaps:
        click.echo(f"no manager status snapshot in {state_dir}")
        return
    con = _console()
    for snap in snaps:
        rows = _status_lines(snap)
        if con.is_terminal:
            t = Table(show_header=False, box=None, pad_edge=False)
            t.add_column(style="bold")
            t.add_column()
            for k, v in rows:
                t.add_row(k, state_text(v) if k == "state" else v)
            con.print(t)
            con.print()
        else:
            for k, v in rows:
                click.echo(f"{k:<16} {v}")
            click.echo("")


def print_doctor(report: Report) -> None:
    """The checklist: sockets table, findings, verdict line."""
    con = _console()
    if not con.is_terminal:
        for line in render_plain(report):
            click.echo(line)
        return
    con.print(
        f"[bold]ibgw doctor[/] — port {report.port}, state dir {report.state_dir} "
        f"[dim](passive: no connection made)[/]"
    )
    rows = report.listeners + report.client_sockets + report.gateway_sockets
    if rows:
        t = Table(title=f"TCP sockets on port {report.port}")
        for col in ("side", "state", "local", "remote", "owner", "process state", "ours"):
            t.add_column(col)
        for r in rows:
            o = r.owner
            st = f"[bold red]{r.status}[/]" if r.status == "CLOSE_WAIT" else r.status
            who = f"{o.pid} {o.name}" + (f" {o.label}" if o.label else "")
            t.add_row(r.side, st, r.laddr, r.raddr, who, o.status, "yes" if o.ours else "")
        con.print(t)
    mark = {OK: "[green]ok  [/]", NOTE: "[yellow]note[/]", ATTENTION: "[bold red]FIX [/]"}
    for f in report.findings:
        con.print(f"{mark[f.level]} {f.message}")
    style = "bold green" if report.healthy else "bold red"
    con.print(f"[{style}]{report.verdict}[/]")
