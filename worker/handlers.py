"""Command handlers and the registry that maps a command name to (params struct, handler).

A new command is one function:

    @registry.command("my_command", MyParams)
    async def my_command(ctx: Context, p: MyParams) -> dict | msgspec.Struct: ...

Handlers return the response data or raise CommandError; anything else raised becomes
internal_error. Every handler that waits on the Gateway is bounded by a timeout.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import ib_async
from msgspec import Struct

from worker import guard, ibapi
from worker.liveness import PROBE_MESSAGES_PER_S
from worker.protocol import (
    COMMAND_PARAMS,
    DEFAULT_REQUEST_TIMEOUT,
    PROTOCOL_VERSION,
    AccountParams,
    AccountsResult,
    AccountSummaryResult,
    Code,
    CommandError,
    ConnectParams,
    NoParams,
    Params,
    PingResult,
    PositionRow,
    PositionsResult,
    ProbeParams,
    SummaryRow,
    TimeoutParams,
)
from worker.session import Session

P = TypeVar("P", bound=Params)
Result = Mapping[str, Any] | Struct
Handler = Callable[["Context", P], Awaitable[Result]]


@dataclass
class Counters:
    """Request accounting for `status` (responses written, by outcome)."""

    requests: int = 0  # lines that parsed as a request and were dispatched
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0  # lines answered with a protocol error before dispatch
    in_flight: int = 0


@dataclass
class Context:
    """What a handler may use: the session and the worker's counters."""

    session: Session
    counters: Counters = field(default_factory=Counters)
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Command(Generic[P]):
    name: str
    params: type[P]
    handler: Handler[P]


class Registry:
    """Command name -> Command. The worker decodes params with params_map()."""

    def __init__(self) -> None:
        self._commands: dict[str, Command[Any]] = {}

    def add(self, name: str, params: type[P], handler: Handler[P]) -> None:
        self._commands[name] = Command(name, params, handler)

    def command(
        self,
        name: str,
        params: type[P] = NoParams,  # type: ignore[assignment]
    ) -> Callable[[Handler[P]], Handler[P]]:
        def deco(fn: Handler[P]) -> Handler[P]:
            self.add(name, params, fn)
            return fn

        return deco

    def get(self, name: str) -> Command[Any] | None:
        return self._commands.get(name)

    def params_map(self) -> dict[str, type[Params]]:
        return {name: c.params for name, c in self._commands.items()}

    def names(self) -> list[str]:
        return sorted(self._commands)


registry = Registry()


def _timeout(p: TimeoutParams) -> float:
    return p.timeout if p.timeout is not None else DEFAULT_REQUEST_TIMEOUT


@registry.command("connect", ConnectParams)
async def connect(ctx: Context, p: ConnectParams) -> Result:
    return await ctx.session.connect(p)


@registry.command("ping", TimeoutParams)
async def ping(ctx: Context, p: TimeoutParams) -> Result:
    """reqCurrentTime round trip: the cheapest proof that the API layer (not just TCP) answers."""
    s, timeout = ctx.session, _timeout(p)
    ib = s.require_connected("ping")
    t0 = time.perf_counter()
    dt = await s.call("ping", ib.reqCurrentTimeAsync, timeout, one_at_a_time="currentTime")
    latency_ms = (time.perf_counter() - t0) * 1000
    return PingResult(gateway_time=dt.timestamp(), latency_ms=round(latency_ms, 3))


@registry.command("probe", ProbeParams)
async def probe(ctx: Context, p: ProbeParams) -> Result:
    """Liveness for the manager: never serialised with other commands, never paced behind them."""
    return await ctx.session.probe(p)


@registry.command("accounts", AccountParams)
async def accounts(ctx: Context, p: AccountParams) -> Result:
    """Managed accounts as ib_async holds them since the handshake (no round trip)."""
    ib = ctx.session.require_connected("accounts")
    accts = ib.managedAccounts()
    if p.account:
        accts = [a for a in accts if a == p.account]
    return AccountsResult(accounts=accts)


@registry.command("positions", AccountParams)
async def positions(ctx: Context, p: AccountParams) -> Result:
    s, timeout = ctx.session, _timeout(p)
    ib = s.require_connected("positions")
    rows = await s.call("positions", ib.reqPositionsAsync, timeout, one_at_a_time="positions")
    out = [
        PositionRow(
            account=r.account,
            symbol=r.contract.symbol,
            sec_type=r.contract.secType,
            con_id=r.contract.conId,
            currency=r.contract.currency,
            position=float(r.position),
            avg_cost=float(r.avgCost),
        )
        for r in rows
        if not p.account or r.account == p.account
    ]
    return PositionsResult(positions=out)


@registry.command("account_summary", AccountParams)
async def account_summary(ctx: Context, p: AccountParams) -> Result:
    """One reqAccountSummary, cancelled after its end (the Gateway caps open subscriptions)."""
    s, timeout = ctx.session, _timeout(p)
    ib = s.require_connected("account_summary")

    def start() -> Awaitable[None]:
        req_id = ibapi.next_req_id(ib)
        started.append(req_id)
        return _req_summary(ib, req_id)

    started: list[int] = []
    try:
        await s.call("account_summary", start, timeout)
    finally:
        if started and ibapi.api_connected(ib):
            ibapi.cancel_account_summary(ib, started[0])
    rows = [
        SummaryRow(account=v.account, tag=v.tag, value=v.value, currency=v.currency)
        for v in ib.wrapper.acctSummary.values()
        if not p.account or v.account == p.account
    ]
    return AccountSummaryResult(rows=rows)


SUMMARY_TAGS = (
    "AccountType,NetLiquidation,TotalCashValue,SettledCash,AccruedCash,BuyingPower,"
    "EquityWithLoanValue,PreviousDayEquityWithLoanValue,GrossPositionValue,RegTEquity,"
    "RegTMargin,SMA,InitMarginReq,MaintMarginReq,AvailableFunds,ExcessLiquidity,Cushion,"
    "FullInitMarginReq,FullMaintMarginReq,FullAvailableFunds,FullExcessLiquidity,"
    "LookAheadNextChange,LookAheadInitMarginReq,LookAheadMaintMarginReq,"
    "LookAheadAvailableFunds,LookAheadExcessLiquidity,HighestSeverity,DayTradesRemaining,"
    "DayTradesRemainingT+1,DayTradesRemainingT+2,DayTradesRemainingT+3,"
    "DayTradesRemainingT+4,Leverage,$LEDGER:ALL"
)  # the same tag list as ib_async's reqAccountSummaryAsync


def _req_summary(ib: ib_async.IB, req_id: int) -> Awaitable[None]:
    """ib_async's reqAccountSummaryAsync, but with a req id we keep so we can cancel it."""
    future = ibapi.start_request(ib, req_id)
    ibapi.req_account_summary(ib, req_id, "All", SUMMARY_TAGS)
    return future


@registry.command("status", NoParams)
async def status(ctx: Context, p: NoParams) -> Result:
    s, c = ctx.session, ctx.counters
    g = guard.stats.snapshot()
    now = time.monotonic()
    return {
        "connected": s.connected,
        "phase": s.phase.value,
        "client_id": s.params.client_id if s.params else None,
        "host": s.params.host if s.params else None,
        "port": s.params.port if s.params else None,
        "server_version": s.server_version,
        "accounts": list(s.accounts),
        "connected_for_s": round(now - s.connected_at, 3) if s.connected and s.connected_at else None,
        "socket_open": s.socket_open(),
        "last_failure": (
            {"code": s.last_failure.code, "message": s.last_failure.message} if s.last_failure else None
        ),
        "suppressed_disconnects": g["total"],
        "suppressed_by_path": g["by_path"],
        "guard_installed": guard.installed(),
        "requests_served": c.succeeded + c.failed + c.rejected,
        "requests_succeeded": c.succeeded,
        "requests_failed": c.failed,
        "requests_rejected": c.rejected,
        "in_flight": c.in_flight - 1,  # not counting this status request
        "counters": dict(s.counters),
        "probes_sent": s.liveness.probes_sent if s.liveness else 0,
        "last_rx_age_s": round(now - s.liveness.last_rx, 3) if s.liveness and s.liveness.last_rx else None,
        "pacing": {
            "max_requests": ib_async.client.Client.MaxRequests,
            "interval_s": ib_async.client.Client.RequestsInterval,
            "probe_max_per_s": PROBE_MESSAGES_PER_S,
        },
        "pid": os.getpid(),
        "ib_async": ib_async.__version__,
        "protocol": PROTOCOL_VERSION,
        "uptime_s": round(now - ctx.started, 3),
    }


@registry.command("disconnect", NoParams)
async def disconnect(ctx: Context, p: NoParams) -> Result:
    raise CommandError(
        Code.DISCONNECT_FORBIDDEN,
        "disconnect is refused: an explicit disconnect can turn the Gateway's API layer RED. "
        "A session ends only when this worker process exits: close its stdin (the manager's "
        "shutdown() does this), and the worker answers what it has read and exits 0.",
    )


assert set(registry.names()) == set(COMMAND_PARAMS), "protocol and registry disagree"

# The data commands (qualify, historical_bars, snapshot, subscribe, unsubscribe) register here too.
import worker.market  # noqa: E402, F401
