"""What the outside learns from the driver, in one place: each core transition and notice goes to
the subscribers (fsm.changes), wakes the waiters (``changed``), reaches the services' session
hooks (fsm.services), and is written to the status snapshot (fsm.status, by fsm.statefiles'
writer thread, latest wins). The driver decides; this only tells."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from fsm.changes import Broadcast, Notice, StateChange, wall_time
from fsm.core import State, Transition
from fsm.ibcodes import NoticeKind
from fsm.pids import ProcessId
from fsm.services import Services, Session
from fsm.settings import Settings
from fsm.statefiles import StateFiles
from fsm.status import snapshot

log = logging.getLogger("fsm.manager")

__all__ = ["MANAGER_COUNTERS", "Reports"]

#: The manager's own counters in metrics() (next to the core's); all start at 0.
MANAGER_COUNTERS = (
    *("workers_spawned", "spawn_failures", "spares_spawned", "spares_adopted"),
    *("retire_eof", "retire_term", "retire_kill", "zombies_reaped"),
    *("requests_ok", "requests_failed", "requests_timed_out", "stale_inputs_dropped", "inputs_ignored"),
    *(f"notices_{kind}" for kind in NoticeKind),
)


class Reports:
    """Subscribers, waiters, services and the status snapshot of one manager."""

    def __init__(
        self,
        settings: Settings,
        subscriber_buffer: int,
        counts: Counter[str],
        metrics: Callable[[], dict[str, Any]],
        manager: ProcessId | None,
    ) -> None:
        self.settings = settings
        self.changes = Broadcast(subscriber_buffer)
        self.changed = anyio.Event()  # set and replaced on every transition
        self.services = Services()
        self.farms: dict[int, str] = {}  # latest message per farm code
        self.last_error: str | None = None  # why the last connect failed
        self._counts, self._metrics, self._me = counts, metrics, manager
        self._since_wall = time.time()
        self._expected = False
        self._files: StateFiles | None = None
        self._address = ""
        self._status_due: anyio.Event | None = None  # set: a snapshot is to be built (run())

    def bind(self, files: StateFiles, address: str) -> None:
        """The state files to write the snapshot into, once the lock is held."""
        self._files, self._address = files, address

    def run(self, tg: anyio.abc.TaskGroup) -> None:
        """From now on status() only marks the snapshot due; one task builds it after the burst
        that asked (a respawn asks ~4 times in a millisecond), so building it never delays
        the action the core chose (the spare's adoption, the connect line)."""
        self._status_due = anyio.Event()
        tg.start_soon(self._build_snapshots)

    async def _build_snapshots(self) -> None:
        while (due := self._status_due) is not None:
            await due.wait()
            if self._status_due is due:  # not closed meanwhile (close() wrote the last one)
                self._status_due = anyio.Event()
                self._write_status()

    def transition(self, t: Transition, session: Session | None) -> None:
        """One transition: to the log and subscribers, and to the services when it leaves
        CONNECTED or enters it (``session``: the one that is up)."""
        self._since_wall = at = wall_time(t.at_ns)
        self._expected = t.expected
        log.info("%s --%s--> %s (%s)", t.source, t.event, t.dest, t.reason or "-")
        self.changes.publish(
            StateChange(
                at, t.source, t.event, t.dest, t.reason, t.at_ns, window=t.window, expected=t.expected
            )
        )
        if t.source == State.CONNECTED:
            self.services.session_down(t.reason)
        elif session is not None:
            self.services.session_up(session)

    def settled(self) -> None:
        """After a batch of transitions: the snapshot rewritten, waiters woken."""
        self.status()
        self.notify_changed()

    def notice(self, kind: NoticeKind, code: int | None, message: str) -> None:
        now = time.monotonic_ns()
        self._counts[f"notices_{kind}"] += 1
        if kind == NoticeKind.farm and code is not None:
            self.farms[code] = message
        self.changes.publish(Notice(wall_time(now), kind, code, message, now))

    def worker(self, ident: ProcessId | None) -> None:
        """The current worker changed (None: there is none): the lock file names it."""
        if self._files is not None:
            self._files.record_worker(ident)
        self.status()

    def notify_changed(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def status(self) -> None:
        """The snapshot is to be rewritten: built once the burst of changes is over (see run())
        and handed to the writer thread (it never waits for the disk)."""
        if self._status_due is not None:
            self._status_due.set()
        else:
            self._write_status()

    def _write_status(self, *, stopped: bool = False) -> None:
        if self._files is None:
            return
        self._files.write_status(
            snapshot(
                self.settings,
                metrics=self._metrics(),
                since=self._since_wall,
                address=self._address,
                manager=self._me,
                farms=self.farms,
                last_error=self.last_error,
                stopped=stopped,
                expected=self._expected,
            )
        )

    def close(self) -> None:
        """Last words: subscribers ended, waiters woken, the snapshot marked stopped, the
        services closed."""
        self.changes.close()
        self.notify_changed()
        self._status_due = None
        self._write_status(stopped=True)
        self.services.close()
