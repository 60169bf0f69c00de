"""The manager's worker processes: the current one and the warm spare.

Starting them (each one a new generation, so a late line from an old one is told apart), the
spare pre-started while a session is up (settings.warm_spare: a respawn then skips the
interpreter start and ``import ib_async``; it holds no socket and no client id), handing the
spare over, and retiring them by process exit (fsm.process.retire, never a disconnect). What a
worker says is the driver's business: its on_event and on_exit callbacks.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence

import anyio.abc

from fsm.pids import MANAGER_ENV, ProcessId
from fsm.process import RetireStep, WorkerProcess, retire
from fsm.settings import Settings
from worker import protocol as wp

log = logging.getLogger("fsm.manager")

__all__ = ["Workers"]


class Workers:
    """The current worker and the warm spare of one manager."""

    def __init__(
        self,
        settings: Settings,
        argv: Sequence[str],
        manager: ProcessId | None,
        on_event: Callable[[WorkerProcess, wp.Event], None],
        on_exit: Callable[[WorkerProcess], None],
        counts: Counter[str],
    ) -> None:
        self.settings = settings
        # The worker's no-fast-close linger at stdin EOF follows our min_session; MANAGER_ENV is
        # how a later manager proves a stale worker was ours (fsm.pids.born_of).
        self._argv = list(argv)
        self._env = {**os.environ, "IBGW_WORKER_MIN_SESSION": repr(settings.min_session)}
        if manager is not None:
            self._env[MANAGER_ENV] = manager.marker()
        self._on_event, self._on_exit = on_event, on_exit
        self._counts = counts
        self.current: WorkerProcess | None = None
        self.spare: WorkerProcess | None = None
        self._gen = 0
        self._tg: anyio.abc.TaskGroup | None = None

    def bind(self, tg: anyio.abc.TaskGroup) -> None:
        """The task group the workers' pumps (and background retirements) run in."""
        self._tg = tg

    async def start(self) -> WorkerProcess | None:
        """A fresh worker process (the next generation); None if it cannot be started."""
        assert self._tg is not None, "bind() first"
        self._gen += 1
        return await WorkerProcess.spawn(
            self._tg, self._argv, self._env, self._gen, self._on_event, self._on_exit
        )

    def take_spare(self) -> WorkerProcess | None:
        """The spare if it is ready to be adopted; one that is not ready yet is retired (it
        must not outlive its chance)."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.ready_pid is not None and spare.running:
            self._counts["spares_adopted"] += 1
            return spare
        if spare is not None and self._tg is not None:
            self._tg.start_soon(self.retire, spare)
        return None

    async def add_spare(self, closing: Callable[[], bool]) -> None:
        """Pre-start a spare unless there is one (or the manager is closing by then)."""
        w = await self.start()
        if w is None:
            return
        if closing() or self.spare is not None:
            await self.retire(w)
            return
        self.spare = w
        self._counts["spares_spawned"] += 1

    async def retire(self, w: WorkerProcess, *, eof: bool = True) -> None:
        """End ``w`` by process exit: stdin EOF (if ``eof``), SIGTERM, SIGKILL."""
        w.retiring = True
        s = self.settings
        await retire(w, eof=eof, eof_grace=s.retire_grace, term_grace=s.kill_grace, on_step=self._count_step)

    def _count_step(self, step: RetireStep) -> None:
        self._counts[f"retire_{step}"] += 1
