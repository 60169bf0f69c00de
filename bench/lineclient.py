"""A minimal id-multiplexed JSON-lines client over a child process's pipes.

This is the bare parent side of the echo baseline (and the driver for the helper children):
one reader task routes replies to waiting callers by id. A manager must do at least this much, so
it is the honest floor to compare the manager against.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import anyio
import msgspec
from anyio.abc import Process, TaskGroup
from anyio.streams.buffered import BufferedByteReceiveStream

MAX_LINE = 1 << 20

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class ChildGone(RuntimeError):
    """The child closed its stdout (exited) while a caller was waiting."""


class LineClient:
    """Spawn `argv`, send dict requests with ids, await the reply carrying the same id."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stderr_to_null: bool = True,
        max_line: int = MAX_LINE,
    ) -> None:
        self.argv = list(argv)
        self.max_line = max_line
        self.env = env
        self.stderr_to_null = stderr_to_null
        self.proc: Process | None = None
        self.events: list[dict[str, Any]] = []
        self._event_seen = anyio.Event()
        self._pending: dict[int, tuple[anyio.Event, list[Any]]] = {}
        self._next_id = 0
        self._tg: TaskGroup | None = None
        self._closed = False
        self._eof = False
        self._send_lock = anyio.Lock()  # one writer at a time (trio refuses concurrent sends)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> LineClient:
        import subprocess

        self.proc = await anyio.open_process(
            self.argv,
            env=self.env,
            stderr=subprocess.DEVNULL if self.stderr_to_null else None,
        )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._reader)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def close(self, grace: float = 3.0) -> None:
        """Close stdin (the child exits on EOF); kill it if it has not gone within `grace`."""
        if self.proc is None or self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            try:
                await self.proc.stdin.aclose()  # type: ignore[union-attr]
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass
            with anyio.move_on_after(grace) as scope:
                await self.proc.wait()
            if scope.cancelled_caught:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                await self.proc.wait()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        await stream.aclose()

    async def _reader(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        buffered = BufferedByteReceiveStream(self.proc.stdout)
        try:
            while True:
                line = await buffered.receive_until(b"\n", self.max_line)
                msg = _decoder.decode(line)
                rid = msg.get("id") if isinstance(msg, dict) else None
                if rid is not None and rid in self._pending:
                    event, slot = self._pending.pop(rid)
                    slot.append(msg)
                    event.set()
                else:
                    self.events.append(msg)
                    self._event_seen.set()
                    self._event_seen = anyio.Event()
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.ClosedResourceError,
            anyio.BrokenResourceError,
        ):
            pass
        finally:
            for event, slot in self._pending.values():
                slot.append(ChildGone(f"{self.argv[:3]} closed its stdout"))
                event.set()
            self._pending.clear()
            self._eof = True
            self._event_seen.set()

    async def send_raw(self, msg: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        data = _encoder.encode(msg) + b"\n"
        async with self._send_lock:
            await self.proc.stdin.send(data)

    async def call(self, msg: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        """Send `msg` with a fresh id and return the reply with that id."""
        self._next_id += 1
        rid = self._next_id
        event = anyio.Event()
        slot: list[Any] = []
        if self._eof:
            raise ChildGone(f"{self.argv[:3]} closed its stdout")
        self._pending[rid] = (event, slot)
        try:
            with anyio.fail_after(timeout):
                await self.send_raw({**msg, "id": rid})
                await event.wait()
        finally:
            self._pending.pop(rid, None)
        got = slot[0]
        if isinstance(got, BaseException):
            raise got
        return got

    async def wait_event(self, name: str, timeout: float = 30.0, key: str = "event") -> dict[str, Any]:
        """Wait for an unsolicited line whose `key` is `name` (e.g. the worker's `ready`)."""
        with anyio.fail_after(timeout):
            while True:
                for ev in self.events:
                    if isinstance(ev, dict) and ev.get(key) == name:
                        return ev
                if self._eof or self._closed:
                    raise ChildGone(f"{self.argv[:3]} closed its stdout before {name!r}")
                await self._event_seen.wait()


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` as the kernel reports it."""
    import psutil

    return int(psutil.Process(pid).memory_info().rss)
