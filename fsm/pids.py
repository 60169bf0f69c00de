"""What a pid is, told once: alive (pid *and* start time), and one of our workers.

A pid alone proves nothing: pids are reused, so a pid is "the same process" only together with
its start time. A process is one of our workers only if it runs as this user, runs
``-m worker`` and carries our ``--label ibgw-fsm:...`` (shown by ps); and it was born of a given
manager only if its environment carries that manager's pid and start time (MANAGER_ENV, set by
the manager at spawn). Nothing here looks a process up by name.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import psutil

__all__ = [
    "LABEL_PREFIX",
    "MANAGER_ENV",
    "ProcessId",
    "born_of",
    "is_our_worker",
    "label_of",
    "pid_alive",
    "process_id",
    "worker_label",
]

LABEL_PREFIX = "ibgw-fsm:"
MANAGER_ENV = "IBGW_MANAGER"
"""Set in every worker's environment: ``<manager pid>:<manager start time>``."""

START_TIME_SLACK = 0.05
"""psutil derives start times from clock ticks: equal within this many seconds means equal."""

PID_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class ProcessId:
    """One process, told apart from any later one that reuses its pid."""

    pid: int
    create_time: float

    def marker(self) -> str:
        """The MANAGER_ENV value naming this process."""
        return f"{self.pid}:{self.create_time!r}"

    @classmethod
    def from_marker(cls, text: str) -> ProcessId | None:
        pid, _, created = text.partition(":")
        try:
            out = cls(int(pid), float(created))
        except ValueError:
            return None
        return out if 0 < out.pid <= PID_MAX else None


def process_id(pid: int | None = None) -> ProcessId | None:
    """The ProcessId of a live process (this one by default); None if it is gone."""
    try:
        proc = psutil.Process(pid)
        return ProcessId(proc.pid, proc.create_time())
    except (psutil.Error, OverflowError, ValueError):
        return None


def pid_alive(pid: object, create_time: float | None) -> bool:
    """Is the process ``pid`` that started at ``create_time`` still running (not a zombie)?

    Without a start time nothing can be proven and the answer is False: a reused pid must never
    make a dead manager look alive. Accepts any value for ``pid`` (it may come from a file)."""
    if type(pid) is not int or not 0 < pid <= PID_MAX or create_time is None:
        return False
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > START_TIME_SLACK:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def worker_label(host: str, port: int, client_id: int) -> str:
    """The ``--label`` that marks a worker as ours for this Gateway and client id."""
    return f"{LABEL_PREFIX}{host}:{port}:{client_id}"


def label_of(cmdline: Sequence[str]) -> str | None:
    """The ``ibgw-fsm:`` label of a ``-m worker`` command line; None if the line is not that.

    A process that merely mentions a label (a shell, grep) does not run the worker module."""
    if not any(a == "-m" and b == "worker" for a, b in itertools.pairwise(cmdline)):
        return None
    for i, arg in enumerate(cmdline):
        if arg == "--label" and i + 1 < len(cmdline):
            value = cmdline[i + 1]
        elif arg.startswith("--label="):
            value = arg.removeprefix("--label=")
        else:
            continue
        if value.startswith(LABEL_PREFIX):
            return value
    return None


def is_our_worker(proc: psutil.Process, label: str | None = None) -> bool:
    """Does ``proc`` run as this user a ``-m worker`` with our label (exactly ``label`` if given)?"""
    try:
        if proc.uids().real != os.getuid():
            return False
        found = label_of(proc.cmdline())
    except psutil.Error:
        return False
    return found is not None and (label is None or found == label)


def born_of(proc: psutil.Process, manager: ProcessId) -> bool:
    """Was ``proc`` spawned by ``manager``: its environment names it, it started after it, and
    its parent is that manager or (the manager being gone) the process it was reparented to."""
    try:
        marker = ProcessId.from_marker(proc.environ().get(MANAGER_ENV, ""))
        if marker is None or marker.pid != manager.pid:
            return False
        if abs(marker.create_time - manager.create_time) > START_TIME_SLACK:
            return False
        if proc.create_time() + START_TIME_SLACK < manager.create_time:
            return False
        parent = proc.ppid()
    except psutil.Error:
        return False
    return parent == manager.pid or not pid_alive(manager.pid, manager.create_time)
