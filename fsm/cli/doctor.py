"""`ibgw doctor`: the original report's by-hand lsof checklist, automated and strictly passive.

It reads the kernel's socket table and process list (psutil), the lock files and status
snapshots in the state directory — and nothing else. It never opens a connection to the
Gateway, not even a bare TCP connect: a connectivity pre-test was one of the ways the original
system turned the Gateway's API layer RED.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fsm.cli.text import in_state_for

LABEL_PREFIX = "ibgw-fsm:"

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
    ours: bool = False  # a `python -m worker --label ibgw-fsm:...` process
    label: str | None = None
    parent_alive: bool | None = None


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
    """A manager lock file and whether the pids it names are still alive."""

    path: str
    manager_pid: int | None
    manager_alive: bool
    worker_pid: int | None
    worker_alive: bool
    worker_ours: bool
    data: dict[str, Any]


@dataclass(slots=True)
class Finding:
    level: str  # ok | note | attention
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
        return not any(f.level == ATTENTION for f in self.findings)

    @property
    def verdict(self) -> str:
        bad = [f for f in self.findings if f.level == ATTENTION]
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


def parse_label(cmdline: list[str]) -> str | None:
    """The `--label ibgw-fsm:...` of a `python -m worker` command line, or None if it is not ours.

    Ours means both: the process runs the `worker` module and carries our label. A process that
    merely mentions the label somewhere (a shell, grep) is not ours.
    """
    runs_worker = any(a == "-m" and b == "worker" for a, b in itertools.pairwise(cmdline))
    if not runs_worker:
        return None
    for i, arg in enumerate(cmdline):
        value = None
        if arg == "--label" and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--label="):
            value = arg.split("=", 1)[1]
        if value is not None and value.startswith(LABEL_PREFIX):
            return value
    return None


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
            owner.label = parse_label(cmd)
            owner.ours = owner.label is not None
            if owner.ours:
                ppid = proc.ppid()
                owner.parent_alive = ppid > 1 and psutil.pid_exists(ppid)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        owner = Owner(pid=pid, name="(exited)", status="gone")
    except psutil.AccessDenied:
        owner = Owner(pid=pid, name="(access denied)")
    cache[pid] = owner
    return owner


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
    key = lambda r: (r.status, r.laddr)  # noqa: E731 - stable, readable ordering
    return sorted(listeners, key=key), sorted(clients, key=key), sorted(gateway, key=key)


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def scan_locks(state_dir: Path) -> list[LockRow]:
    """Lock files in the state directory: which manager and worker they name, and who is alive.

    Read only: doctor never takes a lock itself, so it cannot race a manager that is starting.
    """
    rows: list[LockRow] = []
    if not state_dir.is_dir():
        return rows
    # The manager's lock files (fsm.zombies.lock_path): ibgw-<host>-<port>-<client id>.lock
    for path in sorted(state_dir.glob("*.lock")):
        try:
            text = path.read_text()
            data = json.loads(text) if text.strip() else {}
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        mpid = data.get("manager_pid")
        wpid = data.get("worker_pid")
        worker_ours = False
        if _pid_alive(wpid):
            try:
                worker_ours = parse_label(psutil.Process(wpid).cmdline()) is not None
            except psutil.Error:
                worker_ours = False
        rows.append(
            LockRow(
                path=str(path),
                manager_pid=mpid if isinstance(mpid, int) else None,
                manager_alive=_pid_alive(mpid),
                worker_pid=wpid if isinstance(wpid, int) else None,
                worker_alive=_pid_alive(wpid),
                worker_ours=worker_ours,
                data=data,
            )
        )
    return rows


def _default_snapshot_reader(state_dir: Path) -> list[dict[str, Any]]:
    """All status snapshots in the state dir (the manager writes one per host/port/client id)."""
    from fsm.status import read_all

    return read_all(state_dir) if state_dir.is_dir() else []


def diagnose(
    port: int,
    state_dir: Path,
    *,
    read_snapshots: Callable[[Path], Iterable[dict[str, Any]]] | None = None,
) -> Report:
    """Run the whole checklist and judge it. Passive: psutil and files only."""
    report = Report(port=port, state_dir=str(state_dir))
    f = report.findings
    try:
        report.listeners, report.client_sockets, report.gateway_sockets = scan_sockets(port)
    except psutil.AccessDenied:
        f.append(
            Finding(
                ATTENTION,
                "cannot read the system's socket table here (on macOS it "
                "needs root): run ibgw doctor with sudo",
            )
        )
        return report
    report.locks = scan_locks(state_dir)
    reader = read_snapshots or _default_snapshot_reader
    report.managers = [dict(s) for s in reader(state_dir)]

    # 1. Is the Gateway listening? (lsof -iTCP:PORT -sTCP:LISTEN)
    if report.listeners:
        owners = sorted({f"{r.owner.name}[{r.owner.pid}]" for r in report.listeners})
        f.append(Finding(OK, f"port {port} is listening ({', '.join(owners)})"))
    else:
        f.append(Finding(ATTENTION, f"nothing listens on port {port}: is the Gateway running, on this port?"))

    # 2. Zombie sockets (lsof -iTCP:PORT -sTCP:CLOSE_WAIT), both ends.
    for r in report.client_sockets:
        o = r.owner
        holder = who(o)
        if r.status == psutil.CONN_CLOSE_WAIT:
            if o.ours:
                f.append(
                    Finding(
                        ATTENTION,
                        (
                            f"CLOSE_WAIT {r.laddr} -> {r.raddr} held by our worker {holder} [{o.status}]: the Gateway "
                            f"closed this session but the worker still holds the socket (and its client id). "
                            f"The manager reaps it on its next start or 326; to clear it now: kill {o.pid}"
                        ),
                    )
                )
            else:
                f.append(
                    Finding(
                        ATTENTION,
                        (
                            f"CLOSE_WAIT {r.laddr} -> {r.raddr} held by {holder}, not ours: the Gateway closed it "
                            f"but that process still holds the socket; ibgw will not touch it"
                        ),
                    )
                )
        elif r.status == psutil.CONN_ESTABLISHED:
            if o.ours and o.status == psutil.STATUS_STOPPED:
                f.append(
                    Finding(
                        ATTENTION,
                        (
                            f"ESTABLISHED {r.laddr} -> {r.raddr} held by our worker {holder}, which is STOPPED: "
                            f"it holds its client id and answers nothing"
                        ),
                    )
                )
            elif o.ours and o.parent_alive is False:
                f.append(
                    Finding(
                        ATTENTION,
                        (
                            f"ESTABLISHED {r.laddr} -> {r.raddr} held by our worker {holder} whose manager is gone "
                            f"(orphan): it holds its client id; the next manager for that id reaps it"
                        ),
                    )
                )
            elif o.ours:
                f.append(Finding(OK, f"session {r.laddr} -> {r.raddr} held by our worker {holder}"))
            else:
                f.append(Finding(NOTE, f"session {r.laddr} -> {r.raddr} held by {holder} (not ours)"))
        else:
            f.append(Finding(NOTE, f"{r.status} {r.laddr} -> {r.raddr} held by {holder}"))
    for r in report.gateway_sockets:
        if r.status == psutil.CONN_CLOSE_WAIT:
            f.append(
                Finding(
                    ATTENTION,
                    (
                        f"Gateway-side CLOSE_WAIT {r.laddr} <- {r.raddr} ({who(r.owner)}): the client went away "
                        f"but the Gateway has not closed its end; it may keep that client id reserved "
                        f"(error 326) until the Gateway is restarted"
                    ),
                )
            )

    # 3. Lock files and whether their pids are alive.
    for lk in report.locks:
        name = Path(lk.path).name
        if lk.manager_pid is None:
            f.append(Finding(NOTE, f"lock {name}: empty or unreadable (a manager may be writing it)"))
        elif lk.manager_alive:
            f.append(
                Finding(
                    OK,
                    f"lock {name}: manager {lk.manager_pid} alive"
                    + (f", worker {lk.worker_pid} alive" if lk.worker_alive else ""),
                )
            )
        elif lk.worker_alive and lk.worker_ours:
            f.append(
                Finding(
                    ATTENTION,
                    (
                        f"lock {name}: manager {lk.manager_pid} is gone but its worker {lk.worker_pid} still runs "
                        f"(a zombie of ours); the next manager for this id reaps it, or: kill {lk.worker_pid}"
                    ),
                )
            )
        else:
            f.append(
                Finding(
                    NOTE,
                    f"lock {name}: stale (manager {lk.manager_pid} is gone); harmless, "
                    f"the next manager takes it over",
                )
            )

    # 4. The running managers' state, from their snapshots (no connection needed).
    for snap in report.managers:
        state = str(snap.get("state", "?"))
        mpid = snap.get("manager_pid")
        where = f"{snap.get('host', '?')}:{snap.get('port', '?')} client id {snap.get('client_id', '?')}"
        if snap.get("stopped"):
            f.append(Finding(NOTE, f"manager for {where}: stopped (pid {mpid}); last state {state}"))
            continue
        if not snap.get("manager_alive", _pid_alive(mpid)):
            f.append(
                Finding(
                    NOTE,
                    f"manager for {where}: died without shutting down (pid {mpid} is gone); "
                    f"its last snapshot said {state}",
                )
            )
            continue
        reason = snap.get("reason")
        text = (
            f"manager for {where}: {state}"
            + (f" ({reason})" if reason else "")
            + (f" for {took}" if (took := in_state_for(snap)) else "")
        )
        level = OK if state in ("CONNECTED", "IDLE") else ATTENTION if state == "DEGRADED_RED" else NOTE
        f.append(Finding(level, text))
    return report


def who(o: Owner) -> str:
    """`pid N (name label)` for a finding, or what the OS said instead."""
    if o.pid is None:
        return o.name
    label = f" {o.label}" if o.label else ""
    return f"pid {o.pid} ({o.name}{label})"
