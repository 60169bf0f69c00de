"""The demo's own child processes: the trader's second run (`ibgw run`) and the worker it leaves.

Step 5 starts the trader again as a separate process, lets it connect, then kills it hard with
its worker frozen. Whatever happens to the script, `end_all` makes sure no process of the demo
outlives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import anyio
import anyio.abc
import psutil
from anyio.streams.buffered import BufferedByteReceiveStream

from fsm import Settings
from fsm.pids import ProcessId, is_our_worker, pid_alive


class TraderProcess:
    """`ibgw run` for the demo's Gateway and client id, as a child process."""

    def __init__(self, proc: anyio.abc.Process) -> None:
        self.proc = proc
        self.connected = anyio.Event()  # its manager printed a transition to CONNECTED

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    async def start(cls, settings: Settings) -> TraderProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IBKR_", "IBGW_"))}
        argv = [
            sys.executable,
            "-m",
            "fsm.cli",
            "run",
            "--host",
            settings.host,
            "--port",
            str(settings.port),
            "--client-id",
            str(settings.client_id),
            "--state-dir",
            str(settings.state_dir),
        ]
        proc = await anyio.open_process(argv, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return cls(proc)

    async def relay(self, say: Callable[[str], None]) -> None:
        """Pass each line it prints to `say` (without its own time stamp) until its stdout ends."""
        assert self.proc.stdout is not None
        stream = BufferedByteReceiveStream(self.proc.stdout)
        while True:
            try:
                raw = await stream.receive_until(b"\n", 1 << 16)
            except (
                anyio.IncompleteRead,
                anyio.EndOfStream,
                anyio.ClosedResourceError,
                anyio.BrokenResourceError,
                anyio.DelimiterNotFound,
            ):
                return
            line = raw.decode("utf-8", "replace")
            say(line.split(" ", 1)[1] if " " in line else line)
            if "--> CONNECTED" in line:
                self.connected.set()

    async def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.proc.kill()
        await self.proc.wait()


async def end_all(trader: TraderProcess | None, stale_worker: ProcessId | None) -> None:
    """On any exit path: the trader process and the worker it left behind are ended (the worker
    only while it is still that process, and ours)."""
    if trader is not None and trader.proc.returncode is None:
        trader.proc.kill()
        with anyio.move_on_after(5):
            await trader.proc.wait()
    if stale_worker is not None and pid_alive(stale_worker.pid, stale_worker.create_time):
        try:
            proc = psutil.Process(stale_worker.pid)
            if is_our_worker(proc):
                proc.kill()
        except psutil.Error:
            pass
