"""A minimal HTTP/1.1 client for tests, over anyio TCP with h11 (hypercorn's own HTTP/1.1 parser),
so health tests speak real HTTP without a client library or hand-written parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import h11


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class HttpConnection:
    """One client connection; requests go one after another (keep-alive unless asked not to)."""

    def __init__(self, stream: anyio.abc.SocketStream, host: str) -> None:
        self._stream = stream
        self._host = host
        self._conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> HttpConnection:
        return cls(await anyio.connect_tcp(host, port), host)

    async def request(self, path: str, method: str = "GET", *, keep_alive: bool = True) -> Reply:
        if self._conn.our_state is h11.DONE:
            self._conn.start_next_cycle()
        headers = [("Host", self._host), ("Content-Length", "0")]
        if not keep_alive:
            headers.append(("Connection", "close"))
        request = h11.Request(method=method, target=path, headers=headers)
        await self._stream.send(self._conn.send(request) + self._conn.send(h11.EndOfMessage()))
        status, body, response_headers = 0, b"", {}
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return Reply(status, response_headers, body)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError(f"closed before the response to {method} {path} ended")

    async def wait_closed_by_server(self) -> None:
        """Return once the server closes the connection (no further data may arrive)."""
        event = await self._next_event()
        assert isinstance(event, h11.ConnectionClosed), event

    async def _next_event(self) -> Any:
        while True:
            event = self._conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                data = b""
            self._conn.receive_data(data)

    async def aclose(self) -> None:
        await self._stream.aclose()


async def http_get(
    port: int, path: str, host: str = "127.0.0.1", timeout: float = 10.0, method: str = "GET"
) -> Reply:
    """One request (GET unless `method` says otherwise) on a connection of its own."""
    with anyio.fail_after(timeout):
        conn = await HttpConnection.open(port, host)
        try:
            return await conn.request(path, method, keep_alive=False)
        finally:
            await conn.aclose()
