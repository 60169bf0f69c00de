"""ConnectionManager: the anyio runtime that drives the sans-IO core and one worker process.

The core (fsm/core.py) decides; this module only does what it is told and reports what happened:

- inputs: worker stdout lines (decoded with worker.protocol), process exit, and the timer (one
  task sleeping until ``core.next_deadline()``, woken early whenever an input may have moved it);
- outputs: the core's actions, performed in order by one task (spawn, connect, probe, retire,
  reap, data-lost notice).

Every input from a worker is tagged with that worker's generation; inputs from a worker that is
being retired or has been replaced are dropped, so a late line from an old process can never move
the new session. A session ends only by its worker process exiting (stdin EOF, then SIGTERM, then
SIGKILL, by pid of our own child); there is no disconnect anywhere in this module.

Runs on any anyio backend (asyncio, trio): ib_async lives only in the worker process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import sys
import time
import weakref
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, NoReturn

import anyio
import anyio.abc
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from fsm.core import (
    ConnectionCore,
    NotifyDataLost,
    ReapZombies,
    Reason,
    RetireWorker,
    SendConnect,
    SendProbe,
    SpawnWorker,
    State,
    Transition,
)
from fsm.errors import (
    BadRequest,
    DisconnectForbidden,
    GatewayError,
    IbgwError,
    InvalidEvent,
    NotConnected,
    RequestTimeout,
    WorkerDied,
)
from fsm.settings import Settings
from fsm.status import status_path, write_status
from fsm.zombies import LockRecord, WorkerLock, reap_stale_worker, worker_label
from worker import protocol as wp

log = logging.getLogger(__name__)
worker_log = logging.getLogger("fsm.worker")

__all__ = ["FARM_CODES", "ConnectionManager", "Notice", "StateChange", "Subscription"]

#: Gateway notices about its data farms: recorded and published, never a connection loss.
FARM_CODES = frozenset({2103, 2104, 2105, 2106, 2107, 2108, 2157, 2158})

#: How a failed `connect` response maps onto the core's handshake_failed reason.
HANDSHAKE_REASONS: dict[str, Reason] = {
    wp.Code.HANDSHAKE_TIMEOUT: Reason.api_unresponsive,
    wp.Code.CLIENT_ID_IN_USE: Reason.client_id_in_use,
    wp.Code.CONNECTION_REFUSED: Reason.refused,
    wp.Code.PEER_CLOSED: Reason.peer_closed,
}

#: The manager's own counters in metrics() (next to the core's); all start at 0.
MANAGER_COUNTERS = (
    "workers_spawned",
    "spawn_failures",
    "retire_eof",
    "retire_term",
    "retire_kill",
    "zombies_reaped",
    "ib_326",
    "requests_ok",
    "requests_failed",
    "requests_timed_out",
    "stale_inputs_dropped",
    "inputs_ignored",
    "notices_farm",
    "notices_data_lost",
    "notices_client_id_in_use",
    "notices_zombie_reaped",
    "spares_spawned",
    "spares_adopted",
)

_BAD_REQUEST_CODES = frozenset(
    {wp.Code.BAD_REQUEST, wp.Code.UNKNOWN_COMMAND, wp.Code.INVALID_JSON, wp.Code.LINE_TOO_LONG}
)


# ------------------------------------------------------------------------------------ published


@dataclass(frozen=True, slots=True)
class StateChange:
    """One core transition as subscribers see it.

    ``at`` is wall-clock epoch seconds (for people); ``at_ns`` is the core's monotonic ns (for
    measuring). ``dropped`` counts items this subscriber lost to overflow just before this one.
    """

    at: float
    source: State
    event: str
    dest: State
    reason: Reason | None
    at_ns: int
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Notice:
    """Something subscribers should know that is not a transition.

    kind: ``farm`` (codes 2103-2108/2157/2158), ``data_lost`` (1101: re-request market data),
    ``client_id_in_use`` (a 326 arrived), ``zombie_reaped`` (a stale worker of ours was ended).
    """

    at: float
    kind: str
    code: int | None
    message: str
    at_ns: int
    dropped: int = 0


Change = StateChange | Notice


class Subscription:
    """An async iterator of Change items with a bounded buffer.

    A slow reader never blocks the manager: when the buffer is full the oldest item is dropped,
    and the next item handed out carries ``dropped=N``. The iterator ends after the manager shuts
    down (remaining items are still delivered) or after ``close()``.
    """

    def __init__(self, maxlen: int, on_close: Callable[[Subscription], None]) -> None:
        self._items: deque[Change] = deque()
        self._maxlen = maxlen
        self._lost = 0
        self._closed = False
        self._wakeup: anyio.Event | None = None
        self._on_close = on_close

    def _put(self, item: Change) -> None:
        if self._closed:
            return
        if len(self._items) >= self._maxlen:
            self._items.popleft()
            self._lost += 1
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()
            self._wakeup = None

    def close(self) -> None:
        """Stop receiving; buffered items are still handed out, then iteration ends."""
        if not self._closed:
            self._closed = True
            self._on_close(self)
            self._wake()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Change:
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            if self._wakeup is None:
                self._wakeup = anyio.Event()
            await self._wakeup.wait()
        item = self._items.popleft()
        if self._lost:
            item = dataclasses.replace(item, dropped=self._lost)
            self._lost = 0
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------- internals


class _Pending:
    """One request awaiting its response line (or the worker's death)."""

    __slots__ = ("done", "error", "on_done", "response")

    def __init__(self, on_done: Callable[[_Pending], None] | None = None) -> None:
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


class _Worker:
    """One worker process (one generation) and what is in flight to it."""

    def __init__(self, gen: int, proc: anyio.abc.Process, create_time: float | None) -> None:
        self.gen = gen
        self.proc = proc
        self.pid = proc.pid
        self.create_time = create_time
        self.pending: dict[int, _Pending] = {}
        # fast_acquire: an uncontended send does not yield to the loop before writing
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.retiring = False
        self.stdin_closed = False
        self.stdout_done = anyio.Event()
        self.reported = False
        self.session_ns: int | None = None  # when its handshake completed
        self.session_lost = False
        self.ready_pid: int | None = None  # set by its `ready` event
        self.upstream_lost = False  # a 1100 came before its handshake completed

    def fail_pending(self, why: str) -> None:
        pending, self.pending = self.pending, {}
        for p in pending.values():
            p.resolve(error=WorkerDied(why))


def _wall(at_ns: int) -> float:
    return time.time() - (time.monotonic_ns() - at_ns) / 1e9


# --------------------------------------------------------------------------------------- manager


class ConnectionManager:
    """Owns one Gateway connection (one client id) through one worker process at a time.

    Use as ``async with ConnectionManager(settings) as m:``; leaving the block shuts down (the
    worker is retired by process exit, never by a disconnect; a session younger than
    settings.min_session is kept until it is that old, so a quick script cannot fast-close).
    Entering takes the per-(host, port, client id) lock (AlreadyRunning if a live manager holds
    it) and ends a stale worker of ours that a dead manager left holding the id.
    Worker stderr goes to the ``fsm.worker`` logger.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        worker_argv: Sequence[str] | None = None,
        subscriber_buffer: int = 1024,
    ) -> None:
        self.settings = settings
        s = settings
        self._core = ConnectionCore(settings)
        self._label = worker_label(s.host, s.port, s.client_id)
        base = list(worker_argv) if worker_argv else [sys.executable, "-m", "worker"]
        self._argv = [*base, "--label", self._label]
        # The worker's own no-fast-close linger at stdin EOF follows our min_session.
        self._worker_env = {**os.environ, "IBGW_WORKER_MIN_SESSION": repr(s.min_session)}
        self._lock = WorkerLock(s.state_dir, s.host, s.port, s.client_id)
        self._status_path = status_path(s.state_dir, s.host, s.port, s.client_id)
        self._stale: LockRecord | None = None
        self._worker: _Worker | None = None
        self._spare: _Worker | None = None  # settings.warm_spare: idle, ready, never connected
        self._gen = 0
        self._ids = 0
        self._probe_seq = 0
        self._subs: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._sub_maxlen = max(1, subscriber_buffer)
        self._last_seen: Any = None
        self._since_wall = time.time()
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_wake: anyio.Event | None = None
        self._changed: anyio.Event | None = None
        self._actions: deque[Any] = deque()
        self._actions_wake: anyio.Event | None = None
        self._actor_scope: anyio.CancelScope | None = None
        self._actor_done: anyio.Event | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._closed_event: anyio.Event | None = None
        self._farms: dict[int, str] = {}
        self._counts: Counter[str] = Counter(dict.fromkeys(MANAGER_COUNTERS, 0))
        self._in_flight = 0  # request() calls waiting for an answer
        #: The data of the last successful connect (accounts, server_version, elapsed_ms, ...).
        self.last_handshake: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------- public API

    @property
    def state(self) -> State:
        return self._core.state

    @property
    def reason(self) -> Reason | None:
        return self._core.reason

    @property
    def client_id(self) -> int:
        return self.settings.client_id

    @property
    def history(self) -> list[Transition]:
        """The core's transitions (at_ns, source, event, dest, reason), oldest first."""
        return list(self._core.history)

    @property
    def worker_pid(self) -> int | None:
        w = self._worker
        return w.pid if w is not None else None

    @property
    def farms(self) -> dict[int, str]:
        """Latest message per farm status code (2103-2108, 2157, 2158)."""
        return dict(self._farms)

    def metrics(self) -> dict[str, Any]:
        """The core's counters and durations plus the manager's own counts."""
        out = dict(self._core.metrics(time.monotonic_ns()))
        out.update(self._counts)
        out["state"] = str(self.state)
        out["worker_pid"] = self.worker_pid
        out["requests_in_flight"] = self._in_flight
        return out

    async def wait_for(self, state: State, timeout: float | None = None) -> None:
        """Return once the core is in ``state``; TimeoutError after ``timeout`` seconds.

        NotConnected if the manager shuts down first (unless waiting for IDLE).
        """
        with anyio.fail_after(timeout):
            while self._core.state != state:
                if self._closing and state != State.IDLE:
                    raise NotConnected(f"the manager shut down while waiting for {state}")
                assert self._changed is not None, "use the manager inside `async with`"
                await self._changed.wait()

    async def wait_connected(self, timeout: float | None = None) -> None:
        await self.wait_for(State.CONNECTED, timeout)

    def subscribe(self) -> Subscription:
        """State changes and notices from now on (see Subscription for the overflow rule)."""
        sub = Subscription(self._sub_maxlen, self._subs.discard)
        if self._closed:
            sub.close()
        else:
            self._subs.add(sub)
        return sub

    def disconnect(self) -> NoReturn:
        """Always refuses: a session ends only by its worker's exit, through shutdown()."""
        raise DisconnectForbidden()

    async def request(
        self,
        command: str,
        *,
        timeout: float | None = None,
        wait: float | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        """Send one command to the worker; exactly one outcome: its data, or a typed error.

        NotConnected if there is no session (at once, or after ``wait`` seconds of waiting for
        one); WorkerDied if the worker dies first; RequestTimeout after ``timeout`` (default
        settings.request_timeout); BadRequest for a malformed command; GatewayError(code).
        """
        if command == "disconnect":
            raise DisconnectForbidden()
        if command == "connect":
            raise BadRequest("connect is the manager's own job; request() is for session commands")
        if timeout is None:
            timeout = self.settings.request_timeout
        params_type = wp.COMMAND_PARAMS.get(command)
        if params_type is not None and "timeout" in params_type.__struct_fields__:
            params.setdefault("timeout", timeout)
        rid = self._new_id()
        try:
            msg = wp.request(command, id=rid, **params)
        except wp.ProtocolError as exc:
            raise BadRequest(exc.message) from None
        w = await self._session_worker(command, wait)
        pending = _Pending()
        w.pending[rid] = pending
        self._in_flight += 1
        try:
            with anyio.move_on_after(timeout):
                if not await self._send(w, msg):
                    pending.resolve(error=WorkerDied(f"{command}: the worker's stdin is closed"))
                await pending.done.wait()
        finally:
            self._in_flight -= 1
            w.pending.pop(rid, None)
        if not pending.done.is_set():
            self._counts["requests_timed_out"] += 1
            raise RequestTimeout(f"{command}: no answer within {timeout:g} s")
        if pending.error is not None:
            self._counts["requests_failed"] += 1
            raise pending.error
        resp = pending.response
        assert resp is not None
        if resp.ok:
            self._counts["requests_ok"] += 1
            return resp.data or {}
        self._counts["requests_failed"] += 1
        raise _error_from(resp.error, command)

    async def shutdown(self) -> None:
        """Retire the worker by process exit and stop; idempotent. Never disconnects."""
        if self._closed or not self._started:
            return
        assert self._closed_event is not None
        if self._closing:
            await self._closed_event.wait()
            return
        self._closing = True
        self._notify_changed()
        try:
            await self._no_fast_close()
            handshaking = self._core.state == State.HANDSHAKING
            # Stop performing actions first: nothing may be spawned after this point.
            if self._actor_scope is not None:
                self._actor_scope.cancel()
                assert self._actor_done is not None
                with anyio.move_on_after(5):
                    await self._actor_done.wait()
            self._actions.clear()
            self._feed(None, "shutdown")
            self._actions.clear()  # only RetireWorker can come out of shutdown; done right here
            spare, self._spare = self._spare, None
            if spare is not None:
                await self._retire(spare)
            w = self._worker
            if w is not None:
                # A worker still in its handshake would finish it on stdin EOF and then exit at
                # once (a fast close): end it by signal before the handshake can complete.
                await self._retire(w, eof=not handshaking)
                self._worker_gone(w)
        finally:
            self._closed = True
            for sub in list(self._subs):
                sub.close()
            self._notify_changed()
            self._write_status(stopped=True)
            self._lock.release()
            self._closed_event.set()

    async def _no_fast_close(self) -> None:
        """Before a shutdown retires the worker: never close a session younger than min_session.

        A connect -> close cycle within a short window is what turns a Gateway's API layer RED,
        and `async with manager: one request` would be exactly that. So a handshake in progress
        gets up to min_session to settle, and a live session is kept until it is min_session
        old. These are deliberate waits (bounded by min_session each), not synchronisation.
        """
        ms = self.settings.min_session
        assert self._changed is not None
        with anyio.move_on_after(ms):
            while self._core.state == State.HANDSHAKING and self._worker is not None:
                await self._changed.wait()
        w = self._worker
        if w is None or w.session_ns is None or w.session_lost or w.retiring:
            return
        left = (w.session_ns - time.monotonic_ns()) / 1e9 + ms
        if left > 0:
            log.info("shutdown: session is %.2f s old; keeping it %.2f s more (min_session)", ms - left, left)
            await anyio.sleep(left)

    async def __aenter__(self) -> ConnectionManager:
        if self._started:
            raise RuntimeError("a ConnectionManager can be started only once")
        self._started = True
        self._stale = self._lock.acquire()  # AlreadyRunning if a live manager holds this id
        try:
            self._changed = anyio.Event()
            self._closed_event = anyio.Event()
            self._actor_done = anyio.Event()
            await self._reap_stale()
            self._tg = anyio.create_task_group()
            await self._tg.__aenter__()
        except BaseException:
            self._closed = True
            self._lock.release()
            raise
        self._tg.start_soon(self._actor)
        self._tg.start_soon(self._timer)
        self._write_status()
        self._feed(None, "start")
        return self

    async def __aexit__(self, *exc_info: Any) -> bool | None:
        assert self._tg is not None
        try:
            with anyio.CancelScope(shield=True):
                await self.shutdown()
        finally:
            self._tg.cancel_scope.cancel()
            exc = exc_info[1]
            if exc is None or isinstance(exc, anyio.get_cancelled_exc_class()):
                # A cancellation may be our own task group's: it must absorb it.
                suppress = await self._tg.__aexit__(*exc_info)
            else:
                # The block's own error propagates as it is, not wrapped in an ExceptionGroup.
                await self._tg.__aexit__(None, None, None)
                suppress = None
        return suppress

    # ------------------------------------------------------------------------------ core input

    def _feed(self, w: _Worker | None, event: str, *args: Any, from_retiring: bool = False) -> bool:
        """Give the core one input; queue its actions. False if the input was dropped.

        ``w`` is the worker the input came from (None: timer/manager): inputs from a worker that
        is not the current one, or that is being retired, are stale and dropped.
        """
        if w is not None and (w is not self._worker or (w.retiring and not from_retiring)):
            self._counts["stale_inputs_dropped"] += 1
            log.debug("dropped stale %s from worker generation %d", event, w.gen)
            return False
        if self._closed:
            return False
        now = time.monotonic_ns()
        if event != "tick" and not self._core.accepts(event, now):
            self._counts["inputs_ignored"] += 1
            log.debug("core ignores %s in %s", event, self._core.state)
            return False
        try:
            actions = getattr(self._core, event)(now, *args)
        except InvalidEvent as exc:
            self._counts["inputs_ignored"] += 1
            log.debug("%s", exc)
            return False
        self._publish_transitions()
        if actions:
            self._actions.extend(actions)
            if self._actions_wake is not None:
                self._actions_wake.set()
        if self._timer_wake is not None:
            self._timer_wake.set()
        return True

    def _publish_transitions(self) -> None:
        new = []
        for t in reversed(self._core.history):  # a bounded deque: find what we have not seen
            if t is self._last_seen:
                break
            new.append(t)
        if not new:
            return
        new.reverse()
        self._last_seen = new[-1]
        for t in new:
            at = _wall(t.at_ns)
            change = StateChange(at, t.source, t.event, t.dest, t.reason, t.at_ns)
            self._since_wall = at
            if t.event == "handshake_ok" and self._worker is not None:
                self._worker.session_ns = t.at_ns
            if t.dest == State.CONNECTED and self.settings.warm_spare and self._spare is None:
                assert self._tg is not None
                self._tg.start_soon(self._spawn_spare)
            log.info("%s --%s--> %s (%s)", t.source, t.event, t.dest, t.reason or "-")
            for sub in list(self._subs):
                sub._put(change)
        self._write_status()
        self._notify_changed()

    def _notify_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = anyio.Event()

    def _notice(self, kind: str, code: int | None, message: str) -> None:
        now = time.monotonic_ns()
        n = Notice(_wall(now), kind, code, message, now)
        self._counts[f"notices_{kind}"] += 1
        for sub in list(self._subs):
            sub._put(n)

    # ---------------------------------------------------------------------------------- tasks

    async def _timer(self) -> None:
        """Sleep until the core's next deadline, tick it; woken early by every input."""
        last_tick_deadline: int | None = None
        while True:
            wake = self._timer_wake = anyio.Event()
            deadline = self._core.next_deadline()
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                if deadline == last_tick_deadline:
                    # The core left a deadline in the past after a tick: do not spin on it.
                    await anyio.sleep(0.001)
                last_tick_deadline = deadline
                try:
                    self._feed(None, "tick")
                except Exception:
                    log.exception("core.tick failed")
                continue
            if deadline is None:
                await wake.wait()
            else:
                with anyio.move_on_after((deadline - now) / 1e9):
                    await wake.wait()

    async def _actor(self) -> None:
        """Perform the core's actions one at a time, in the order it emitted them."""
        assert self._actor_done is not None
        try:
            with anyio.CancelScope() as self._actor_scope:
                while True:
                    while not self._actions:
                        self._actions_wake = anyio.Event()
                        await self._actions_wake.wait()
                    action = self._actions.popleft()
                    try:
                        await self._perform(action)
                    except Exception:
                        log.exception("performing %r failed", action)
        finally:
            self._actor_done.set()

    async def _perform(self, action: Any) -> None:
        log.debug("perform %r", action)
        if isinstance(action, SpawnWorker):
            await self._spawn()
        elif isinstance(action, SendConnect):
            await self._send_connect(action)
        elif isinstance(action, SendProbe):
            await self._send_probe()
        elif isinstance(action, RetireWorker):
            w = self._worker
            if w is not None:
                await self._retire(w)
        elif isinstance(action, ReapZombies):
            if self._stale is None:
                log.info(
                    "326: no stale worker of ours is known for client id %d; if the Gateway "
                    "still holds the id, the backoff waits for its release",
                    action.client_id,
                )
            await self._reap_stale()
        elif isinstance(action, NotifyDataLost):
            self._notice("data_lost", 1101, "market data was lost: re-request subscriptions")
        else:
            log.error("unknown action %r", action)

    # ------------------------------------------------------------------------------- actions

    async def _spawn(self) -> None:
        """SpawnWorker: adopt the warm spare if one is ready, else start a fresh worker."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.ready_pid is not None and spare.proc.returncode is None:
            self._counts["spares_adopted"] += 1
            self._adopt(spare)
            self._feed(spare, "worker_ready", spare.ready_pid)
            return
        if spare is not None:  # not ready yet: it must not outlive its chance
            self._tg.start_soon(self._retire, spare)  # type: ignore[union-attr]
        w = await self._start_process()
        if w is None:
            self._counts["spawn_failures"] += 1
            self._feed(None, "worker_exited")
            return
        self._adopt(w)

    def _adopt(self, w: _Worker) -> None:
        self._worker = w
        self._counts["workers_spawned"] += 1
        self._record_lock(w)
        self._write_status()

    async def _spawn_spare(self) -> None:
        """Pre-start the next worker while a session is up, so a respawn skips the ~0.15-0.2 s of
        interpreter start and `import ib_async`. It holds no socket and no client id."""
        w = await self._start_process()
        if w is None:
            return
        if self._closing or self._spare is not None:
            await self._retire(w)
            return
        self._spare = w
        self._counts["spares_spawned"] += 1

    async def _start_process(self) -> _Worker | None:
        self._gen += 1
        try:
            # Shielded: a process that exists must be registered before anything can cancel us.
            with anyio.CancelScope(shield=True):
                proc = await anyio.open_process(self._argv, env=self._worker_env, start_new_session=True)
        except OSError as exc:
            log.error("cannot start the worker (%s): %s", " ".join(self._argv), exc)
            return None
        try:
            create_time: float | None = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            create_time = None
        w = _Worker(self._gen, proc, create_time)
        assert self._tg is not None
        self._tg.start_soon(self._read_stdout, w)
        self._tg.start_soon(self._drain_stderr, w)
        self._tg.start_soon(self._watch_exit, w)
        return w

    async def _send_connect(self, a: SendConnect) -> None:
        w = self._worker
        if w is None or w.retiring:
            return
        params = wp.ConnectParams(
            host=a.host,
            port=a.port,
            client_id=a.client_id,
            readonly=a.readonly,
            timeout=max(float(a.timeout), 0.001),
        )
        rid = self._new_id()
        w.pending[rid] = _Pending(partial(self._connect_done, w))
        if not await self._send(w, wp.connect(params, id=rid), timeout=params.timeout):
            w.pending.pop(rid, None)

    def _connect_done(self, w: _Worker, p: _Pending) -> None:
        resp = p.response
        if resp is None:  # the worker died: its exit is the input the core gets
            return
        if resp.ok:
            data = resp.data or {}
            self.last_handshake = data
            if data.get("client_id") not in (None, self.settings.client_id):
                log.error(
                    "worker connected as client id %s, not %s", data.get("client_id"), self.settings.client_id
                )
            if self._feed(w, "handshake_ok") and w.upstream_lost:
                self._feed(w, "connectivity_lost")
            return
        assert resp.error is not None
        reason = HANDSHAKE_REASONS.get(resp.error.code, Reason.peer_closed)
        log.warning("handshake failed: %s: %s", resp.error.code, resp.error.message)
        self._feed(w, "handshake_failed", reason)

    async def _send_probe(self) -> None:
        w = self._worker
        if w is None or w.retiring:
            return
        self._probe_seq += 1
        seq = self._probe_seq
        rid = self._new_id()
        w.pending[rid] = _Pending(partial(self._probe_done, w, seq))
        msg = wp.request("ping", id=rid, timeout=self.settings.probe_timeout)
        if not await self._send(w, msg, timeout=self.settings.probe_timeout):
            w.pending.pop(rid, None)  # unanswered: the core times the probe out

    def _probe_done(self, w: _Worker, seq: int, p: _Pending) -> None:
        if p.response is None or seq != self._probe_seq:
            return  # the worker died, or a newer probe has been sent since
        self._feed(w, "probe_ok" if p.response.ok else "probe_failed")

    async def _retire(self, w: _Worker, *, eof: bool = True) -> None:
        """End the worker by process exit: stdin EOF, wait, SIGTERM(+SIGCONT), wait, SIGKILL."""
        s = self.settings
        w.retiring = True
        if eof:
            if not w.stdin_closed:
                w.stdin_closed = True
                self._counts["retire_eof"] += 1
                with anyio.move_on_after(1):
                    try:
                        await w.proc.stdin.aclose()  # type: ignore[union-attr]
                    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
            if await self._wait_exit(w, s.retire_grace):
                return
            log.warning("worker %d still running %.1f s after stdin EOF: SIGTERM", w.pid, s.retire_grace)
        self._counts["retire_term"] += 1
        self._signal(w, signal.SIGTERM)
        self._signal(w, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        if await self._wait_exit(w, s.kill_grace):
            return
        log.warning("worker %d ignored SIGTERM for %.1f s: SIGKILL", w.pid, s.kill_grace)
        self._counts["retire_kill"] += 1
        self._signal(w, signal.SIGKILL)
        if not await self._wait_exit(w, 10):
            log.error("worker %d survived SIGKILL for 10 s", w.pid)

    @staticmethod
    def _signal(w: _Worker, sig: int) -> None:
        if w.proc.returncode is not None:
            return
        try:
            w.proc.send_signal(sig)  # our own unreaped child: the pid cannot have been reused
        except ProcessLookupError:
            pass

    @staticmethod
    async def _wait_exit(w: _Worker, timeout: float) -> bool:
        with anyio.move_on_after(timeout):
            await w.proc.wait()
            return True
        return False

    async def _reap_stale(self) -> None:
        """End the stale worker a dead manager's lock file named, if it is provably ours."""
        rec = self._stale
        s = self.settings
        if rec is None:
            return
        pid = await anyio.to_thread.run_sync(
            partial(
                reap_stale_worker,
                rec,
                host=s.host,
                port=s.port,
                client_id=s.client_id,
                term_grace=s.retire_grace,
                kill_grace=s.kill_grace,
                min_age=s.min_session,
            )
        )
        if pid is not None:
            self._stale = None
            self._counts["zombies_reaped"] += 1
            self._notice("zombie_reaped", None, f"ended stale worker pid {pid} of a dead manager")

    # --------------------------------------------------------------------------- worker I/O

    def _new_id(self) -> int:
        self._ids += 1
        return self._ids

    async def _send(self, w: _Worker, msg: wp.Request, timeout: float | None = None) -> bool:
        """Write one line to the worker; False if its stdin is gone or stays full for timeout
        (a stopped worker whose pipe filled up must not block the actor)."""
        if w.stdin_closed or w.proc.stdin is None:
            return False
        line = wp.encode(msg)
        try:
            if timeout is None:  # the caller's own scope bounds it: no second cancel scope
                async with w.send_lock:
                    await w.proc.stdin.send(line)
            else:
                with anyio.fail_after(timeout):
                    async with w.send_lock:
                        await w.proc.stdin.send(line)
            return True
        except (OSError, TimeoutError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False

    async def _read_stdout(self, w: _Worker) -> None:
        assert w.proc.stdout is not None
        stream = BufferedByteReceiveStream(w.proc.stdout)
        try:
            while True:
                try:
                    line = await stream.receive_until(b"\n", wp.MAX_LINE_BYTES + 4096)
                except (anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError):
                    break
                except anyio.DelimiterNotFound:
                    log.error("worker %d wrote an over-long line; its output can no longer be trusted", w.pid)
                    break
                try:
                    self._on_line(w, line)
                except Exception:
                    log.exception("handling worker line %r failed", line[:200])
        finally:
            w.stdout_done.set()
            w.fail_pending(f"worker pid {w.pid} closed its stdout (it died or is exiting)")

    def _on_line(self, w: _Worker, line: bytes) -> None:
        try:
            msg = wp.decode_incoming(line)
        except wp.ProtocolError as exc:
            log.warning("worker %d: unreadable line (%s): %r", w.pid, exc.message, line[:200])
            return
        if isinstance(msg, wp.Response):
            pending = w.pending.pop(msg.id, None) if msg.id is not None else None
            if pending is None:
                log.debug("worker %d: response to no pending request: %r", w.pid, msg)
            else:
                pending.resolve(response=msg)
            return
        self._on_event(w, msg)

    def _on_event(self, w: _Worker, ev: wp.Event) -> None:
        name, data = ev.event, ev.data
        if name == wp.EventName.READY:
            w.ready_pid = int(data.get("pid", w.pid))
            if w is not self._spare:
                self._feed(w, "worker_ready", w.ready_pid)
        elif name == wp.EventName.SESSION_LOST:
            if w is self._worker:
                w.session_lost = True
            self._feed(w, "session_lost")
        elif name == wp.EventName.IB_ERROR:
            self._on_ib_error(w, data)
        else:
            log.debug("worker %d: unknown event %r", w.pid, name)

    def _on_ib_error(self, w: _Worker, data: dict[str, Any]) -> None:
        try:
            code = int(data.get("code", 0))
        except (TypeError, ValueError):
            code = 0
        message = str(data.get("message", ""))
        if w is not self._worker or w.retiring:
            self._counts["stale_inputs_dropped"] += 1
            return
        if code in (1100, 1101, 1102) and self._core.state == State.HANDSHAKING:
            # The core takes connectivity news only with a session: keep it for handshake_ok.
            w.upstream_lost = code == 1100
        elif code == 1100:
            self._feed(w, "connectivity_lost")
        elif code in (1101, 1102):
            self._feed(w, "connectivity_restored", code == 1101)
        elif code == 326:
            self._counts["ib_326"] += 1
            self._notice("client_id_in_use", code, message)
        elif code in FARM_CODES:
            self._farms[code] = message
            self._notice("farm", code, message)
            self._write_status()
        else:
            log.info("worker %d: IB message %d: %s", w.pid, code, message)

    async def _drain_stderr(self, w: _Worker) -> None:
        assert w.proc.stderr is not None
        stream = BufferedByteReceiveStream(w.proc.stderr)
        while True:
            try:
                try:
                    line = await stream.receive_until(b"\n", 65536)
                except anyio.DelimiterNotFound:
                    line = await stream.receive(65536)  # an over-long line: log it in pieces
            except (
                anyio.IncompleteRead,
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
            ):
                line = bytes(stream.buffer)  # a last line without its newline
                if line:
                    worker_log.info("[%d] %s", w.pid, line.decode("utf-8", "replace").rstrip())
                return
            worker_log.info("[%d] %s", w.pid, line.decode("utf-8", "replace").rstrip())

    async def _watch_exit(self, w: _Worker) -> None:
        code = await w.proc.wait()
        with anyio.move_on_after(1):  # let the last lines (answers, events) be read first
            await w.stdout_done.wait()
        log.info("worker %d exited with %s", w.pid, code)
        try:
            self._worker_gone(w)
        except Exception:
            log.exception("reporting the exit of worker %d failed", w.pid)
        with anyio.move_on_after(1):
            await w.proc.aclose()

    def _worker_gone(self, w: _Worker) -> None:
        """The worker has exited: fail what was in flight, tell the core once."""
        if w.reported:
            return
        w.reported = True
        if w is self._spare:
            self._spare = None
            return
        w.fail_pending(f"worker pid {w.pid} exited")
        self._feed(w, "worker_exited", from_retiring=True)
        if self._worker is w:
            self._worker = None
            self._record_lock(None)
            self._write_status()

    async def _session_worker(self, command: str, wait: float | None) -> _Worker:
        if self._closing or not self._started:
            raise NotConnected(f"{command}: the manager is not running")
        if self._core.state != State.CONNECTED:
            if not wait:
                raise NotConnected(
                    f"{command}: not connected (state {self._core.state}, reason {self._core.reason or '-'})"
                )
            try:
                await self.wait_connected(wait)
            except TimeoutError:
                raise NotConnected(
                    f"{command}: not connected after waiting {wait:g} s "
                    f"(state {self._core.state}, reason {self._core.reason or '-'})"
                ) from None
        w = self._worker
        if w is None or w.retiring:
            raise NotConnected(f"{command}: no live worker")
        return w

    # ------------------------------------------------------------------------- files on disk

    def _record_lock(self, w: _Worker | None) -> None:
        try:
            self._lock.record(
                worker_pid=w.pid if w else None,
                worker_create_time=w.create_time if w else None,
            )
        except (OSError, RuntimeError) as exc:
            log.warning("cannot update the lock file %s: %s", self._lock.path, exc)

    def _write_status(self, *, stopped: bool = False) -> None:
        s = self.settings
        m = self.metrics()
        counters = {
            k: v
            for k, v in m.items()
            if isinstance(v, (int, float, str))
            and not isinstance(v, bool)
            and k not in ("state", "reason", "worker_pid", "client_id", "since_ns")
        }
        for st, ns in m.get("time_in_state_ns", {}).items():
            counters[f"time_in_{st}_s"] = round(ns / 1e9, 3)
        snap = {
            "state": str(self.state),
            "since": self._since_wall,
            "reason": str(self.reason) if self.reason else None,
            "host": s.host,
            "port": s.port,
            "client_id": s.client_id,
            "worker_pid": self.worker_pid,
            "manager_pid": os.getpid(),
            "counters": counters,
            "farms": {str(k): v for k, v in self._farms.items()},
            "stopped": stopped,
        }
        try:
            write_status(self._status_path, snap)
        except OSError as exc:
            log.warning("cannot write the status snapshot %s: %s", self._status_path, exc)


def _error_from(info: wp.ErrorInfo | None, command: str) -> IbgwError:
    if info is None:
        return GatewayError("internal_error", f"{command}: error response without details")
    code, message = info.code, info.message
    if code in _BAD_REQUEST_CODES:
        return BadRequest(message)
    if code == wp.Code.NOT_CONNECTED:
        return NotConnected(message)
    if code == wp.Code.REQUEST_TIMEOUT:
        return RequestTimeout(message)
    if code == wp.Code.DISCONNECT_FORBIDDEN:
        return DisconnectForbidden(message)
    if code == wp.Code.GATEWAY_ERROR and info.ib_code is not None:
        return GatewayError(info.ib_code, message)
    return GatewayError(code, message)
