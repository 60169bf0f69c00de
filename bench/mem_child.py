"""A trader-like process for the memory and scale figures; the parent reads its RSS via psutil.

Run as a module from the checkout's root (so the fsm it imports is the checkout's, like the
bench's own): `python -m bench.mem_child idle` is the baseline: an anyio process with a running
loop and nothing else.
`python -m bench.mem_child managers N PORT CLIENT_ID STATE_DIR [BACKEND [MIN_SESSION]]` starts N
ConnectionManagers at once (client ids CLIENT_ID..CLIENT_ID+N-1), waits until all are
CONNECTED, sends each a few `status` requests, and prints one JSON line with per-manager connect
times and worker pids. Both then idle until stdin closes; the managers are then shut down (their
workers end by process exit).
"""

from __future__ import annotations

import json
import os
import sys
import time

import anyio


def _say(msg: dict) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


async def _wait_stdin_eof() -> None:
    os.set_blocking(0, False)
    while True:
        await anyio.wait_readable(0)
        try:
            if not os.read(0, 4096):
                return
        except BlockingIOError:
            continue


async def idle() -> None:
    _say({"event": "ready", "pid": os.getpid()})
    await _wait_stdin_eof()


async def managers(n: int, port: int, client_id: int, state_dir: str, min_session: float = 5.0) -> None:
    from contextlib import AsyncExitStack
    from pathlib import Path

    from fsm.manager import ConnectionManager
    from fsm.settings import Settings

    t0 = time.monotonic_ns()
    connected_ns: list[int] = [0] * n
    async with AsyncExitStack() as stack:
        mgrs = []
        for i in range(n):
            s = Settings(
                host="127.0.0.1",
                port=port,
                client_id=client_id + i,
                state_dir=Path(state_dir),
                min_session=min_session,
            )
            mgrs.append(ConnectionManager(s))

        async def start(i: int) -> None:
            await mgrs[i].wait_connected(timeout=120)
            connected_ns[i] = time.monotonic_ns()

        for m in mgrs:
            await stack.enter_async_context(m)
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(start, i)
        t_all = time.monotonic_ns()
        for m in mgrs:
            for _ in range(5):
                await m.request("status", timeout=30)
        _say(
            {
                "event": "ready",
                "pid": os.getpid(),
                "connect_ms": [(c - t0) / 1e6 for c in connected_ns],
                "all_ms": (t_all - t0) / 1e6,
                "worker_pids": [m.worker_pid for m in mgrs],
            }
        )
        await _wait_stdin_eof()


def main() -> None:
    mode = sys.argv[1]
    if mode == "idle":
        anyio.run(idle, backend=sys.argv[2] if len(sys.argv) > 2 else "asyncio")
    elif mode == "managers":
        n, port, cid, state_dir = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        backend = sys.argv[6] if len(sys.argv) > 6 else "asyncio"
        min_session = float(sys.argv[7]) if len(sys.argv) > 7 else 5.0
        anyio.run(managers, n, port, cid, state_dir, min_session, backend=backend)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
