"""`ibgw doctor`: the original report's by-hand lsof checklist, automated and strictly passive.

It reads the kernel's socket table and process list (psutil), the lock files and status
snapshots in the state directory — and nothing else. It never opens a connection to the
Gateway, not even a bare TCP connect: a connectivity pre-test was one of the ways the original
system turned the Gateway's API layer RED. What is alive and what is ours is judged by the same
functions the manager acts on (fsm.pids, fsm.lockfile, fsm.zombies), never by a rule of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import msgspec
import psutil

from fsm.cli.text import in_state_for
from fsm.lockfile import read_lock
from fsm.pids import MANAGER_ENV, ProcessId, is_our_worker, label_of, pid_alive, worker_label
from fsm.statedir import UntrustedFile, ensure_state_dir
from fsm.status import UNKNOWN, read_all
from fsm.zombies import find_stale_worker


class Level(StrEnum):
    OK = "ok"
    NOTE = "note"
    ATTENTION = "attention"


@dataclass(slots=True)
class Owner:
    """Who owns a socket, as far as the OS tells us."""

    pid: int | None
    name: str = "?"
    cmdline: str = ""
    status: str = "?"  # psutil status: running, sleeping, stopped, zombie, ...
    ours: bool = False  # this user's `python -m worker --label ibgw-fsm:...`
    label: str | None = None
    manager_alive: bool | None = None  # None: the worker does not name its manager


@dataclass(slots=True)
class SocketRow:
    """One TCP socket touching the port: a listener, a client end, or the Gateway's end."""

    side: str  # "listen" | "client" | "gateway"
    laddr: str
    raddr: str
    status: str
    owner: Owner


@dataclass(slots=True)
class LockRow:
    """A manager lock file: what it names, who of that is alive, or why it cannot be read."""

    path: str
    problem: str | None = None  # one line: why the file is not a lock record we can trust
    manager_pid: int | None = None
    manager_alive: bool = False
    worker_pid: int | None = None
    worker_alive: bool = False
    worker_ours: bool = False
    worker_stale: bool = False  # provably the dead manager's worker: the next manager ends it
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Finding:
    level: Level
    message: str


@dataclass(slots=True)
class Report:
    port: int
    state_dir: str
    listeners: list[SocketRow] = field(default_factory=list)
    client_sockets: list[SocketRow] = field(default_factory=list)
    gateway_sockets: list[SocketRow] = field(default_factory=list)
    locks: list[LockRow] = field(default_factory=list)
    managers: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(f.level == Level.ATTENTION for f in self.findings)

    @property
    def verdict(self) -> str:
        bad = [f for f in self.findings if f.level == Level.ATTENTION]
        if not bad:
            return f"verdict: healthy — port {self.port} is listening and nothing needs attention"
        return f"verdict: needs attention — {len(bad)} problem(s) on port {self.port}"

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["healthy"] = self.healthy
        out["verdict"] = self.verdict
        return out


# ------------------------------------------------------------------------------------ reading
def _owner(pid: int | None, cache: dict[int, Owner]) -> Owner:
    if pid is None:
        return Owner(pid=None, name="(not visible to this user)")
    if pid in cache:
        return cache[pid]
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            cmd = proc.cmdline()
            owner = Owner(pid=pid, name=proc.name(), cmdline=" ".join(cmd), status=proc.status())
            if is_our_worker(proc):
                owner.ours, owner.label = True, label_of(cmd)
                owner.manager_alive = _manager_alive(proc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        owner = Owner(pid=pid, name="(exited)", status="gone")
    except psutil.AccessDenied:
        owner = Owner(pid=pid, name="(access denied)")
    cache[pid] = owner
    return owner


def _manager_alive(worker: psutil.Process) -> bool | None:
    """Is the manager that spawned `worker` (named in its environment) still running?"""
    try:
        manager = ProcessId.from_marker(worker.environ().get(MANAGER_ENV, ""))
    except psutil.Error:
        return None
    return None if manager is None else pid_alive(manager.pid, manager.create_time)


def _addr(a: Any) -> str:
    if not a:
        return "-"
    host = f"[{a.ip}]" if ":" in a.ip else a.ip
    return f"{host}:{a.port}"


def scan_sockets(port: int) -> tuple[list[SocketRow], list[SocketRow], list[SocketRow]]:
    """Every TCP socket on this machine that listens on, connects to, or is served by `port`."""
    cache: dict[int, Owner] = {}
    listeners: list[SocketRow] = []
    clients: list[SocketRow] = []
    gateway: list[SocketRow] = []
    for c in psutil.net_connections(kind="tcp"):
        lport = c.laddr.port if c.laddr else None
        rport = c.raddr.port if c.raddr else None
        if c.status == psutil.CONN_LISTEN:
            if lport == port:
                listeners.append(SocketRow("listen", _addr(c.laddr), "-", c.status, _owner(c.pid, cache)))
        elif rport == port:
            clients.append(
                SocketRow("client", _addr(c.laddr), _addr(c.raddr), c.status, _owner(c.pid, cache))
            )
        elif lport == port:
            gateway.append(
                SocketRow("gateway", _addr(c.laddr), _addr(c.raddr), c.status, _owner(c.pid, cache))
            )

    def key(r: SocketRow) -> tuple[str, str]:
        return r.status, r.laddr

    return sorted(listeners, key=key), sorted(clients, key=key), sorted(gateway, key=key)


def scan_locks(state_dir: Path) -> list[LockRow]:
    """Lock files in the state directory: which manager and worker they name, and who is alive.

    Read only, never blocking, never taking a lock (so doctor cannot race a starting manager);
    a file that is not a trustworthy lock record is a row with its `problem`.
    """
    rows: list[LockRow] = []
    for path in sorted(state_dir.glob("*.lock")):
        try:
            rec = read_lock(path)
        except UntrustedFile as exc:
            rows.append(LockRow(path=str(path), problem=str(exc)))
            continue
        if rec is None:  # removed since the listing: its manager stopped
            continue
        row = LockRow(
            path=str(path),
            manager_pid=rec.manager_pid,
            manager_alive=pid_alive(rec.manager_pid, rec.manager_create_time),
            worker_pid=rec.worker_pid,
            worker_alive=pid_alive(rec.worker_pid, rec.worker_create_time),
            data=msgspec.to_builtins(rec),
        )
        if row.worker_alive and rec.worker_pid is not None:
            try:
                proc = psutil.Process(rec.worker_pid)
                row.worker_ours = is_our_worker(proc, worker_label(rec.host, rec.port, rec.client_id))
            except psutil.Error:
                pass
            stale = find_stale_worker(
                rec, addresses=rec.addresses or (rec.host,), port=rec.port, client_id=rec.client_id
            )
            row.worker_stale = stale is not None
        rows.append(row)
    return rows


def diagnose(port: int, state_dir: Path) -> Report:
    """Run the whole checklist and judge it. Passive: psutil and files only.

    UnsafeStateDir (a SettingsError) if the state directory is not one to trust."""
    report = Report(port=port, state_dir=str(state_dir))
    try:
        report.listeners, report.client_sockets, report.gateway_sockets = scan_sockets(port)
    except psutil.AccessDenied:
        report.findings.append(
            Finding(
                Level.ATTENTION,
                "cannot read the system's socket table here (on macOS it needs root): run ibgw doctor with sudo",
            )
        )
        return report
    if ensure_state_dir(state_dir, create=False):
        report.locks = scan_locks(state_dir)
        report.managers = read_all(state_dir)
    report.findings = [
        *_listening(report),
        *_client_sockets(report.client_sockets),
        *_gateway_sockets(report.gateway_sockets),
        *_locks(report.locks),
        *_managers(report.managers),
    ]
    return report


# ----------------------------------------------------------------------------------- judging
def _listening(report: Report) -> Iterator[Finding]:
    """1. Is the Gateway listening? (lsof -iTCP:PORT -sTCP:LISTEN)"""
    if report.listeners:
        owners = sorted({f"{r.owner.name}[{r.owner.pid}]" for r in report.listeners})
        yield Finding(Level.OK, f"port {report.port} is listening ({', '.join(owners)})")
    else:
        yield Finding(
            Level.ATTENTION, f"nothing listens on port {report.port}: is the Gateway running, on this port?"
        )


def _client_sockets(rows: list[SocketRow]) -> Iterator[Finding]:
    """2. Zombie sockets on our side (lsof -iTCP:PORT -sTCP:CLOSE_WAIT), and who holds each."""
    for r in rows:
        o = r.owner
        held = f"{r.laddr} -> {r.raddr} held by {'our worker ' if o.ours else ''}{who(o)}"
        if r.status == psutil.CONN_CLOSE_WAIT and o.ours:
            yield Finding(
                Level.ATTENTION,
                f"CLOSE_WAIT {held} [{o.status}]: the Gateway closed this session but the worker still "
                f"holds the socket (and its client id). The manager reaps it on its next start or 326; "
                f"to clear it now: kill {o.pid}",
            )
        elif r.status == psutil.CONN_CLOSE_WAIT:
            yield Finding(
                Level.ATTENTION,
                f"CLOSE_WAIT {held}, not ours: the Gateway closed it but that process still holds the "
                f"socket; ibgw will not touch it",
            )
        elif r.status != psutil.CONN_ESTABLISHED:
            yield Finding(Level.NOTE, f"{r.status} {held}")
        elif o.ours and o.status == psutil.STATUS_STOPPED:
            yield Finding(
                Level.ATTENTION,
                f"ESTABLISHED {held}, which is STOPPED: it holds its client id and answers nothing",
            )
        elif o.ours and o.manager_alive is False:
            yield Finding(
                Level.ATTENTION,
                f"ESTABLISHED {held} whose manager is gone (orphan): it holds its client id; the next "
                f"manager for that id reaps it",
            )
        elif o.ours:
            yield Finding(Level.OK, f"session {held}")
        else:
            yield Finding(Level.NOTE, f"session {held} (not ours)")


def _gateway_sockets(rows: list[SocketRow]) -> Iterator[Finding]:
    """2b. The Gateway's own zombie sockets (ib_insync#386)."""
    for r in rows:
        if r.status == psutil.CONN_CLOSE_WAIT:
            yield Finding(
                Level.ATTENTION,
                f"Gateway-side CLOSE_WAIT {r.laddr} <- {r.raddr} ({who(r.owner)}): the client went away "
                f"but the Gateway has not closed its end; it may keep that client id reserved "
                f"(error 326) until the Gateway is restarted",
            )


def _locks(rows: list[LockRow]) -> Iterator[Finding]:
    """3. Lock files and whether the processes they name are alive."""
    for lk in rows:
        name = Path(lk.path).name
        if lk.problem is not None:
            yield Finding(Level.NOTE, f"lock {name}: unreadable, ignored ({lk.problem})")
        elif lk.manager_alive:
            worker = f", worker {lk.worker_pid} alive" if lk.worker_alive else ""
            yield Finding(Level.OK, f"lock {name}: manager {lk.manager_pid} alive{worker}")
        elif lk.worker_alive and lk.worker_ours:
            fate = (
                "a stale worker of that manager: the next manager for this id ends it"
                if lk.worker_stale
                else "ours, but not provably that manager's worker: no manager will end it"
            )
            yield Finding(
                Level.ATTENTION,
                f"lock {name}: manager {lk.manager_pid} is gone but its worker {lk.worker_pid} still runs "
                f"({fate}); to clear it now: kill {lk.worker_pid}",
            )
        else:
            yield Finding(
                Level.NOTE,
                f"lock {name}: stale (manager {lk.manager_pid} is gone); harmless, the next manager takes it over",
            )


def _managers(snaps: list[dict[str, Any]]) -> Iterator[Finding]:
    """4. The managers' state, from their status snapshots (no connection needed)."""
    for snap in snaps:
        state = str(snap.get("state", "?"))
        if state == UNKNOWN:
            yield Finding(
                Level.NOTE,
                f"status snapshot {Path(str(snap.get('path', '?'))).name}: unreadable, ignored "
                f"({snap.get('warning', 'no reason given')})",
            )
            continue
        mpid = snap.get("manager_pid")
        where = f"{snap.get('host', '?')}:{snap.get('port', '?')} client id {snap.get('client_id', '?')}"
        if snap.get("stopped"):
            yield Finding(Level.NOTE, f"manager for {where}: stopped (pid {mpid}); last state {state}")
        elif not snap.get("manager_alive"):
            yield Finding(
                Level.NOTE,
                f"manager for {where}: died without shutting down (pid {mpid} is gone); "
                f"its last snapshot said {state}",
            )
        else:
            reason, took, last = snap.get("reason"), in_state_for(snap), snap.get("last_error")
            text = (
                f"manager for {where}: {state}"
                + (f" ({reason})" if reason else "")
                + (f" for {took}" if took else "")
                + (f"; last error: {last}" if last and state != "CONNECTED" else "")
            )
            if state in ("CONNECTED", "IDLE"):
                yield Finding(Level.OK, text)
            else:
                yield Finding(Level.ATTENTION if state == "DEGRADED_RED" else Level.NOTE, text)


def who(o: Owner) -> str:
    """`pid N (name label)` for a finding, or what the OS said instead."""
    if o.pid is None:
        return o.name
    label = f" {o.label}" if o.label else ""
    return f"pid {o.pid} ({o.name}{label})"
