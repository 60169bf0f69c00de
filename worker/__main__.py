"""`python -m worker [--label TEXT]`: the only process where ib_async runs.

JSON lines: requests on stdin, one response per request and unsolicited events on stdout, logs on
stderr only. One asyncio loop: stdin is read without blocking the loop, each request runs as its
own task (a slow connect never holds up `status`), and every response is written and flushed as
soon as it is ready: one line, or chunk lines when longer than MAX_LINE_BYTES (see
worker.protocol), between which other answers may go.

Lifecycle: install the disconnect guard, emit `ready`, serve. On stdin EOF: finish the requests
already read, write their answers, then os._exit(0) — the session's socket is closed by the
kernel at process exit, never by ib_async (and no interpreter finaliser gets a chance to try).

ib_async's client-side pacing is pinned at 45 messages/s for user requests, as IB requires; a
burst above it is delayed, not refused (`status` reports the pacing values and how often it
throttled). `probe` keeps headroom outside it (worker.liveness).

Environment: IBGW_WORKER_LOG_LEVEL for the stderr log (default INFO for the worker's own lines and
WARNING for ib_async's, which logs every order, status, fill and position at INFO: ~0.2-0.6 ms
per order on the order's path; when set, the level applies to both); IBGW_WORKER_MIN_SESSION
(default 1.0 s): at EOF a session younger than this is kept until it is that old (no fast close).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import stat
import sys
import time
import types
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, BinaryIO

from worker.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    Code,
    CommandError,
    ConnectParams,
    Event,
    EventName,
    ProtocolError,
    Request,
    Response,
    connect,
    decode_command,
    encode,
    encode_response,
    event,
    failure,
    success,
)

if TYPE_CHECKING:  # worker.session imports ib_async + the guard: only after main()'s check
    from worker.session import Session

log = logging.getLogger("worker")

CHUNK = 1 << 16
DEFAULT_MIN_SESSION = 1.0  # s; IBGW_WORKER_MIN_SESSION overrides (see linger())
# The shape of the manager's connect line (every field given), for Worker.warm_up().
WARM_UP_LINE = encode(connect(ConnectParams(host="127.0.0.1", port=4002, client_id=0), id=0))


class StdoutGone(Exception):
    """The reader of our stdout has gone: nobody can receive answers any more."""


class Worker:
    """Line dispatch: decode, run the handler as a task, write exactly one response."""

    def __init__(self, out: BinaryIO) -> None:
        from worker.handlers import Context, registry
        from worker.orders import register as register_orders
        from worker.session import Session

        self._out = out
        register_orders(registry, self.emit)
        self.registry = registry
        self._params_map = registry.params_map()
        self.ctx = Context(session=Session(self.emit))
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()

    def warm_up(self) -> None:
        """Pay the first connect line's one-time decoding cost (msgspec's set-up for the connect
        params: ~0.3-0.7 ms) before `ready`, so a warm spare's connect does not."""
        decode_command(WARM_UP_LINE, self._params_map)

    def write(self, msg: Response | Event) -> None:
        """An event or a protocol error, written at once (chunked too, if it is ever that long)."""
        for line in encode_response(msg) if isinstance(msg, Response) else [encode(msg)]:
            self._write_line(line)

    def _write_line(self, line: bytes) -> None:
        try:
            self._out.write(line)
            self._out.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise StdoutGone(str(exc)) from exc

    async def write_response(self, resp: Response) -> None:
        """A response, in chunk lines if it is long; other answers may go between its chunks."""
        for n, line in enumerate(encode_response(resp)):
            if n:
                await asyncio.sleep(0)
            self._write_line(line)

    def emit(self, msg: Event) -> None:
        """For ib_async callbacks: never raise into ib_async's event machinery."""
        try:
            self.write(msg)
        except StdoutGone:
            log.error("stdout is gone; exiting")
            _exit(1)

    def handle_line(self, line: bytes) -> None:
        try:
            req, params = decode_command(line, self._params_map)
        except ProtocolError as exc:
            self.ctx.counters.rejected += 1
            self.write(exc.to_response())
            return
        self.ctx.counters.requests += 1
        self.ctx.counters.in_flight += 1
        task = self._loop.create_task(self._run(req, params))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def line_too_long(self, size: int) -> None:
        self.ctx.counters.rejected += 1
        self.write(
            failure(
                Code.LINE_TOO_LONG,
                f"line longer than {MAX_LINE_BYTES} bytes (read {size} so far); the rest of it is discarded",
            )
        )

    async def _run(self, req: Request, params: object) -> None:
        cmd = self.registry.get(req.command)
        assert cmd is not None
        try:
            data = await cmd.handler(self.ctx, params)
            resp = success(data, id=req.id)
            self.ctx.counters.succeeded += 1
        except CommandError as exc:
            resp = failure(exc.code, exc.message, id=req.id, ib_code=exc.ib_code)
            self.ctx.counters.failed += 1
        except Exception as exc:
            log.exception("%s failed", req.command)
            resp = failure(Code.INTERNAL_ERROR, f"{req.command}: {type(exc).__name__}: {exc}", id=req.id)
            self.ctx.counters.failed += 1
        finally:
            self.ctx.counters.in_flight -= 1
        try:
            await self.write_response(resp)
        except StdoutGone:
            log.error("stdout is gone; exiting")
            _exit(1)

    async def drain(self) -> None:
        """Wait for every request already read (each is bounded by its own timeout)."""
        while self.tasks:
            await asyncio.wait(set(self.tasks))


class LineSplitter:
    """Split chunks into lines; a line over MAX_LINE_BYTES is reported at once and skipped."""

    __slots__ = ("_buf", "_discarding", "_on_line", "_on_too_long")

    def __init__(self, on_line: Callable[[bytes], None], on_too_long: Callable[[int], None]) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._on_line = on_line
        self._on_too_long = on_too_long

    def feed(self, chunk: bytes) -> None:
        buf, on_line, on_too_long = self._buf, self._on_line, self._on_too_long
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            if nl < 0:
                if not self._discarding:
                    buf += chunk[start:]
                    if len(buf) > MAX_LINE_BYTES:
                        on_too_long(len(buf))
                        buf.clear()
                        self._discarding = True
                return
            if self._discarding:
                self._discarding = False
            elif not buf:  # the whole line is in this chunk: no copy via buf
                if nl - start > MAX_LINE_BYTES:
                    on_too_long(nl - start)
                else:
                    on_line(chunk[start:nl])
            else:
                buf += chunk[start:nl]
                if len(buf) > MAX_LINE_BYTES:
                    on_too_long(len(buf))
                else:
                    on_line(bytes(buf))
                buf.clear()
            start = nl + 1

    def close(self) -> None:
        """At EOF: a last line without its newline is still a line."""
        if self._buf and not self._discarding:
            self._on_line(bytes(self._buf))
        self._buf.clear()


async def read_lines(
    read: Callable[[], Awaitable[bytes]], on_line: Callable[[bytes], None], on_too_long: Callable[[int], None]
) -> None:
    """Feed chunks from read() to a LineSplitter until EOF."""
    splitter = LineSplitter(on_line, on_too_long)
    while chunk := await read():
        splitter.feed(chunk)
    splitter.close()


class _StdinProtocol(asyncio.Protocol):
    """Dispatches lines straight from data_received: no StreamReader wake-up in between."""

    def __init__(self, splitter: LineSplitter, done: asyncio.Future[None]) -> None:
        self._splitter = splitter
        self._done = done
        self._transport: asyncio.ReadTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def _fail(self, exc: BaseException) -> None:
        if not self._done.done():
            self._done.set_exception(exc)
        if self._transport is not None:
            self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if self._done.done():
            return
        try:
            self._splitter.feed(data)
        except BaseException as exc:
            self._fail(exc)

    def eof_received(self) -> bool | None:
        if not self._done.done():
            try:
                self._splitter.close()
            except BaseException as exc:
                self._fail(exc)
                return None
            self._done.set_result(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._done.done():
            if exc is None:
                self._done.set_result(None)
            else:
                self._done.set_exception(exc)


async def read_stdin(on_line: Callable[[bytes], None], on_too_long: Callable[[int], None]) -> None:
    """Dispatch stdin's lines until EOF.

    A pipe or socket (the manager's case) is read by a protocol that splits and dispatches in
    data_received. A regular file, /dev/null (epoll refuses both) or a terminal (the pipe
    transport would leave it non-blocking for the shell) is read by a thread instead.
    """
    loop = asyncio.get_running_loop()
    fd = sys.stdin.fileno()
    mode = os.fstat(fd).st_mode
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        done: asyncio.Future[None] = loop.create_future()
        splitter = LineSplitter(on_line, on_too_long)
        await loop.connect_read_pipe(lambda: _StdinProtocol(splitter, done), sys.stdin.buffer)
        await done
        return
    await read_lines(lambda: loop.run_in_executor(None, os.read, fd, CHUNK), on_line, on_too_long)


async def serve(out: BinaryIO) -> int:
    import ib_async

    # Pay ib_async's one-time date-parsing set-up (_strptime, its regexes, zoneinfo: ~2 ms) before
    # `ready`, so a spare worker's first connect does not (the start-up sync parses executions).
    ib_async.util.parseIBDatetime("20240102 03:04:05 UTC")
    worker = Worker(out)
    worker.warm_up()
    worker.write(
        event(
            EventName.READY,
            {"pid": os.getpid(), "ib_async": ib_async.__version__, "protocol": PROTOCOL_VERSION},
        )
    )
    await read_stdin(worker.handle_line, worker.line_too_long)
    log.info("stdin closed; answering %d request(s) in flight, then exiting", len(worker.tasks))
    await worker.drain()
    await linger(worker.ctx.session)
    return 0


def min_session_at_exit() -> float:
    try:
        return max(0.0, float(os.environ.get("IBGW_WORKER_MIN_SESSION", DEFAULT_MIN_SESSION)))
    except ValueError:
        return DEFAULT_MIN_SESSION


async def linger(session: Session) -> None:
    """Never close a session within MIN_SESSION of its handshake, even at EOF.

    A close ~100 ms after a handshake is what turned the Gateway's API layer RED in the original
    report; a one-shot `echo ... | python -m worker` would do exactly that without this.
    """
    if session.connected and session.connected_at is not None:
        left = session.connected_at + min_session_at_exit() - time.monotonic()
        if left > 0:
            log.info(
                "session is %.0f ms old: keeping it %.0f ms more before exiting",
                (time.monotonic() - session.connected_at) * 1000,
                left * 1000,
            )
            await asyncio.sleep(left)


def _exit(code: int) -> None:
    """Flush and leave without running finalisers (nothing may close the socket but the kernel)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    logging.shutdown()
    os._exit(code)


def _trampoline(fn: Callable[[], None]) -> None:
    fn()


# CPython 3.11 frees a 16 KiB frame-stack ("data stack") chunk as soon as the frame at its base
# returns (cpython gh-142183; the fix, a one-chunk cache, is in 3.13+ only). Code that keeps
# calling across a chunk boundary then pays an mmap + munmap + page faults per call. Where the
# boundary falls depends only on how deep we start (`python -m` adds runpy's frames): at the
# depth `-m worker` gives main(), importing ib_async (numpy's typing aliases) made ~2 600 such
# pairs, +50 ms before `ready`. A frame with an oversized value stack cannot fit in the current
# chunk, so it gets a fresh 64 KiB one whose free part (~4 000 slots) is deeper than the import
# and the serve loop go: no boundary is crossed, whatever the entry point.
_STACK_HEADROOM_SLOTS = 4096
_with_stack_headroom = types.FunctionType(
    _trampoline.__code__.replace(co_stacksize=_trampoline.__code__.co_stacksize + _STACK_HEADROOM_SLOTS),
    _trampoline.__globals__,
    "_with_stack_headroom",
)


def main(argv: list[str] | None = None) -> None:
    """Entry point; all the work runs with fresh data-stack headroom (see _with_stack_headroom)."""
    _with_stack_headroom(lambda: _main(argv))


def _main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.split("\n")[0])
    parser.add_argument("--label", default="", help="ignored; shows in ps (ibgw-fsm:host:port:id)")
    parser.parse_args(argv)
    level = os.environ.get("IBGW_WORKER_LOG_LEVEL", "").upper()
    logging.basicConfig(
        stream=sys.stderr,
        format="%(asctime)s worker[%(process)d] %(levelname)s %(name)s: %(message)s",
        level=level or "INFO",
    )
    logging.getLogger("ib_async").setLevel(level or "WARNING")  # see the module docstring
    try:
        from worker import guard
    except RuntimeError as exc:  # GuardVersionError: wrong ib_async
        log.critical("%s", exc)
        _exit(3)
    guard.install()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    code = 0
    try:
        code = loop.run_until_complete(serve(sys.stdout.buffer))
    except StdoutGone as exc:
        log.error("stdout is gone (%s); exiting", exc)
        code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        log.exception("worker crashed")
        code = 2
    # Not loop.close()/asyncio.run cleanup: leave every transport to the kernel at exit.
    _exit(code)


if __name__ == "__main__":
    main()
