"""Typed doors into the unannotated parts of ib_async 2.1.0 that the worker uses.

ib_async annotates its IB facade but not Client, Wrapper or Decoder. Every call the worker makes
into those goes through one function here, so the rest of the worker type-checks strictly and
the list of internals we depend on (pinned with the guard's version check) is in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, cast

import ib_async
from ib_async import IB
from ib_async.client import Client

VERSION: Final = ib_async.__version__


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


# ---- the socket path (worker.inbound, worker.liveness)

_REQ_CURRENT_TIME: Final = b"49\x001\x00"  # reqCurrentTime: message id 49, version 1
_CURRENT_TIME: Final = 49  # the reply's message id


def reroute_socket_data(ib: IB, handler: Callable[[bytes], None]) -> Callable[[bytes], None]:
    """Send the socket's chunks to handler instead of the client; return the client's own feed."""
    client = _client(ib)
    feed: Callable[[bytes], None] = client._onSocketHasData
    client.conn.hasData.disconnect(feed)  # an eventkit handler unhooked; the socket is untouched
    client.conn.hasData.connect(handler)
    return feed


def pending_frame_length(ib: IB) -> int | None:
    """Declared length of the frame the client is still assembling (None: no header yet)."""
    data: bytes = _client(ib)._data
    return int.from_bytes(data[:4], "big") if len(data) >= 4 else None


def pause_reading(ib: IB) -> None:
    """Stop reading the socket (TCP flow control holds the peer); it is not closed."""
    transport = _client(ib).conn.transport
    if transport is not None:
        transport.pause_reading()


def send_current_time_request(ib: IB) -> None:
    """A reqCurrentTime written straight to the socket, past the client's pacing queue."""
    client = _client(ib)
    client.conn.sendMsg(client._prefix(_REQ_CURRENT_TIME))


def pacing_backlog(ib: IB) -> int:
    """Messages waiting in the client's pacing (throttle) queue."""
    return len(_client(ib)._msgQ)


def divert_current_time_replies(ib: IB, take: Callable[[], bool]) -> None:
    """Each currentTime reply goes to the wrapper (a user's reqCurrentTime) unless take() claims it."""
    handlers: dict[int, Callable[[list[str]], None]] = _client(ib).decoder.handlers
    to_wrapper = handlers[_CURRENT_TIME]

    def handle(fields: list[str]) -> None:
        if not take():
            to_wrapper(fields)

    handlers[_CURRENT_TIME] = handle


def abort_requests(ib: IB, exc: BaseException) -> None:
    """Fail every request the wrapper is waiting on (the session is gone; the socket is not closed)."""
    futures: dict[Any, asyncio.Future[Any]] = _wrapper(ib)._futures
    for future in futures.values():
        if not future.done():
            future.set_exception(exc)


def pin_user_pacing(max_per_s: int) -> None:
    """ib_async's throttle: user requests get at most max_per_s messages a second."""
    Client.MaxRequests = max_per_s
    Client.RequestsInterval = 1


def ticker_req_id(ib: IB, ticker: Any, tick_type: str) -> int:
    """ib_async keeps a ticker's request id only in the wrapper (ticker2ReqId, 2.1.0)."""
    return int(_wrapper(ib).ticker2ReqId[tick_type].get(ticker, 0))
