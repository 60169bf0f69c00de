"""Baselines: the bare echo child, fresh-process and in-process ib_async, an idle anyio process."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

from .lineclient import LineClient, rss_bytes
from .stats import ms_since

HERE = Path(__file__).resolve().parent
PY = sys.executable


def echo_child(backend: str = "asyncio") -> LineClient:
    """The bare anyio JSON-lines echo child (`async with echo_child() as c: await c.call(...)`)."""
    return LineClient([PY, "-u", str(HERE / "echo_child.py"), backend])


def ib_child() -> LineClient:
    """The in-process ib_async baseline driver (timings taken inside the child; a stream's
    stamps come back in one line, megabytes at high tick rates)."""
    return LineClient([PY, "-u", str(HERE / "ib_child.py")], max_line=256 << 20)


async def ib_call(ib: LineClient, command: str, **params: Any) -> float:
    """One ib_child command; its `elapsed_ms` (timed inside the child). Raises if it failed."""
    reply = await ib.call({"command": command, "params": params}, timeout=60)
    if reply.get("status") != "success":
        raise RuntimeError(f"in-process ib_async baseline: {command} failed: {reply}")
    return float(reply["data"]["elapsed_ms"])


async def rtt_batch(call: Callable[[], Awaitable[Any]], n: int) -> list[float]:
    """n back-to-back round trips of `call`, each in ms."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        await call()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


async def throughput(call: Callable[[], Awaitable[Any]], callers: int, per_caller: int) -> float:
    """Requests per second with `callers` concurrent tasks each doing `per_caller` calls."""

    async def one() -> None:
        for _ in range(per_caller):
            await call()

    t0 = time.perf_counter_ns()
    async with anyio.create_task_group() as tg:
        for _ in range(callers):
            tg.start_soon(one)
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    return callers * per_caller / elapsed


async def child_event(
    argv: Sequence[str],
    event: str,
    *,
    timeout: float = 30.0,
    settle: float = 0.0,
    stderr_to_null: bool = True,
) -> dict[str, Any]:
    """Spawn `argv`, wait for its `event` line, wait `settle` s, then read RSS while it lives.

    Returns the event plus `elapsed_ms` (spawn -> event seen), `rss` (the child's) and
    `worker_rss` (of the pids it lists in `worker_pids`, if any). The child ends at stdin EOF.
    """
    client = LineClient(argv, stderr_to_null=stderr_to_null)
    t0 = time.monotonic_ns()
    async with client:
        ev = dict(await client.wait_event(event, timeout=timeout))
        ev["elapsed_ms"] = ms_since(t0)
        if settle:
            await anyio.sleep(settle)
        ev["rss"] = rss_bytes(client.pid)
        ev["worker_rss"] = [rss_bytes(p) for p in ev.get("worker_pids", []) if p]
    return ev


async def fresh_connect(host: str, port: int, client_id: int, *, keep: float = 0.0) -> dict[str, float]:
    """`python bench/ib_fresh.py`: spawn -> connected, and its RSS while connected.

    Returns {total_ms, import_ms, connect_ms, rss}.
    """
    ev = await child_event(
        [PY, "-u", str(HERE / "ib_fresh.py"), host, str(port), str(client_id)],
        "connected",
        timeout=60,
        settle=keep,
    )
    return {
        "total_ms": ev["elapsed_ms"],
        "import_ms": float(ev["import_ms"]),
        "connect_ms": float(ev["connect_ms"]),
        "rss": float(ev["rss"]),
    }


async def idle_anyio_rss(settle: float = 0.2, backend: str = "asyncio") -> int:
    """RSS of an anyio process with a running loop and nothing else."""
    ev = await child_event([PY, "-u", "-m", "bench.mem_child", "idle", backend], "ready", settle=settle)
    return int(ev["rss"])
