"""The one request path to a worker: checked and encoded first, then sent, then exactly one
outcome (its data, or a typed error from fsm.errors). ``m.request`` and the services' sessions
(fsm.services) both go through it, so a request means the same wherever it comes from."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import anyio

from fsm.commands import check_seconds, encode_request, error_from
from fsm.errors import IbgwError, RequestTimeout, WorkerDied
from fsm.process import Pending, WorkerProcess

__all__ = ["Prepared", "Requests", "Undelivered"]


class Undelivered(WorkerDied):
    """The request never reached the worker (it was dead or exiting, or its stdin failed):
    nothing was sent, so ``m.request`` hands it to the next session instead."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A request checked and encoded, ready to send: BadRequest has already been raised."""

    command: str
    rid: int
    line: bytes
    limit: float


class Requests:
    """Request ids, the requests in flight, and their outcome counters (in ``counts``)."""

    def __init__(self, request_timeout: float, counts: Counter[str]) -> None:
        self._default = request_timeout
        self._counts = counts
        self._ids = 0
        self.in_flight = 0  # calls waiting for an answer

    def new_id(self) -> int:
        self._ids += 1
        return self._ids

    def prepare(self, command: str, timeout: float | None, params: dict[str, Any]) -> Prepared:
        """BadRequest at once for a malformed command, params or timeout."""
        limit = self._default if timeout is None else check_seconds("timeout", timeout)
        rid = self.new_id()
        return Prepared(command, rid, encode_request(command, rid, limit, params), limit)

    async def exchange(self, w: WorkerProcess, p: Prepared) -> dict[str, Any]:
        """Send ``p`` to ``w`` and wait for its answer within its limit: the answer's data;
        Undelivered, RequestTimeout, WorkerDied, SessionLost, GatewayError... otherwise."""
        pending = w.pending[p.rid] = Pending()
        self.in_flight += 1
        sent = True
        try:
            with anyio.move_on_after(p.limit):
                if sent := await w.send(p.line):
                    await pending.done.wait()
        finally:
            self.in_flight -= 1
            w.pending.pop(p.rid, None)
        if not sent:  # not counted: nothing was sent (as for NotConnected)
            raise Undelivered(f"{p.command}: not sent: worker pid {w.pid} has stopped reading")
        if not pending.done.is_set():
            self._counts["requests_timed_out"] += 1
            raise RequestTimeout(f"{p.command}: no answer within {p.limit:g} s")
        resp = pending.response
        error: IbgwError | None = pending.error
        if error is None and resp is not None and not resp.ok:
            error = error_from(resp.error, p.command, session_lost=w.session_lost)
        if error is not None or resp is None:
            self._counts["requests_failed"] += 1
            raise error or WorkerDied(f"{p.command}: no answer")
        self._counts["requests_ok"] += 1
        return resp.data or {}
