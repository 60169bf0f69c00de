"""Handlers for the session's basics: time, ids, accounts, positions and the account book."""

from __future__ import annotations

from datetime import UTC, datetime

from . import wire
from .accounts import ACCOUNT_VALUES, HOLDINGS, earlier_fill
from .registry import handler
from .session import Session


@handler(wire.REQ_CURRENT_TIME)
def req_current_time(s: Session, f: list[str]) -> None:
    s.send(wire.current_time(int(s.gateway.wall())))


@handler(wire.REQ_MANAGED_ACCTS)
def req_managed_accts(s: Session, f: list[str]) -> None:
    s.send(wire.managed_accounts(s.gateway.accounts))


@handler(wire.REQ_IDS)
def req_ids(s: Session, f: list[str]) -> None:
    assert s.client_id is not None
    s.send(wire.next_valid_id(s.gateway.next_valid_id(s.client_id)))


@handler(wire.REQ_POSITIONS)
def req_positions(s: Session, f: list[str]) -> None:
    for acct in s.gateway.accounts:
        s.send(*(wire.position(acct, h.ins, h.quantity, h.avg_cost) for h in HOLDINGS))
    s.send(wire.position_end())


@handler(wire.REQ_OPEN_ORDERS)
def req_open_orders(s: Session, f: list[str]) -> None:
    s.send(wire.open_order_end())


@handler(wire.REQ_COMPLETED_ORDERS)
def req_completed_orders(s: Session, f: list[str]) -> None:
    s.send(wire.completed_orders_end())


@handler(wire.REQ_ACCOUNT_UPDATES)
def req_account_updates(s: Session, f: list[str]) -> None:
    subscribe, account = int(f[2] or 0), f[3]
    if not subscribe:
        return
    if account in s.gateway.accounts:
        s.send(*(wire.account_value(tag, value, ccy, account) for tag, value, ccy in ACCOUNT_VALUES))
        s.send(
            *(wire.portfolio_value(account, h.ins, h.quantity, h.market_price, h.avg_cost) for h in HOLDINGS)
        )
        s.send(wire.account_update_time(datetime.fromtimestamp(s.gateway.wall(), UTC).strftime("%H:%M")))
    s.send(wire.account_download_end(account))


@handler(wire.REQ_ACCOUNT_UPDATES_MULTI)
def req_account_updates_multi(s: Session, f: list[str]) -> None:
    req_id, account, model = int(f[2]), f[3], f[4]
    accounts = s.gateway.accounts if account in ("", "All") else (account,)
    for acct in accounts:
        if acct in s.gateway.accounts:
            s.send(
                *(
                    wire.account_update_multi(req_id, acct, model, tag, value, ccy)
                    for tag, value, ccy in ACCOUNT_VALUES
                )
            )
    s.send(wire.account_update_multi_end(req_id))


@handler(wire.REQ_EXECUTIONS)
def req_executions(s: Session, f: list[str]) -> None:
    req_id = int(f[2])
    acct_filter = f[4] if len(f) > 4 else ""
    symbol_filter = f[6] if len(f) > 6 else ""
    day = datetime.fromtimestamp(s.gateway.wall(), UTC).strftime("%Y%m%d")
    for n, acct in enumerate(s.gateway.accounts):
        fill = earlier_fill(acct, n, day)
        if (acct_filter and acct != acct_filter) or (symbol_filter and symbol_filter != fill.ins.symbol):
            continue
        s.send(wire.execution(s.version, req_id, fill), wire.commission_report(fill))
    s.send(wire.execution_end(req_id))


@handler(wire.REQ_ACCOUNT_SUMMARY)
def req_account_summary(s: Session, f: list[str]) -> None:
    req_id, tags = int(f[2]), set(f[4].split(",")) if len(f) > 4 else set()
    for acct in s.gateway.accounts:
        s.send(
            *(
                wire.account_summary(req_id, acct, tag, value, ccy)
                for tag, value, ccy in ACCOUNT_VALUES
                if not tags or tag in tags
            )
        )
    s.send(wire.account_summary_end(req_id))


@handler(wire.REQ_HISTORICAL_DATA, fallback=True)
def req_historical_data(s: Session, f: list[str]) -> None:
    """Enough for ib_async's Watchdog probe: a few 5 s midpoint bars ending now."""
    req_id = int(f[1])
    now = int(s.gateway.wall()) // 5 * 5
    bars = [(str(now - 5 * (5 - i)), 1.0850, 1.0852, 1.0849, 1.0851, -1.0, -1.0, -1) for i in range(6)]
    fmt = "%Y%m%d %H:%M:%S"
    start = datetime.fromtimestamp(now - 30, UTC).strftime(fmt) + " UTC"
    end = datetime.fromtimestamp(now, UTC).strftime(fmt) + " UTC"
    s.send(wire.historical_data(req_id, start, end, bars))


def _no_reply(s: Session, f: list[str]) -> None:
    """Cancels and subscriptions that need no reply."""


for _msg_id in (
    wire.CANCEL_ACCOUNT_SUMMARY,
    wire.CANCEL_POSITIONS,
    wire.CANCEL_ACCOUNT_UPDATES_MULTI,
    wire.REQ_AUTO_OPEN_ORDERS,
    wire.START_API,
):
    handler(_msg_id)(_no_reply)
