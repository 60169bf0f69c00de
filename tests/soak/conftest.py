"""Fixtures of the soak test: its seed and length, its figures (printed at the module's end), and
the ledger of every worker process it saw (so that none can outlive the test unnoticed)."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest

SEED_ENV = "IBGW_SOAK_SEED"  # replay a run: the seed its figures printed
SECONDS_ENV = "IBGW_SOAK_SECONDS"  # fault phase per backend; both backends run by default
DEFAULT_SECONDS = 20.0


@pytest.fixture(scope="module")
def soak_seed() -> int:
    """One seed per run (from IBGW_SOAK_SEED, else fresh); each backend derives its own stream."""
    raw = os.environ.get(SEED_ENV)
    return int(raw) if raw else random.SystemRandom().randrange(1 << 32)


@pytest.fixture(scope="module")
def soak_seconds() -> float:
    raw = os.environ.get(SECONDS_ENV)
    return float(raw) if raw else DEFAULT_SECONDS


@pytest.fixture(scope="module")
def soak_report(request: pytest.FixtureRequest) -> Iterator[list[list[str]]]:
    """Each test appends its figures (a list of lines); they are printed when the module ends,
    through the terminal reporter, so a plain `pytest -q` shows them."""
    reports: list[list[str]] = []
    yield reports
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capture is None or not reports:
        return
    with capture.global_and_fixture_disabled():
        tr.write_line("")
        for lines in reports:
            for line in lines:
                tr.write_line(line)


@dataclass
class WorkerLedger:
    """Every worker process seen during a test: pid, start time and command line, recorded the
    first time it is seen (a process already gone by then is recorded as gone)."""

    seen: dict[int, tuple[float | None, tuple[str, ...]]] = field(default_factory=dict)

    def see(self, pid: int | None) -> None:
        if pid is None or pid in self.seen:
            return
        try:
            p = psutil.Process(pid)
            created = p.create_time()  # a zombie has one too: it counts until it is reaped
        except psutil.Error:
            self.seen[pid] = (None, ())
            return
        try:
            cmd = tuple(p.cmdline())
        except psutil.Error:
            cmd = ()
        self.seen[pid] = (created, cmd)

    def labels(self) -> set[str]:
        """The --label of every worker seen alive (it names host, port and client id)."""
        out = set()
        for _, cmd in self.seen.values():
            if "--label" in cmd:
                out.add(cmd[cmd.index("--label") + 1])
        return out

    def survivors(self) -> list[psutil.Process]:
        """Seen workers that still exist, zombies included (exited but never reaped)."""
        out = []
        for pid, (created, _) in self.seen.items():
            if created is None:
                continue
            try:
                p = psutil.Process(pid)
                if p.create_time() == created:
                    out.append(p)
            except psutil.NoSuchProcess:
                pass
        return out


@pytest.fixture
def worker_ledger() -> WorkerLedger:
    return WorkerLedger()


def open_fds() -> int:
    """Open file descriptors of this process (the listing's own fd is counted every time)."""
    return len(os.listdir("/proc/self/fd"))
