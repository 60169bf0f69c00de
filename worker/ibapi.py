"""Typed doors into the unannotated parts of ib_async 2.1.0 that the worker uses.

ib_async annotates its IB facade but not Client, Wrapper or Decoder. Every call the worker makes
into those goes through one function here, so the rest of the worker type-checks strictly and
the list of internals we depend on (pinned with the guard's version check) is in one place.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from ib_async import IB


def _client(ib: IB) -> Any:
    return cast(Any, ib.client)


def _wrapper(ib: IB) -> Any:
    return cast(Any, ib.wrapper)


def api_connected(ib: IB) -> bool:
    """The client's API state is CONNECTED (the server version has been read)."""
    return bool(_client(ib).isConnected())


def next_req_id(ib: IB) -> int:
    return int(_client(ib).getReqId())


def start_request(ib: IB, key: int | str) -> asyncio.Future[Any]:
    """Register a keyed request with the wrapper; the future ends with the request's end message."""
    future: asyncio.Future[Any] = _wrapper(ib).startReq(key)
    return future


def req_account_summary(ib: IB, req_id: int, group: str, tags: str) -> None:
    _client(ib).reqAccountSummary(req_id, group, tags)


def cancel_account_summary(ib: IB, req_id: int) -> None:
    _client(ib).cancelAccountSummary(req_id)
