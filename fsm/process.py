"""One worker process: spawn, line pump, send, exit watch, and the one retire ladder.

The handle knows nothing of the state machine. It turns the worker's stdout into answers for the
requests in flight (``pending``, by id) and events for the driver (``on_event``), tells the
driver once when the process has exited (``on_exit``), and ends a process by exit only:
stdin EOF, then SIGTERM (+SIGCONT, so a stopped process can act on it), then SIGKILL. That
ladder (``retire``) also ends the stale workers fsm.zombies has proven ours.

A line longer than the protocol's bound fails the one request it answers (its id is read from
the line's start: the worker writes ``"id"`` first) and the pump reads on: a big answer never
costs the session.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio
import anyio.abc
import psutil

from fsm.commands import error_from
from fsm.errors import IbgwError, ResponseTooLarge, WorkerDied
from fsm.pids import ProcessId
from worker import protocol as wp

log = logging.getLogger(__name__)
worker_log = logging.getLogger("fsm.worker")

__all__ = ["LineSplitter", "Overlong", "Pending", "RetireStep", "WorkerProcess", "retire"]

STDERR_LINE = 65536  # worker log lines are split at this length
KILL_WAIT = 10.0  # after SIGKILL: only a process stuck in the kernel takes longer

RetireStep = Literal["eof", "term", "kill"]


# ------------------------------------------------------------------------------ the retire ladder


class Exitable(Protocol):
    """What the retire ladder needs of a process."""

    pid: int

    async def close_input(self) -> bool: ...  # stdin EOF; False if it has none (not our child)

    def signal(self, sig: signal.Signals) -> None: ...

    async def wait_exit(self, timeout: float) -> bool: ...


async def retire(
    target: Exitable,
    *,
    eof: bool,
    eof_grace: float,
    term_grace: float,
    on_step: Callable[[RetireStep], None] | None = None,
) -> bool:
    """End ``target`` by process exit: stdin EOF (if ``eof``), wait ``eof_grace``; SIGTERM and
    SIGCONT, wait ``term_grace``; SIGKILL, wait. Never a disconnect. True once it is gone."""
    step = on_step or (lambda _: None)
    if eof and await target.close_input():
        step("eof")
        if await target.wait_exit(eof_grace):
            return True
        log.warning("pid %d still running %.1f s after stdin EOF: SIGTERM", target.pid, eof_grace)
    step("term")
    target.signal(signal.SIGTERM)
    target.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
    if await target.wait_exit(term_grace):
        return True
    log.warning("pid %d ignored SIGTERM for %.1f s: SIGKILL", target.pid, term_grace)
    step("kill")
    target.signal(signal.SIGKILL)
    if await target.wait_exit(KILL_WAIT):
        return True
    log.error("pid %d survived SIGKILL for %.0f s", target.pid, KILL_WAIT)
    return False


# ------------------------------------------------------------------------------------ line pump


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line over the bound, dropped: its first bytes (for the id) and its length."""

    prefix: bytes
    size: int


class LineSplitter:
    """Bytes in, complete lines out (without the newline); a line over ``limit`` comes out as
    one Overlong once it ends, its bytes dropped as they arrive (memory stays bounded)."""

    PREFIX = 64

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._over: Overlong | None = None

    def feed(self, data: bytes) -> list[bytes | Overlong]:
        out: list[bytes | Overlong] = []
        start = 0
        while True:
            nl = data.find(b"\n", start)
            piece = data[start:] if nl < 0 else data[start:nl]
            if self._over is not None:
                self._over = Overlong(self._over.prefix, self._over.size + len(piece))
            elif len(self._buf) + len(piece) > self.limit:
                head = bytes(self._buf[: self.PREFIX]) + piece[: self.PREFIX]
                self._over = Overlong(head[: self.PREFIX], len(self._buf) + len(piece))
                self._buf.clear()
            elif nl >= 0 and not self._buf:
                out.append(piece)  # the common case: a whole line in one read, no copy
            else:
                self._buf += piece
            if nl < 0:
                return out
            if self._over is not None:
                out.append(self._over)
                self._over = None
            elif self._buf:
                out.append(bytes(self._buf))
                self._buf.clear()
            start = nl + 1

    @property
    def rest(self) -> bytes:
        """What is left after the stream ended: a last line without its newline."""
        return bytes(self._buf)


# ---------------------------------------------------------------------------------- the handle


class Pending:
    """One request awaiting its response line (or the worker's death)."""

    __slots__ = ("done", "error", "on_done", "response")

    def __init__(self, on_done: Callable[[Pending], None] | None = None) -> None:
        self.done = anyio.Event()
        self.response: wp.Response | None = None
        self.error: IbgwError | None = None
        self.on_done = on_done

    def resolve(self, response: wp.Response | None = None, error: IbgwError | None = None) -> None:
        if self.done.is_set():
            return
        self.response, self.error = response, error
        self.done.set()
        if self.on_done is not None:
            self.on_done(self)


class WorkerProcess:
    """One worker process (one generation) and what is in flight to it."""

    def __init__(
        self,
        gen: int,
        proc: anyio.abc.Process,
        on_event: Callable[[WorkerProcess, wp.Event], None],
        on_exit: Callable[[WorkerProcess], None],
    ) -> None:
        self.gen = gen
        self.proc = proc
        self.pid = proc.pid
        try:
            self.ident: ProcessId | None = ProcessId(proc.pid, psutil.Process(proc.pid).create_time())
        except psutil.Error:
            self.ident = None
        self.pending: dict[int, Pending] = {}
        self._chunks = wp.Reassembler()
        self._on_event, self._on_exit = on_event, on_exit
        # fast_acquire: an uncontended send does not yield to the loop before writing
        self._send_lock = anyio.Lock(fast_acquire=True)
        self.stdin_closed = False
        self.write_failed = False  # a write raised or timed out: no further line can follow it
        self.stdout_done = anyio.Event()
        self.retiring = False
        self.exit_reported = False
        # What the driver learned about this worker's session.
        self.ready_pid: int | None = None  # from its `ready` event
        self.session_ns: int | None = None  # when its handshake completed
        self.session_lost = False
        self.upstream_lost = False  # a 1100 came before its handshake completed

    @classmethod
    async def spawn(
        cls,
        tg: anyio.abc.TaskGroup,
        argv: Sequence[str],
        env: Mapping[str, str],
        gen: int,
        on_event: Callable[[WorkerProcess, wp.Event], None],
        on_exit: Callable[[WorkerProcess], None],
    ) -> WorkerProcess | None:
        """Start the process in its own session and its three pumps; None if it cannot start."""
        try:
            # Shielded: a process that exists must be registered before anything can cancel us.
            with anyio.CancelScope(shield=True):
                proc = await anyio.open_process(list(argv), env=dict(env), start_new_session=True)
        except OSError as exc:
            log.error("cannot start the worker (%s): %s", " ".join(argv), exc)
            return None
        w = cls(gen, proc, on_event, on_exit)
        tg.start_soon(w._pump_stdout)
        tg.start_soon(w._drain_stderr)
        tg.start_soon(w._watch_exit)
        return w

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def fail_pending(self, why: str) -> None:
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.resolve(error=WorkerDied(why))

    @property
    def accepting(self) -> bool:
        """Whether a line written now can reach a live worker: not once its stdout has ended
        (it died or is exiting), its stdin was closed, a write failed, or it is being retired.
        The manager learns of an exit only after the process is reaped; until then this is what
        keeps requests from going to a dead worker."""
        return not (self.stdin_closed or self.write_failed or self.retiring or self.stdout_done.is_set())

    async def send(self, line: bytes, timeout: float | None = None) -> bool:
        """Write one encoded line; False if it was not delivered: the worker is not
        ``accepting``, the write failed (then no line is written to this worker again, so a
        dead pipe is written to at most once) or stdin stays full for ``timeout`` (a stopped
        worker whose pipe filled up must not block the caller). Without ``timeout``, False
        means no whole line reached the worker."""
        stdin = self.proc.stdin
        if stdin is None:
            return False
        try:
            if timeout is None:  # the caller's own scope bounds it: no second cancel scope
                async with self._send_lock:
                    if not self.accepting:
                        return False
                    await stdin.send(line)
            else:
                with anyio.fail_after(timeout):
                    async with self._send_lock:
                        if not self.accepting:
                            return False
                        await stdin.send(line)
            return True
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            self.write_failed = True
            return False

    # -- Exitable, for the retire ladder --

    async def close_input(self) -> bool:
        if self.stdin_closed or self.proc.stdin is None:
            return False
        self.stdin_closed = True
        with anyio.move_on_after(1):
            try:
                await self.proc.stdin.aclose()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
        return True

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(sig)  # our own unreaped child: the pid cannot have been reused
        except ProcessLookupError:
            pass

    async def wait_exit(self, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await self.proc.wait()
            return True
        return False

    # -- pumps --

    async def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        lines = LineSplitter(wp.MAX_LINE_BYTES)
        try:
            async for data in self.proc.stdout:
                for line in lines.feed(data):
                    try:
                        self._on_line(line)
                    except Exception:
                        log.exception("handling a line from worker %d failed", self.pid)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self.stdout_done.set()
            self._chunks.clear()
            self.fail_pending(f"worker pid {self.pid} closed its stdout (it died or is exiting)")

    def _on_line(self, line: bytes | Overlong) -> None:
        if isinstance(line, Overlong):
            rid = wp.line_id(line.prefix)
            log.error(
                "worker %d wrote a %d-byte line, over the %d-byte bound",
                self.pid,
                line.size,
                wp.MAX_LINE_BYTES,
            )
            self._fail(
                rid,
                ResponseTooLarge(
                    f"an answer line of {line.size} bytes, over the {wp.MAX_LINE_BYTES}-byte bound"
                ),
            )
            return
        msg: wp.Response | wp.Event | wp.Chunk | None
        try:
            msg = wp.decode_incoming(line)
            if isinstance(msg, wp.Chunk):
                msg = self._chunks.feed(msg)  # the whole response once its last piece is in
        except wp.ProtocolError as exc:
            log.warning("worker %d: unreadable line (%s): %r", self.pid, exc.message, line[:200])
            self._fail(exc.id, error_from(wp.ErrorInfo(code=exc.code, message=exc.message), "answer"))
            return
        if msg is None:
            return
        if isinstance(msg, wp.Event):
            self._on_event(self, msg)
            return
        pending = self.pending.pop(msg.id, None) if msg.id is not None else None
        if pending is None:
            log.debug("worker %d: response to no pending request: %r", self.pid, msg)
        else:
            pending.resolve(response=msg)

    def _fail(self, rid: int | None, error: IbgwError) -> None:
        """Fail request ``rid`` alone (an answer that cannot be read); the session goes on."""
        pending = self.pending.pop(rid, None) if rid is not None else None
        if pending is not None:
            pending.resolve(error=error)

    async def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        lines = LineSplitter(STDERR_LINE)
        try:
            async for data in self.proc.stderr:
                for line in lines.feed(data):
                    text = line.prefix + b"..." if isinstance(line, Overlong) else line
                    worker_log.info("[%d] %s", self.pid, text.decode("utf-8", "replace").rstrip())
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        if lines.rest:
            worker_log.info("[%d] %s", self.pid, lines.rest.decode("utf-8", "replace").rstrip())

    async def _watch_exit(self) -> None:
        code = await self.proc.wait()
        with anyio.move_on_after(1):  # let the last lines (answers, events) be read first
            await self.stdout_done.wait()
        log.info("worker %d exited with %s", self.pid, code)
        try:
            self.report_exit()
        except Exception:
            log.exception("reporting the exit of worker %d failed", self.pid)
        with anyio.move_on_after(1):
            await self.proc.aclose()

    def report_exit(self) -> None:
        """Tell the driver, once, that this process has exited (its pumps or a retirement)."""
        if not self.exit_reported:
            self.exit_reported = True
            self._on_exit(self)
