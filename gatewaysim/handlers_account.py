"""Handlers for the session's basics: time, ids, accounts, positions and the account book."""

from __future__ import annotations

from datetime import UTC, datetime

from . import wire
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
    for acct in s.gateway.book.accounts.values():
        s.send(*(wire.position(acct.name, p.ins, p.quantity, p.avg_cost) for p in acct.positions.values()))
    s.send(wire.position_end())


@handler(wire.REQ_ACCOUNT_UPDATES)
def req_account_updates(s: Session, f: list[str]) -> None:
    subscribe, account = int(f[2] or 0), f[3]
    if not subscribe:
        return
    acct = s.gateway.book.accounts.get(account)
    if acct is not None:
        s.send(*(wire.account_value(tag, value, ccy, account) for tag, value, ccy in acct.values()))
        s.send(
            *(
                wire.portfolio_value(account, p.ins, p.quantity, p.market_price, p.avg_cost, p.realized_pnl)
                for p in acct.positions.values()
            )
        )
        s.send(wire.account_update_time(datetime.fromtimestamp(s.gateway.wall(), UTC).strftime("%H:%M")))
    s.send(wire.account_download_end(account))


@handler(wire.REQ_ACCOUNT_UPDATES_MULTI)
def req_account_updates_multi(s: Session, f: list[str]) -> None:
    req_id, account, model = int(f[2]), f[3], f[4]
    book = s.gateway.book.accounts
    for acct in book.values() if account in ("", "All") else [book[account]] if account in book else []:
        s.send(
            *(
                wire.account_update_multi(req_id, acct.name, model, tag, value, ccy)
                for tag, value, ccy in acct.values()
            )
        )
    s.send(wire.account_update_multi_end(req_id))


@handler(wire.REQ_ACCOUNT_SUMMARY)
def req_account_summary(s: Session, f: list[str]) -> None:
    req_id, tags = int(f[2]), set(f[4].split(",")) if len(f) > 4 else set()
    for acct in s.gateway.book.accounts.values():
        s.send(
            *(
                wire.account_summary(req_id, acct.name, tag, value, ccy)
                for tag, value, ccy in acct.values()
                if not tags or tag in tags
            )
        )
    s.send(wire.account_summary_end(req_id))


def _no_reply(s: Session, f: list[str]) -> None:
    """Cancels and subscriptions that need no reply."""


for _msg_id in (
    wire.CANCEL_ACCOUNT_SUMMARY,
    wire.CANCEL_POSITIONS,
    wire.CANCEL_ACCOUNT_UPDATES_MULTI,
    wire.START_API,
):
    handler(_msg_id)(_no_reply)
