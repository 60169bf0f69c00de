"""What a worker prepares before `ready`, so a warm spare's connect does not pay for it: the IB
object its first connect uses (the first IB() in a process is the costly one) and the connect
line's decoding. A later connect in the same worker (after one that left no socket) builds a
fresh IB, never the used one again."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from gatewaysim.threaded import ThreadedSim, running_in_thread


@pytest.fixture
def sim() -> Iterator[ThreadedSim]:
    with running_in_thread(accounts=("DU1234567",)) as s:
        yield s


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_first_connect_uses_the_ib_built_before_ready(sim: ThreadedSim) -> None:
    """In a child process (the guard patches ib_async globally), as the worker is set up."""
    code = textwrap.dedent(f"""
        import asyncio, io, json
        from worker import guard
        guard.install()
        from worker.__main__ import Worker
        from worker.protocol import CommandError, ConnectParams

        async def main():
            w = Worker(io.BytesIO())
            w.warm_up()  # what serve() does before `ready`
            s = w.ctx.session
            built = s._next_ib
            out = {{"built": built is not None}}
            try:
                await s.connect(ConnectParams(host="127.0.0.1", port={closed_port()}, client_id=31, timeout=5))
            except CommandError as exc:
                out["first"] = exc.code
            out["first_used_it"] = s.ib is built and s._next_ib is None
            r = await s.connect(ConnectParams(host="127.0.0.1", port={sim.port}, client_id=31, timeout=10))
            out["second"] = r.connected
            out["second_fresh"] = s.ib is not built and s.ib is not None
            print(json.dumps(out))

        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout.splitlines()[-1]) == {
        "built": True,
        "first": "connection_refused",
        "first_used_it": True,
        "second": True,
        "second_fresh": True,
    }
