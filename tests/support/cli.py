"""The `ibgw` command as a user runs it, for the CLI tests: real subprocesses with argument lists,
a private state directory, output read on threads so a test waits for a line with a deadline."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

CLIENT_ID = 31


class Lines:
    """A pipe's lines, read on a thread, so the test can wait for one with a deadline."""

    def __init__(self, pipe: IO[str]) -> None:
        self.seen: list[str] = []
        self._q: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe: IO[str]) -> None:
        for line in iter(pipe.readline, ""):
            self._q.put(line)
        self._q.put(None)

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no matching line within {timeout} s; saw:\n" + "".join(self.seen)
                ) from None
            if line is None:
                raise AssertionError("the process closed its output; saw:\n" + "".join(self.seen))
            self.seen.append(line)
            if pred(line):
                return line

    def rest(self, timeout: float = 10) -> str:
        """Everything until EOF (call after the process exited)."""
        deadline = time.monotonic() + timeout
        while True:
            line = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            if line is None:
                return "".join(self.seen)
            self.seen.append(line)


def cli_env(state_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without IBKR_*/IBGW_* values, with the state directory given and no
    maintenance windows (a test must not answer differently at IB's reset hour), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "IBGW_"))}
    env.update({"IBGW_STATE_DIR": str(state_dir), "IBGW_MAINTENANCE": "off", **(extra or {})})
    return env


def ibgw(*args: str, state_dir: Path, terminal: bool = False) -> subprocess.CompletedProcess[str]:
    """One `ibgw` command to its end; `terminal`: rich renders as on a terminal (tables, colours)."""
    env = cli_env(state_dir)
    env.pop("FORCE_COLOR", None)
    if terminal:
        env["FORCE_COLOR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "fsm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


class Run:
    """`ibgw run` against a Gateway on loopback `port`, as a child process (`extra`: more flags,
    `env`: more environment)."""

    def __init__(
        self,
        port: int,
        state_dir: Path,
        *extra: str,
        client_id: int = CLIENT_ID,
        env: Mapping[str, str] | None = None,
    ) -> None:
        argv = [sys.executable, "-m", "fsm.cli", "run", "--port", str(port), "--client-id", str(client_id)]
        self.proc = subprocess.Popen(
            [*argv, *extra],
            env=cli_env(state_dir, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.out = Lines(self.proc.stdout)
        self.err = Lines(self.proc.stderr)

    def health_port(self) -> int:
        """The port `--serve` bound, from the line `ibgw run` prints once it listens."""
        line = self.out.wait_for(lambda line: "health and metrics on http://" in line, timeout=30)
        return int(line.split("health and metrics on http://", 1)[1].split()[0].rsplit(":", 1)[1])

    def wait_connected(self) -> None:
        self.out.wait_for(lambda line: "--> CONNECTED" in line, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
