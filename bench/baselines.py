"""Baselines: the bare echo child, fresh-process and in-process ib_async, an idle anyio process."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from .lineclient import LineClient, rss_bytes

HERE = Path(__file__).resolve().parent
PY = sys.executable


def echo_child(backend: str = "asyncio") -> LineClient:
    """The bare anyio JSON-lines echo child (`async with echo_child() as c: await c.call(...)`)."""
    return LineClient([PY, "-u", str(HERE / "echo_child.py"), backend])


def ib_child() -> LineClient:
    """The in-process ib_async baseline driver (timings taken inside the child)."""
    return LineClient([PY, "-u", str(HERE / "ib_child.py")])


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


async def fresh_connect(host: str, port: int, client_id: int, *, keep: float = 0.0,
                        timeout: float = 60.0) -> dict[str, float]:
    """Spawn `python bench/ib_fresh.py`, time spawn -> connected, read its RSS while connected.

    Returns {total_ms, import_ms, connect_ms, rss}.
    """
    client = LineClient([PY, "-u", str(HERE / "ib_fresh.py"), host, str(port), str(client_id)])
    t0 = time.monotonic_ns()
    async with client:
        ev = await client.wait_event("connected", timeout=timeout)
        t1 = time.monotonic_ns()
        if keep:
            await anyio.sleep(keep)
        rss = rss_bytes(client.pid)
    return {
        "total_ms": (t1 - t0) / 1e6,
        "import_ms": float(ev["import_ms"]),
        "connect_ms": float(ev["connect_ms"]),
        "rss": float(rss),
    }


async def idle_anyio_rss(settle: float = 0.2, backend: str = "asyncio") -> int:
    """RSS of an anyio process with a running loop and nothing else."""
    client = LineClient([PY, "-u", str(HERE / "mem_child.py"), "idle", backend])
    async with client:
        await client.wait_event("ready", timeout=30)
        await anyio.sleep(settle)
        return rss_bytes(client.pid)
