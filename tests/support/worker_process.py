"""A small synchronous client for a `python -m worker` process (tests, benchmarks, debugging).

Not used by the manager (which has its own anyio driver): this one uses a reader thread per pipe so
it can wait on responses with deadlines from plain synchronous code.
"""

from __future__ import annotations

import collections
import itertools
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import IO, Any

from worker.protocol import (
    Chunk,
    Event,
    EventName,
    ProtocolError,
    Reassembler,
    Request,
    Response,
    decode_incoming,
    encode,
    request,
)


class WorkerProcess:
    """Spawn a worker, send lines, receive parsed responses/events with deadlines."""

    def __init__(
        self,
        argv: Sequence[str] | None = None,
        *,
        label: str = "test",
        env: dict[str, str] | None = None,
        stdin: Any = subprocess.PIPE,
    ) -> None:
        self.argv = list(argv or [sys.executable, "-m", "worker", "--label", label])
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self._incoming: queue.Queue[Response | Event | ProtocolError | None] = queue.Queue()
        self.events: list[Event] = []
        self.raw_lines: list[bytes] = []
        self.chunk_lines = 0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=400)
        self._ids = itertools.count(1)
        self._pending: dict[int, Response] = {}
        self.ready: Event | None = None
        self.ready_after: float | None = None  # seconds from spawn to `ready`
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.proc.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc.stderr,), daemon=True),
        ]
        for t in self._threads:
            t.start()

    # ---- reader threads

    def _read_stdout(self, pipe: IO[bytes]) -> None:
        """Lines as the manager reads them: chunk lines are joined into their response."""
        chunks = Reassembler()
        for line in pipe:
            self.raw_lines.append(line)
            try:
                msg: Response | Event | Chunk | ProtocolError | None = decode_incoming(line)
                if isinstance(msg, Chunk):
                    self.chunk_lines += 1
                    msg = chunks.feed(msg)
            except ProtocolError as exc:
                msg = exc
            if msg is not None:
                self._incoming.put(msg)
        self._incoming.put(None)

    def _read_stderr(self, pipe: IO[bytes]) -> None:
        for line in pipe:
            self.stderr_tail.append(line.decode(errors="replace").rstrip())

    # ---- sending

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send_bytes(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def send(self, req: Request) -> None:
        self.send_bytes(encode(req))

    def close_stdin(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()

    # ---- receiving

    def recv(self, timeout: float = 10.0) -> Response | Event:
        """Next message (response or event); TimeoutError at the deadline, EOFError at exit."""
        try:
            msg = self._incoming.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"no message from the worker within {timeout} s; stderr:\n" + self.stderr_text()
            ) from None
        if msg is None:
            self._incoming.put(None)
            raise EOFError("worker stdout closed")
        if isinstance(msg, ProtocolError):
            raise AssertionError(f"worker wrote a malformed line: {msg}")
        if isinstance(msg, Event):
            self.events.append(msg)
            if msg.event == EventName.READY and self.ready is None:
                self.ready = msg
                self.ready_after = time.perf_counter() - self.started
        return msg

    def recv_response(self, timeout: float = 10.0) -> Response:
        """Next response, skipping (and recording) events."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(deadline - time.monotonic(), 0.0))
            if isinstance(msg, Response):
                return msg

    def wait_ready(self, timeout: float = 20.0) -> Event:
        deadline = time.monotonic() + timeout
        while self.ready is None:
            msg = self.recv(max(deadline - time.monotonic(), 0.0))
            if isinstance(msg, Response):
                raise AssertionError(f"response before ready: {msg}")
        return self.ready

    def wait_response(self, rid: int, timeout: float = 10.0) -> Response:
        """The response with this id (others are kept for their own waiters)."""
        deadline = time.monotonic() + timeout
        while rid not in self._pending:
            resp = self.recv_response(max(deadline - time.monotonic(), 0.0))
            if resp.id is None:
                raise AssertionError(f"unexpected response without id: {resp}")
            self._pending[resp.id] = resp
        return self._pending.pop(rid)

    def wait_event(self, name: str, timeout: float = 10.0) -> Event:
        return self.wait_event_where(lambda e: e.event == name, timeout)

    def wait_event_where(self, pred: Callable[[Event], bool], timeout: float = 10.0) -> Event:
        """First event (already received or arriving before the deadline) matching pred."""
        for ev in self.events:
            if pred(ev):
                return ev
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(deadline - time.monotonic(), 0.0))
            if isinstance(msg, Event):
                if pred(msg):
                    return msg
            else:
                if msg.id is None:
                    raise AssertionError(f"unexpected response without id: {msg}")
                self._pending[msg.id] = msg

    def submit(self, command: str, **params: Any) -> int:
        """Send a request with a fresh id; returns the id."""
        rid = next(self._ids)
        self.send(request(command, id=rid, **params))
        return rid

    def call(self, command: str, *, wait: float = 10.0, **params: Any) -> Response:
        return self.wait_response(self.submit(command, **params), wait)

    def connect(
        self, port: int, client_id: int, *, host: str = "127.0.0.1", timeout: float = 30.0, wait: float = 40.0
    ) -> Response:
        """connect (readonly) and its answer; `wait` bounds how long the test waits for it."""
        return self.call(
            "connect", host=host, port=port, client_id=client_id, readonly=True, timeout=timeout, wait=wait
        )

    # ---- ending

    def wait_exit(self, timeout: float = 10.0) -> int:
        return self.proc.wait(timeout)

    def stderr_text(self) -> str:
        return "\n".join(self.stderr_tail)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close_stdin()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()
        for t in self._threads:
            t.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()
