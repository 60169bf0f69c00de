"""The simulated Gateway as a sans-IO object: sessions, client ids, faults, timers, events.

No sockets and no tasks. A driver (server.py) opens a `Session` per connection, feeds it bytes,
flushes what it queues, closes it when asked, stops listening while `down_until` lies ahead and
runs `scheduler` timers when due. Every fault is a named operation on this object. State that
outlives sessions and belongs to one topic (the broker, the market) lives in a `Component`.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, replace
from typing import Any, ClassVar, TypeVar

from . import wire
from .accounts import AccountBook
from .broker import Broker
from .faults import Faults, check_drop_mode, check_seconds, check_sync_name, check_window
from .observe import CloseRecord, Counters, SessionInfo, SimEvent
from .orderflow import REJECT_REASON, Desk
from .scheduler import Scheduler
from .session import Session

log = logging.getLogger("gatewaysim")

TEXT_1100 = "Connectivity between IB and Trader Workstation has been lost."
TEXT_1101 = "Connectivity between IB and Trader Workstation has been restored - data lost."
TEXT_1102 = "Connectivity between IB and Trader Workstation has been restored - data maintained."
TEXT_2103 = "Market data farm connection is broken:usfarm"
FARMS_OK = (
    (2104, "Market data farm connection is OK:usfarm"),
    (2106, "HMDS data farm connection is OK:ushmds"),
    (2158, "Sec-def data farm connection is OK:secdefnj"),
)
Notice = tuple[int, str]  # a system message (reqId -1): code, text


class Component:
    """Sim-wide state of one topic (e.g. the market), built once per Gateway on first use by
    `gateway.component(Cls)`. Subclasses set `name` (its key in `snapshot()`)."""

    name: ClassVar[str] = "component"

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def session_ended(self, s: Session) -> None:
        """A session closed (either side): stop pushing to it."""

    def snapshot(self) -> dict[str, Any]:
        """Plain data for `Gateway.snapshot()`."""
        return {}

    def data_lost(self) -> None:
        """IB's servers came back without the sessions' data (1101): forget what every client
        must request again."""

    def handshake_notices(self, notices: list[Notice]) -> list[Notice]:
        """The notices a new session hears after its handshake, as this topic's state makes
        them (a farm that is down says so)."""
        return notices


C = TypeVar("C", bound=Component)


class Gateway:
    """A simulated IB Gateway without I/O; see DESIGN.md section 6 for the faults it models."""

    def __init__(
        self,
        *,
        accounts: Iterable[str] = ("DU1234567",),
        server_version: int = wire.SERVER_MAX_VERSION,
        faults: Faults | None = None,
        on_event: Callable[[SimEvent], None] | None = None,
        seed: int = 0,
        tick_rate: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        positions: int | None = None,
    ) -> None:
        """`positions`: the first account holds this many position rows (see accounts.py)."""
        self.accounts: tuple[str, ...] = tuple(a for a in accounts if a)
        if not self.accounts or any("," in a or "\0" in a for a in self.accounts):
            raise ValueError(f"need at least one account name without commas: {accounts!r}")
        if not tick_rate > 0 or math.isinf(tick_rate):
            raise ValueError(f"tick_rate must be a positive number of ticks per second, got {tick_rate!r}")
        self.server_version = server_version
        self.on_event = on_event
        self.seed = seed
        self.tick_rate = float(tick_rate)
        self.now = clock
        self.wall = wall
        faults = faults or Faults()
        self._faults = replace(faults, silent=False)
        self.red = faults.silent
        self.upstream_connected = True
        self.down_until = 0.0  # monotonic time until which the listener stays closed

        self.counters = Counters()
        self.client_ids_seen: set[int] = set()
        self.client_closes: list[CloseRecord] = []
        self.events: deque[SimEvent] = deque(maxlen=10_000)
        self.connections: dict[int, Session] = {}  # by session id
        self._holds: dict[int, float] = {}  # client id -> monotonic expiry (inf = until restart)
        self._next_sid = 1
        self._components: dict[type[Component], Component] = {}
        self.on_change: Callable[[], None] = lambda: None  # the driver's wake-up
        self.scheduler = Scheduler(clock, self.changed)
        self.book = AccountBook(self.accounts, positions)
        self.desk = Desk(self, rejects=faults.reject_orders, partial_fills=faults.partial_fills)
        if self.red:
            self.counters.red_episodes += 1

    # -------------------------------------------------------------------- observables

    @property
    def green(self) -> bool:
        return not self.red

    @property
    def faults(self) -> Faults:
        """The faults now in force (reject_orders: the rejections still pending)."""
        return replace(self._faults, reject_orders=len(self.desk.reject_reasons))

    @property
    def broker(self) -> Broker:
        """Orders, executions and `placements` (placeOrder messages per orderRef)."""
        return self.desk.broker

    @property
    def held_client_ids(self) -> dict[int, float]:
        """Reserved client ids and the seconds left (inf: until restart)."""
        now = self.now()
        return {cid: max(0.0, until - now) for cid, until in self._holds.items() if until > now}

    @property
    def sessions(self) -> list[SessionInfo]:
        return [self.session_info(s) for s in self.connections.values()]

    def session_of(self, client_id: int) -> Session | None:
        """The live, handshaken session of `client_id`, if one is up."""
        for s in self.connections.values():
            if s.client_id == client_id and s.handshaken_at is not None and s.live:
                return s
        return None

    def session_info(self, s: Session) -> SessionInfo:
        return SessionInfo(
            s.session_id,
            s.client_id,
            s.peer,
            s.connected_at,
            s.handshaken_at,
            s.negotiated,
            lambda: self.peer_pid(s, lookup=True),
        )

    def peer_pid(self, s: Session, *, lookup: bool) -> int | None:
        """The process at the other end of `s`, where the driver can tell (it owns the socket)."""
        return None

    def component(self, cls: type[C]) -> C:
        """The one `cls` of this Gateway, built on first use."""
        c = self._components.get(cls)
        if c is None:
            c = self._components[cls] = cls(self)
        assert isinstance(c, cls)
        return c

    def snapshot(self) -> dict[str, Any]:
        """Plain data (JSON-friendly) for other threads and processes."""
        return {
            "green": self.green,
            "upstream_connected": self.upstream_connected,
            "sessions": [
                {
                    "session_id": s.session_id,
                    "client_id": s.client_id,
                    "peer": list(s.peer),
                    "connected_at": s.connected_at,
                    "handshaken_at": s.handshaken_at,
                    "server_version": s.negotiated,
                    "pid": self.peer_pid(s, lookup=False),
                }
                for s in self.connections.values()
            ],
            "client_ids_seen": sorted(self.client_ids_seen),
            "positions": {name: len(a.positions) for name, a in self.book.accounts.items()},
            "held_client_ids": self.held_client_ids,
            "counters": asdict(self.counters),
            "client_closes": [{**asdict(c), "peer": list(c.peer)} for c in self.client_closes],
            "faults": asdict(self.faults),
            "events": [str(e) for e in list(self.events)[-50:]],
            "broker": self.desk.snapshot(),
            **{c.name: c.snapshot() for c in self._components.values()},
        }

    def changed(self) -> None:
        """Something observable moved: wake the driver (and whoever waits on a condition)."""
        self.on_change()

    def emit(self, kind: str, detail: str) -> None:
        ev = SimEvent(self.now(), self.wall(), kind, detail)
        self.events.append(ev)
        log.info("%s %s", kind, detail)
        if self.on_event is not None:
            try:
                self.on_event(ev)
            except Exception:  # a broken printer must not take the simulator down
                log.exception("on_event callback failed")
        self.changed()

    # -------------------------------------------------------------------- fault operations

    def red_on_fast_close(self, window: float | None) -> None:
        """A client closing within `window` s of its handshake turns RED; None switches off."""
        check_window(window, "red_on_fast_close")
        self._faults = replace(self._faults, red_on_fast_close=window)
        self.emit("fault", f"red_on_fast_close={window}")

    def go_red(self) -> None:
        """API layer dead: TCP accepts and hellos are read, nothing is answered."""
        self._set_red("go_red()")

    def handshake_delay(self, seconds: float) -> None:
        check_seconds(seconds, "handshake_delay")
        self._faults = replace(self._faults, handshake_delay=float(seconds))
        self.emit("fault", f"handshake_delay={seconds}")

    def stall_sync(self, request: str | None) -> None:
        """Never answer one start-up request kind (see faults.SYNC_REQUESTS); None: answer all."""
        check_sync_name(request)
        self._faults = replace(self._faults, stall_sync=request)
        self.emit("fault", f"stall_sync={request}")

    def client_id_hold(self, seconds: float | None) -> None:
        """Keep a closed session's client id reserved this long (math.inf: until restart).
        None or 0 switches it off and releases the ids held now."""
        check_window(seconds, "client_id_hold")
        self._faults = replace(self._faults, client_id_hold=seconds if seconds else None)
        if not seconds:
            self._holds.clear()
        self.emit("fault", f"client_id_hold={seconds}")

    def drop_all(self) -> None:
        """Close every session from the server side (a Gateway crash as the clients see it)."""
        n = self._close_all("drop_all")
        self.emit("drop_all", f"closed {n} session(s)")

    def restart(self) -> None:
        """A Gateway restart: close every session, release held ids, clear RED, listen again."""
        n = self._close_all("restart")
        self._come_back()
        self.emit("restart", f"closed {n} session(s); GREEN")

    def down_for(self, seconds: float) -> None:
        """Gateway down: close every session and the listener (connects are refused), then
        come back GREEN after `seconds`."""
        check_seconds(seconds, "down_for")
        n = self._close_all("down_for")
        self.down_until = max(self.down_until, self.now() + seconds)
        self.emit("down", f"closed {n} session(s); refusing connections for {seconds} s")

    def connectivity_lost(self) -> None:
        """1100 to every session: IB's servers are unreachable from the Gateway."""
        self.upstream_connected = False
        n = self.broadcast(1100, TEXT_1100)
        self.emit("connectivity", f"1100 lost, sent to {n} session(s)")

    def connectivity_restored(self, data_lost: bool) -> None:
        """1101 (data lost: every subscription is gone, clients must request again) or 1102
        (data maintained: subscriptions flow again) to every session."""
        self.upstream_connected = True
        if data_lost:
            for c in list(self._components.values()):
                c.data_lost()
        code, text = (1101, TEXT_1101) if data_lost else (1102, TEXT_1102)
        n = self.broadcast(code, text)
        self.emit("connectivity", f"{code} restored, sent to {n} session(s)")

    def farm_flap(self) -> None:
        """2103 (market data farm broken) then 2104 (OK) to every session."""
        n = self.broadcast(2103, TEXT_2103)
        self.broadcast(*FARMS_OK[0])
        self.emit("farm_flap", f"2103 then 2104 to {n} session(s)")

    def read_only_api(self, on: bool) -> None:
        """The Gateway's "Read-Only API" setting: placeOrder and cancels get error 321."""
        self._faults = replace(self._faults, read_only_api=bool(on))
        self.emit("fault", f"read_only_api={bool(on)}")

    def reject_next_order(self, reason: str = REJECT_REASON) -> None:
        """The next new order gets error 201 "Order rejected - reason:<reason>" and never exists."""
        if not reason.isascii():
            raise ValueError("the reason travels in an error text: ASCII only")
        self.desk.reject_reasons.append(reason)
        self.emit("fault", f"reject_next_order reason={reason!r}")

    def drop_on_place(self, mode: str | None) -> None:
        """The next placeOrder drops its session at once: "before_ack" keeps the order working
        at the broker, "discard" loses it with the session; None switches it off."""
        check_drop_mode(mode)
        self._faults = replace(self._faults, drop_on_place=mode)
        self.emit("fault", f"drop_on_place={mode}")

    def fill_while_away(self, on: bool) -> None:
        """Working orders fill at once whenever their client id has no session (and now)."""
        self._faults = replace(self._faults, fill_while_away=bool(on))
        self.emit("fault", f"fill_while_away={bool(on)}")
        if on:
            self.desk.fill_away()

    def fill_order(self, order_ref: str) -> None:
        """The market reaches the working order(s) with this orderRef now: a LMT fills at its
        limit, others at the quote; their client hears it if its session is up."""
        self.desk.fill(order_ref)

    def partial_fills(self, on: bool) -> None:
        """Fills take at most the size quoted (taking) or traded (resting) at each tick."""
        self._faults = replace(self._faults, partial_fills=bool(on))
        self.desk.broker.partial_fills = bool(on)
        self.emit("fault", f"partial_fills={bool(on)}")

    def end_of_day(self) -> None:
        """The trading day ends: working DAY orders are cancelled; GTC orders keep working."""
        self.desk.end_of_day()
        self.emit("end_of_day", "DAY orders cancelled")

    def handshake_notices(self) -> list[Notice]:
        """What a new session hears after nextValidId and managedAccounts: 1100 while IB's
        servers are unreachable, else the state of each data farm."""
        if not self.upstream_connected:
            return [(1100, TEXT_1100)]
        notices = list(FARMS_OK)
        for c in self._components.values():
            notices = c.handshake_notices(notices)
        return notices

    def broadcast(self, code: int, text: str) -> int:
        """A system message (reqId -1) to every live, handshaken session; none while RED."""
        if self.red:
            return 0
        live = [s for s in self.connections.values() if s.handshaken_at is not None and s.live]
        for s in live:
            s.error(-1, code, text)
        return len(live)

    def back_up(self) -> None:
        """The driver listens again after `down_for`: a restarted Gateway, nothing held, GREEN."""
        self._come_back()
        self.emit("up", "back after down_for; GREEN")

    def _come_back(self) -> None:
        self._holds.clear()
        self.down_until = 0.0
        self.red = False
        self.upstream_connected = True

    def _set_red(self, why: str) -> None:
        if self.red:
            return
        self.red = True
        self.counters.red_episodes += 1
        self.emit("RED", why)

    def _close_all(self, reason: str) -> int:
        live = [s for s in self.connections.values() if s.live]
        for s in live:
            s.close(reason, flush=False)
        return len(live)

    # -------------------------------------------------------------------- sessions

    def open_session(self, peer: tuple[str, int]) -> Session:
        s = Session(self, self._next_sid, peer, self.now())
        self._next_sid += 1
        self.connections[s.session_id] = s
        self.counters.connections_accepted += 1
        self.emit("accept", f"session {s.session_id} from {peer[0]}:{peer[1]}")
        return s

    def busy_reason(self, client_id: int) -> str | None:
        """Why `client_id` cannot start a session now (IB answers 326), or None."""
        for other in self.connections.values():
            if other.client_id == client_id and other.handshaken_at is not None:
                return f"is in use by session {other.session_id}"
        until = self._holds.get(client_id)
        now = self.now()
        if until is not None and until > now:
            left = "until restart" if math.isinf(until) else f"for {until - now:.2f} s more"
            return f"is held after its session closed ({left})"
        return None

    def next_valid_id(self, client_id: int) -> int:
        """The order id a new session of `client_id` starts from: above every one it used."""
        return self.desk.broker.next_valid_id(client_id)

    def session_ended(self, s: Session, by_client: str | None) -> None:
        """The driver closed `s`: `by_client` says how the client ended it (None: we did)."""
        self.connections.pop(s.session_id, None)
        if by_client is None:
            self.counters.server_closes += 1
            self.emit(
                "server_close",
                f"session {s.session_id} client id {s.client_id}: {s.close_reason or 'simulator stopped'}",
            )
        else:
            self._client_closed(s, by_client)
        for c in self._components.values():
            c.session_ended(s)
        if self._faults.fill_while_away:
            self.desk.fill_away()

    def _client_closed(self, s: Session, how: str) -> None:
        self.counters.client_closes += 1
        detail = f"session {s.session_id} client id {s.client_id}: {how}"
        if s.handshaken_at is None or s.client_id is None:
            self.emit("client_close", detail + " before any handshake")
            return
        now = self.now()
        age = now - s.handshaken_at
        detail += f" {age * 1000:.1f} ms after its handshake"
        window = self._faults.red_on_fast_close
        if window is not None and age <= window:
            self.counters.fast_closes += 1
            self.emit("client_close", detail + " (fast close)")
            self._set_red(
                f"fast close: client id {s.client_id} closed "
                f"{age * 1000:.1f} ms after its handshake (window {window} s)"
            )
        else:
            self.emit("client_close", detail)
        hold = self._faults.client_id_hold
        if hold:
            cid, until = s.client_id, now + hold
            self._holds[cid] = until
            self.emit("hold", f"client id {cid} reserved for {hold} s")
            if not math.isinf(until):
                self.scheduler.call_at(until, lambda: self._expire_hold(cid, until))

    def _expire_hold(self, client_id: int, until: float) -> None:
        if self._holds.get(client_id) == until:
            del self._holds[client_id]
            self.emit("hold_expired", f"client id {client_id} free again")

    def record_close(self, rec: CloseRecord) -> None:
        """The driver's verdict on a client close: was it a live process or an exit."""
        self.client_closes.append(rec)
        self.emit("close_record", f"client id {rec.client_id} pid {rec.pid} peer_alive {rec.peer_alive}")
