"""The driver: feeds the sans-IO core (fsm.core) and performs the actions it returns.

Inputs (fsm.inputs) come from the worker's events and answers, its exit, maintenance-window
edges and the timer (one task sleeping until ``core.next_deadline()``, woken early by every
input); actions are performed in order by one task, dispatched exhaustively. Every input from a
worker is tagged with that worker: inputs from one that is being retired or has been replaced
are dropped, so a late line from an old process never moves the new session. A session ends
only by its worker process exiting (fsm.workers); nothing here disconnects.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any, assert_never

import anyio
import anyio.abc
import anyio.to_thread

from fsm import core as fc
from fsm import inputs as ci
from fsm.commands import HANDSHAKE_REASONS
from fsm.errors import InvalidEvent, NotConnected, SessionLost
from fsm.hosts import resolve
from fsm.ibcodes import NoticeKind, classify
from fsm.lockfile import LockRecord
from fsm.maintenance import in_window, next_change
from fsm.pids import process_id
from fsm.process import Pending, WorkerProcess
from fsm.reports import MANAGER_COUNTERS, Reports
from fsm.requests import Requests
from fsm.services import Session
from fsm.settings import Settings
from fsm.statefiles import StateFiles
from fsm.workers import Workers
from fsm.zombies import reap_stale_worker
from worker import protocol as wp

log = logging.getLogger("fsm.manager")

__all__ = ["Driver"]


class Driver:
    """The core, the workers it runs, and the files that record them."""

    def __init__(self, settings: Settings, argv: Sequence[str], subscriber_buffer: int) -> None:
        self.settings = s = settings
        self.core = fc.ConnectionCore(settings)
        me = process_id()
        self.counts: Counter[str] = Counter(dict.fromkeys(MANAGER_COUNTERS, 0))
        self.reports = Reports(settings, subscriber_buffer, self.counts, self.metrics, me)
        self.workers = Workers(settings, argv, me, self._on_worker_event, self._worker_gone, self.counts)
        self.addresses: tuple[str, ...] = ()  # resolved once, at open()
        self._files: StateFiles | None = None
        self._stale: LockRecord | None = None
        self._probe_seq = 0
        self.requests = Requests(s.request_timeout, self.counts)
        self._last_seen: fc.Transition | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._timer_wake: anyio.Event | None = None
        self._actions: deque[fc.Action] = deque()
        self._actions_wake: anyio.Event | None = None
        self._actor_scope: anyio.CancelScope | None = None
        self._actor_done = anyio.Event()
        self.closing = self._closed = False
        self.last_handshake: dict[str, Any] | None = None

    # ------------------------------------------------------------------------------------ life

    async def open(self) -> None:
        """Resolve the host (UnknownHost), check the state dir and take the lock (StateFiles),
        end a provable stale worker. On failure what was taken is released and the error raised."""
        s = self.settings
        try:
            self.addresses = await anyio.to_thread.run_sync(resolve, s.host, s.port)
            self._files = StateFiles(s, self.addresses)
            self._stale = self._files.open()
            self.reports.bind(self._files, self.addresses[0])
            await self._reap_stale()
        except BaseException:
            self.close()
            raise

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        """Start the timer, the actor and the maintenance-window watch in ``tg``, and the core."""
        self._tg = tg
        self.workers.bind(tg)
        tg.start_soon(self._actor)
        tg.start_soon(self._timer)
        self.reports.run(tg)
        self.reports.status()
        self._feed(None, ci.Maintenance(in_window(self.settings, datetime.now(UTC))))
        self._feed(None, ci.Start())
        tg.start_soon(self._watch_windows)

    async def stop(self) -> None:
        """Stop performing actions, shut the core down, retire the workers by process exit."""
        self.closing = True
        handshaking = self.core.state == fc.State.HANDSHAKING
        if self._actor_scope is not None:  # nothing may be spawned after this point
            self._actor_scope.cancel()
            with anyio.move_on_after(5):
                await self._actor_done.wait()
        self._actions.clear()
        self._feed(None, ci.Shutdown())
        self._actions.clear()  # only fc.RetireWorker can come out of shutdown; done right here
        spare, self.workers.spare = self.workers.spare, None
        if spare is not None:
            await self.workers.retire(spare)
        w = self.workers.current
        if w is not None:
            # A worker still in its handshake would finish it on stdin EOF and then exit at
            # once (a fast close): end it by signal before the handshake can complete.
            await self.workers.retire(w, eof=not handshaking)
            w.report_exit()

    def close(self) -> None:
        """Last words (fsm.reports), then the lock released."""
        self._closed = self.closing = True
        self.reports.close()
        if self._files is not None:
            self._files.close()

    def metrics(self) -> dict[str, Any]:
        """The core's counters and durations, the driver's own counts and the services' figures."""
        out = dict(self.core.metrics(time.monotonic_ns()))
        out.update(self.counts)
        out.update(self.reports.services.metrics())
        w = self.workers.current
        out.update(state=str(self.core.state), worker_pid=w.pid if w else None)
        return out

    def session_worker(self) -> WorkerProcess | None:
        """The worker of the session that is up, if a line sent now can reach it; None while
        the core is not CONNECTED, and also from a worker's death (its stdout ended, a write
        failed) until the core has handled its exit: no session in between."""
        w = self.workers.current
        if self.closing or self.core.state != fc.State.CONNECTED or w is None or not w.accepting:
            return None
        return w

    # ------------------------------------------------------------------------------ core input

    def _feed(self, w: WorkerProcess | None, inp: ci.Input, *, from_retiring: bool = False) -> bool:
        """Give the core one input from worker ``w`` (None: timer or manager); queue its actions.
        False if dropped: stale (not the current worker, or one being retired) or not valid now."""
        if w is not None and (w is not self.workers.current or (w.retiring and not from_retiring)):
            self.counts["stale_inputs_dropped"] += 1
            log.debug("dropped stale %s from worker generation %d", inp.event, w.gen)
            return False
        if self._closed:
            return False
        now = time.monotonic_ns()
        try:
            if not isinstance(inp, ci.Tick) and not self.core.accepts(inp.event, now):
                raise InvalidEvent(inp.event, self.core.state, "not accepted now")
            actions = ci.apply(self.core, inp, now)
        except InvalidEvent as exc:
            self.counts["inputs_ignored"] += 1
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
        new: list[fc.Transition] = []
        for t in reversed(self.core.history):  # a bounded deque: find what we have not seen
            if t is self._last_seen:
                break
            new.append(t)
        if not new:
            return
        self._last_seen = new[0]
        w = self.workers.current
        for t in reversed(new):
            fresh = t.event == ci.HandshakeOk.event
            session = None
            if t.dest == fc.State.CONNECTED and w is not None:
                if fresh:
                    w.session_ns = t.at_ns
                if self.settings.warm_spare and self.workers.spare is None and self._tg:
                    self._tg.start_soon(self.workers.add_spare, lambda: self.closing)
                handshake = dict(self.last_handshake or {})
                session = Session(w.gen, fresh, handshake, partial(self._session_request, w))
            self.reports.transition(t, session)
        self.reports.settled()

    # ---------------------------------------------------------------------------------- tasks

    async def _timer(self) -> None:
        """Sleep until the core's next deadline, tick it; woken early by every input."""
        last_tick_deadline: int | None = None
        while True:
            wake = self._timer_wake = anyio.Event()
            deadline = self.core.next_deadline()
            now = time.monotonic_ns()
            if deadline is not None and now >= deadline:
                if deadline == last_tick_deadline:  # left in the past after a tick: do not spin
                    await anyio.sleep(0.001)
                last_tick_deadline = deadline
                self._feed(None, ci.Tick())
                continue
            with anyio.move_on_after(None if deadline is None else (deadline - now) / 1e9):
                await wake.wait()

    async def _watch_windows(self) -> None:
        """Tell the core the window in force at each window edge (fsm.maintenance)."""
        while (edge := next_change(self.settings, datetime.now(UTC))) is not None:
            await anyio.sleep(max(0.0, (edge - datetime.now(UTC)).total_seconds()) + 0.001)
            self._feed(None, ci.Maintenance(in_window(self.settings, datetime.now(UTC))))

    async def _actor(self) -> None:
        """Perform the core's actions one at a time, in the order it emitted them."""
        try:
            with anyio.CancelScope() as self._actor_scope:
                while True:
                    while not self._actions:
                        self._actions_wake = anyio.Event()
                        await self._actions_wake.wait()
                    action = self._actions.popleft()
                    log.debug("perform %r", action)
                    try:
                        await self._perform(action)
                    except Exception:
                        log.exception("performing %r failed", action)
        finally:
            self._actor_done.set()

    async def _perform(self, action: fc.Action) -> None:
        match action:
            case fc.SpawnWorker():
                await self._spawn()
            case fc.SendConnect():
                await self._send_connect(action)
            case fc.SendProbe():
                await self._send_probe()
            case fc.RetireWorker():
                if self.workers.current is not None:
                    await self.workers.retire(self.workers.current)
            case fc.ReapZombies(client_id):
                if self._stale is None:
                    log.info("326: no stale worker of ours is known for client id %d; if the Gateway "
                             "still holds it, the backoff waits for its release", client_id)  # fmt: skip
                await self._reap_stale()
            case fc.NotifyDataLost():
                self.reports.notice(
                    NoticeKind.data_lost, 1101, "market data was lost: re-request subscriptions"
                )
                self.reports.services.data_lost()
            case _:
                assert_never(action)

    # ------------------------------------------------------------------------------- actions

    async def _spawn(self) -> None:
        """fc.SpawnWorker: adopt the warm spare if one is ready, else start a fresh worker."""
        w = self.workers.take_spare()
        adopted = w is not None
        if w is None and (w := await self.workers.start()) is None:
            self.counts["spawn_failures"] += 1
            self._feed(None, ci.WorkerExited())
            return
        self.workers.current = w
        self.counts["workers_spawned"] += 1
        if adopted and w.ready_pid is not None:  # the core first: its next action waits for nothing
            self._feed(w, ci.WorkerReady(w.ready_pid))
        self.reports.worker(w.ident)

    async def _send_connect(self, a: fc.SendConnect) -> None:
        w = self.workers.current
        if w is None or w.retiring:
            return
        # One address: connect to exactly what the lock is keyed on; several (localhost ->
        # 127.0.0.1, ::1): the name, so ib_async tries each of them in the resolver's order.
        host = self.addresses[0] if len(self.addresses) == 1 else a.host
        timeout = max(a.timeout, 0.001)
        params = wp.ConnectParams(
            host=host, port=a.port, client_id=a.client_id, readonly=a.readonly, timeout=timeout
        )
        rid = self.requests.new_id()
        w.pending[rid] = Pending(partial(self._connect_done, w))
        if not await w.send(wp.encode(wp.connect(params, id=rid)), timeout=timeout):
            w.pending.pop(rid, None)

    def _connect_done(self, w: WorkerProcess, p: Pending) -> None:
        resp = p.response
        if resp is None:  # the worker died: its exit is the input the core gets
            return
        if resp.ok:
            self.last_handshake = data = resp.data or {}
            if data.get("client_id") not in (None, self.settings.client_id):
                log.error(
                    "worker connected as client id %s, not %s", data.get("client_id"), self.settings.client_id
                )
            if self._feed(w, ci.HandshakeOk()) and w.upstream_lost:
                self._feed(w, ci.ConnectivityLost())
            return
        assert resp.error is not None
        code = resp.error.code
        self.reports.last_error = error = f"{code}: {resp.error.message}"
        log.warning("handshake failed: %s", error)
        self.reports.notice(NoticeKind.handshake_failed, None, error)
        self._feed(w, ci.HandshakeFailed(HANDSHAKE_REASONS.get(code, fc.Reason.peer_closed)))

    async def _send_probe(self) -> None:
        """A `probe`: answered at once if the Gateway sent anything within the probe interval,
        else by a round trip that bypasses user traffic (worker.liveness); never queued behind
        user requests, so busy callers cannot make a healthy session look dead."""
        w = self.workers.current
        if w is None or w.retiring:
            return
        self._probe_seq += 1
        rid = self.requests.new_id()
        w.pending[rid] = Pending(partial(self._probe_done, w, self._probe_seq))
        s = self.settings
        msg = wp.request("probe", id=rid, window=s.probe_interval, timeout=s.probe_timeout)
        if not await w.send(wp.encode(msg), timeout=s.probe_timeout):
            w.pending.pop(rid, None)  # unanswered: the core times the probe out

    def _probe_done(self, w: WorkerProcess, seq: int, p: Pending) -> None:
        if p.response is None or seq != self._probe_seq:
            return  # the worker died, or a newer probe has been sent since
        self._feed(w, ci.ProbeOk() if p.response.ok else ci.ProbeFailed())

    async def _reap_stale(self) -> None:
        """End the stale worker a dead manager's lock file named, if it is provably ours."""
        s, addresses = self.settings, self.addresses
        end = reap_stale_worker(self._stale, addresses=addresses, port=s.port, client_id=s.client_id,
                                term_grace=s.kill_grace, min_age=s.min_session)  # fmt: skip
        if (pid := await end) is not None:
            self._stale = None
            self.counts["zombies_reaped"] += 1
            self.reports.notice(
                NoticeKind.zombie_reaped, None, f"ended stale worker pid {pid} of a dead manager"
            )

    # ----------------------------------------------------------------------- worker reports

    def _on_worker_event(self, w: WorkerProcess, ev: wp.Event) -> None:
        if ev.event == wp.EventName.READY:
            pid = ev.data.get("pid")
            w.ready_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else w.pid
            if w is not self.workers.spare:
                self._feed(w, ci.WorkerReady(w.ready_pid))
        elif ev.event == wp.EventName.SESSION_LOST:
            if w is self.workers.current:
                w.session_lost = True
            self._feed(w, ci.SessionLost())
        elif ev.event == wp.EventName.IB_ERROR:
            self._on_ib_error(w, ev.data)
        elif self.reports.services.routes(ev.event):
            self.reports.services.event(w.gen, ev)
        else:
            log.debug("worker %d: unknown event %r", w.pid, ev.event)

    async def _session_request(
        self, w: WorkerProcess, command: str, *, timeout: float | None = None, **params: Any
    ) -> dict[str, Any]:
        """Session.request: to worker ``w`` only while its session is the one that is up."""
        p = self.requests.prepare(command, timeout, params)
        if w is not self.workers.current or not w.accepting or w.session_lost:
            raise SessionLost(f"{command}: that session has ended")
        if self.closing or self.core.state != fc.State.CONNECTED:
            raise NotConnected(f"{command}: the session is down ({self.core.state}, {self.core.reason})")
        return await self.requests.exchange(w, p)

    def _on_ib_error(self, w: WorkerProcess, data: dict[str, Any]) -> None:
        code, message = data.get("code"), str(data.get("message", ""))
        if w is not self.workers.current or w.retiring:
            self.counts["stale_inputs_dropped"] += 1
            return
        if not isinstance(code, int) or isinstance(code, bool):
            log.warning("worker %d: IB message without a code: %r", w.pid, data)
            return
        c = classify(code, handshaking=self.core.state == fc.State.HANDSHAKING)
        if c.upstream_lost is not None:  # the core takes connectivity news only with a session
            w.upstream_lost = c.upstream_lost
        if c.input is not None:
            self._feed(w, c.input)
        if c.notice is not None:
            self.reports.notice(c.notice, code, message)
            self.reports.status()
        elif c.input is None and c.upstream_lost is None:
            log.info("worker %d: IB message %d: %s", w.pid, code, message)

    def _worker_gone(self, w: WorkerProcess) -> None:
        """The worker has exited: fail what was in flight, tell the core once."""
        if w is self.workers.spare:
            self.workers.spare = None
            return
        w.fail_pending(f"worker pid {w.pid} exited")
        self._feed(w, ci.WorkerExited(), from_retiring=True)
        if self.workers.current is w:
            self.workers.current = None
            self.reports.worker(None)
