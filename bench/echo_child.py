"""The bare baseline: an anyio child that answers JSON lines on stdin with JSON lines on stdout.

It does the least a worker must do per request (read a line, decode it, encode a response with
the same id, write it) and nothing else, so a manager figure divided by this one is the cost of
the manager's own machinery. Run as `python -u bench/echo_child.py` (by path, so that importing
the `bench` package is not part of its start-up).
"""

from __future__ import annotations

import os
import sys

import anyio
import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


async def serve(fd_in: int = 0, fd_out: int = 1) -> None:
    """Echo until EOF; each reply is `{"id", "status": "success", "data": {...}}`."""
    os.set_blocking(fd_in, False)
    buf = b""
    while True:
        await anyio.wait_readable(fd_in)
        try:
            chunk = os.read(fd_in, 1 << 16)
        except BlockingIOError:
            continue
        if not chunk:
            return
        buf += chunk
        out = []
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                break
            line, buf = buf[:nl], buf[nl + 1 :]
            msg = _decoder.decode(line)
            out.append(
                _encoder.encode(
                    {
                        "id": msg.get("id"),
                        "status": "success",
                        "data": {"echo": msg.get("command")},
                    }
                )
                + b"\n"
            )
        if out:
            data = b"".join(out)
            while data:
                try:
                    n = os.write(fd_out, data)
                except BlockingIOError:
                    await anyio.wait_writable(fd_out)
                    continue
                data = data[n:]


def main() -> None:
    backend = sys.argv[1] if len(sys.argv) > 1 else "asyncio"
    anyio.run(serve, backend=backend)


if __name__ == "__main__":
    main()
