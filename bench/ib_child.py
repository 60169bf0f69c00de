"""In-process ib_async baselines, run in a child so the bench parent never imports ib_async.

Run by path: `python bench/ib_child.py`. JSON-lines commands on stdin; every timing is taken
inside this process around the ib_async call alone, so the pipe to the parent is not part of
the figure:

- `connect` {host, port, client_id}: a new `IB().connectAsync(...)`; replies {elapsed_ms}.
- `ping_setup` {host, port, client_id}: connect the one client used for `ping`.
- `ping`: `reqCurrentTimeAsync()` on that client; replies {elapsed_ms}. ib_async's own throttle
  (45 msg/s) is left ON; the parent paces pings below it.

Every IB stays referenced until stdin EOF, then the process leaves with `os._exit` so that no
`disconnect()` or `IB.__del__` runs: sessions end by process exit only.
"""

import asyncio
import json
import os
import sys
import time

import ib_async


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    keep: list[ib_async.IB] = []
    pinger: ib_async.IB | None = None

    def reply(rid, data=None, error=None):
        msg = {"id": rid, "status": "error" if error else "success"}
        if error:
            msg["error"] = {"code": "internal_error", "message": error}
        else:
            msg["data"] = data or {}
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        rid, cmd, p = req.get("id"), req.get("command"), req.get("params", {})
        try:
            if cmd in ("connect", "ping_setup"):
                ib = ib_async.IB()
                keep.append(ib)
                t0 = time.perf_counter_ns()
                await ib.connectAsync(
                    p["host"], p["port"], clientId=p["client_id"], timeout=30, readonly=True
                )
                t1 = time.perf_counter_ns()
                if cmd == "ping_setup":
                    pinger = ib
                reply(rid, {"elapsed_ms": (t1 - t0) / 1e6})
            elif cmd == "ping":
                assert pinger is not None, "ping before ping_setup"
                t0 = time.perf_counter_ns()
                await pinger.reqCurrentTimeAsync()
                t1 = time.perf_counter_ns()
                reply(rid, {"elapsed_ms": (t1 - t0) / 1e6})
            else:
                reply(rid, error=f"unknown command {cmd!r}")
        except Exception as exc:  # report, keep serving
            reply(rid, error=f"{type(exc).__name__}: {exc}")
    sys.stdout.flush()
    os._exit(0)


asyncio.run(main())
