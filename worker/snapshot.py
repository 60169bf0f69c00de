"""The `snapshot` command: the broker's view of an account, read twice so a change in between is
caught (the original system's get_broker_snapshot).

One read is positions, the open orders of every client, the completed orders and the day's
executions (since 00:00 UTC of the broker's date, each with its commission report); the
balances (one request-scoped account summary) are read between the two reads, and the broker's
time before and after. Any difference between the reads is `inconsistent_snapshot`: the caller
asks again rather than act on a view that was moving. Same-key requests (positions, openOrders,
completedOrders, currentTime) wait for each other; one snapshot runs at a time; every wait is
bounded by the request's timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ib_async import IB, ExecutionFilter, Fill, Trade
from ib_async.wrapper import RequestError

from worker.feeds import iso
from worker.handlers import Context, Result, account_summary, registry
from worker.market_protocol import DataCode, Execution, OrderState, SnapshotParams, SnapshotResult
from worker.protocol import (
    DEFAULT_REQUEST_TIMEOUT,
    AccountParams,
    AccountSummaryResult,
    Code,
    CommandError,
    PositionRow,
)
from worker.session import Session, classify_request_error

UNSET = 1e300  # ib_async's UNSET_DOUBLE is sys.float_info.max; anything this large is "unset"


def _money(x: Any) -> float | None:
    if x is None:
        return None
    v = float(x)
    return None if math.isnan(v) or abs(v) >= UNSET else v


def order_state(t: Trade) -> OrderState:
    """An ib_async Trade as OrderState; a completed order's fill comes from order.filledQuantity
    (its orderStatus.filled is 0: completedOrder carries no status message)."""
    o, s = t.order, t.orderStatus
    filled = float(s.filled)
    done = _money(o.filledQuantity)
    if done is not None and done > filled:
        filled = done
    return OrderState(
        order_ref=o.orderRef,
        order_id=o.orderId,
        perm_id=o.permId,
        status=s.status,
        filled=filled,
        remaining=float(s.remaining) if s.status not in ("Filled", "Cancelled", "ApiCancelled") else 0.0,
        avg_fill_price=float(s.avgFillPrice),
        action=o.action,
        quantity=float(o.totalQuantity),
        order_type=o.orderType,
        limit_price=_money(o.lmtPrice) if o.orderType in ("LMT", "STP LMT") else None,
        stop_price=_money(o.auxPrice) if o.orderType in ("STP", "STP LMT") else None,
        tif=o.tif,
        con_id=t.contract.conId,
        symbol=t.contract.symbol,
        account=o.account,
        client_id=o.clientId,
    )


def execution(f: Fill) -> Execution:
    x, c = f.execution, f.commissionReport
    has_report = bool(c.execId)
    return Execution(
        exec_id=x.execId,
        order_ref=x.orderRef,
        order_id=x.orderId,
        perm_id=x.permId,
        time=iso(x.time),
        account=x.acctNumber,
        con_id=f.contract.conId,
        symbol=f.contract.symbol,
        side=x.side,
        shares=float(x.shares),
        price=float(x.price),
        cum_qty=float(x.cumQty),
        avg_price=float(x.avgPrice),
        commission=_money(c.commission) if has_report else None,
        commission_currency=c.currency,
        realized_pnl=_money(c.realizedPNL) if has_report else None,
    )


@dataclass(frozen=True)
class Read:
    positions: list[PositionRow]
    open_orders: list[OrderState]
    completed_orders: list[OrderState]
    executions: list[Execution]

    def differences(self, other: Read) -> list[str]:
        return [
            name
            for name in ("positions", "open_orders", "completed_orders", "executions")
            if getattr(self, name) != getattr(other, name)
        ]


async def _keyed(s: Session, start: Callable[[], Awaitable[Any]], key: str) -> Any:
    """One round trip keyed by name in ib_async: one at a time (the caller's deadline bounds it)."""
    async with s.lock(key):
        return await start()


async def _with_commissions(ib: IB, fills: list[Fill]) -> list[Fill]:
    """The fills as ib_async keeps them once every commission report is in. (A reqExecutions
    answer for an execution ib_async has seen before is a fresh Fill whose report stays empty;
    the report lands on the one it keeps. A real Gateway may send reports after the end.)"""
    while True:
        kept = {f.execution.execId: f for f in ib.fills()}
        fills = [kept.get(f.execution.execId, f) for f in fills]
        if all(f.commissionReport.execId for f in fills):
            return fills
        await ib.updateEvent


async def _read(s: Session, ib: IB, account: str | None, day_start: str) -> Read:
    positions = await _keyed(s, ib.reqPositionsAsync, "positions")
    open_trades = await _keyed(s, ib.reqAllOpenOrdersAsync, "openOrders")
    completed = await _keyed(s, lambda: ib.reqCompletedOrdersAsync(False), "completedOrders")
    answer = await ib.reqExecutionsAsync(ExecutionFilter(acctCode=account or "", time=day_start))
    fills = await _with_commissions(ib, answer)

    def mine(acct: str) -> bool:
        return account is None or acct == account

    return Read(
        positions=sorted(
            (
                PositionRow(
                    account=p.account,
                    symbol=p.contract.symbol,
                    sec_type=p.contract.secType,
                    con_id=p.contract.conId,
                    currency=p.contract.currency,
                    position=float(p.position),
                    avg_cost=float(p.avgCost),
                )
                for p in positions
                if mine(p.account)
            ),
            key=lambda r: (r.account, r.con_id),
        ),
        open_orders=sorted((order_state(t) for t in open_trades if mine(t.order.account)), key=_order_key),
        completed_orders=sorted((order_state(t) for t in completed if mine(t.order.account)), key=_order_key),
        executions=sorted((execution(f) for f in fills), key=lambda x: (x.time, x.exec_id)),
    )


def _order_key(o: OrderState) -> tuple[int, int, int, str]:
    return o.perm_id, o.client_id, o.order_id, o.order_ref


@registry.command("snapshot", SnapshotParams)
async def snapshot(ctx: Context, p: SnapshotParams) -> Result:
    s = ctx.session
    timeout = p.timeout if p.timeout is not None else DEFAULT_REQUEST_TIMEOUT
    ib = s.require_connected("snapshot")
    try:
        async with asyncio.timeout(timeout) as deadline:
            async with s.lock("snapshot"):
                before: dt.datetime = await _keyed(s, ib.reqCurrentTimeAsync, "currentTime")
                day_start = before.astimezone(dt.UTC).strftime("%Y%m%d 00:00:00 UTC")
                first = await _read(s, ib, p.account, day_start)
                left = max(0.001, (deadline.when() or 0) - asyncio.get_running_loop().time())
                summary = await account_summary(ctx, AccountParams(account=p.account or "", timeout=left))
                assert isinstance(summary, AccountSummaryResult)
                second = await _read(s, ib, p.account, day_start)
                after: dt.datetime = await _keyed(s, ib.reqCurrentTimeAsync, "currentTime")
    except TimeoutError:
        raise CommandError(Code.REQUEST_TIMEOUT, f"snapshot: not complete within {timeout:g} s") from None
    except (RequestError, ConnectionError) as exc:
        raise classify_request_error("snapshot", exc, timeout) from exc
    changed = first.differences(second)
    if changed:
        raise CommandError(
            DataCode.INCONSISTENT_SNAPSHOT,
            f"snapshot: {', '.join(changed)} changed between the two reads (an order or fill moved); ask again",
        )
    return SnapshotResult(
        positions=second.positions,
        balances=summary.rows,
        open_orders=second.open_orders,
        completed_orders=second.completed_orders,
        executions=second.executions,
        broker_time_before=iso(before),
        broker_time_after=iso(after),
    )
