"""Baseline for a cold connect: a fresh process doing `import ib_async; IB().connect(...)`.

Run by path: `python bench/ib_fresh.py HOST PORT CLIENT_ID`. Prints one JSON line once
connected (the parent times spawn -> that line), then stays connected until stdin closes so the
parent can read its RSS, and ends the session by process exit (`os._exit`: no `disconnect()`,
no `IB.__del__`), as the project's rule requires.
"""

import json
import os
import sys
import time

t_start = time.monotonic_ns()
import ib_async  # noqa: E402  (the import is part of what is measured)

t_imported = time.monotonic_ns()


def main() -> None:
    host, port, client_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ib = ib_async.IB()
    ib.connect(host, port, clientId=client_id, timeout=30, readonly=True)
    t_connected = time.monotonic_ns()
    sys.stdout.write(
        json.dumps(
            {
                "event": "connected",
                "connected": ib.isConnected(),
                "import_ms": (t_imported - t_start) / 1e6,
                "connect_ms": (t_connected - t_imported) / 1e6,
                "at_ns": t_connected,
            }
        )
        + "\n"
    )
    sys.stdout.flush()
    sys.stdin.buffer.read()  # wait for EOF; the socket stays open meanwhile
    os._exit(0)


main()
