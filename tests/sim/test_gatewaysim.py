"""GatewaySim served under asyncio and trio, driven by raw-socket clients.

Raw clients speak the handshake bytes themselves, so they can do what ib_async never would
(close right after the handshake, send garbage) and they run on both anyio backends.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import threading
import time

import anyio
import anyio.abc
import pytest

from gatewaysim import Faults, GatewaySim, wire

pytestmark = pytest.mark.anyio

T = 3.0  # deadline for anything that should happen promptly


class RawClient:
    """A minimal TWS API client over a real socket."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = wire.FrameReader(expect_prefix=False)
        self.pending: list[list[str]] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await anyio.connect_tcp("127.0.0.1", port))

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def recv(self, timeout: float = T) -> list[str]:
        """Next message's fields; raises anyio.EndOfStream if the server closed."""
        with anyio.fail_after(timeout):
            while not self.pending:
                data = await self.stream.receive()
                self.pending += [wire.decode_fields(p) for p in self.reader.feed(data)]
        return self.pending.pop(0)

    async def recv_until(self, pred, timeout: float = T) -> list[list[str]]:
        got: list[list[str]] = []
        with anyio.fail_after(timeout):
            while not got or not pred(got[-1]):
                got.append(await self.recv(timeout=math.inf))
        return got

    async def hello(self, lo: int = 157, hi: int = 178) -> list[str]:
        await self.send(wire.client_hello(lo, hi))
        return await self.recv()

    async def handshake(self, client_id: int) -> list[list[str]]:
        """Hello + startApi; returns everything up to and including the 2158 notice."""
        version = await self.hello()
        assert len(version) == 2
        await self.send(wire.start_api(client_id))
        return await self.recv_until(lambda f: f[:1] == ["4"] and f[3] == "2158")

    async def expect_eof(self, timeout: float = T) -> list[list[str]]:
        """Messages received before the server closed the connection."""
        got: list[list[str]] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    got.append(await self.recv(timeout=math.inf))
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    return got

    async def expect_silence(self, window: float) -> None:
        """Nothing arrives within `window` (a deadline, not a synchronisation sleep)."""
        with anyio.move_on_after(window):
            msg = await self.recv(timeout=math.inf)
            raise AssertionError(f"expected silence, got {msg}")

    async def aclose(self) -> None:
        await self.stream.aclose()


async def current_time_ok(c: RawClient) -> None:
    await c.send(wire.encode_msg(49, 1))
    msg = await c.recv()
    assert msg[:2] == ["49", "1"] and abs(int(msg[2]) - time.time()) < 5


# ------------------------------------------------------------------------------------------


async def test_handshake_negotiates_and_announces(anyio_backend: str) -> None:
    async with GatewaySim(accounts=("DU111", "DU222")) as sim:
        c = await RawClient.connect(sim.port)
        msgs = await c.handshake(client_id=3)
        assert ["9", "1", "1"] in msgs and ["15", "1", "DU111,DU222"] in msgs
        codes = [m[3] for m in msgs if m[0] == "4"]
        assert codes == ["2104", "2106", "2158"]
        assert all(len(m) == 6 for m in msgs if m[0] == "4")  # sv 178: json field present
        await current_time_ok(c)
        [info] = sim.sessions
        assert info.client_id == 3 and info.handshaken and info.server_version == 178
        assert info.pid() == os.getpid()
        assert sim.client_ids_seen == {3} and sim.counters.handshakes == 1

        lower = await RawClient.connect(sim.port)
        assert (await lower.hello(157, 170))[0] == "170"
        higher = await RawClient.connect(sim.port)
        assert (await higher.hello(157, 200))[0] == "178"
        too_new = await RawClient.connect(sim.port)
        await too_new.send(wire.client_hello(179, 200))
        assert await too_new.expect_eof() == []
        assert sim.counters.refused_versions == 1


async def test_errors_use_the_negotiated_layout(anyio_backend: str) -> None:
    async with GatewaySim(server_version=165) as sim:
        c = await RawClient.connect(sim.port)
        msgs = await c.handshake(client_id=1)
        assert [len(m) for m in msgs if m[0] == "4"] == [5, 5, 5]


async def test_duplicate_client_id_gets_326_and_the_first_keeps_working(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        first = await RawClient.connect(sim.port)
        await first.handshake(client_id=7)
        second = await RawClient.connect(sim.port)
        await second.hello()
        await second.send(wire.start_api(7))
        got = await second.expect_eof()
        assert [m[3] for m in got] == ["326"] and got[0][2] == "-1"
        assert sim.counters.sent_326 == 1
        await current_time_ok(first)
        assert [s.client_id for s in sim.sessions] == [7]


async def test_client_id_hold_reserves_the_id_until_it_expires(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(client_id_hold=0.5)) as sim:
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=5)
        await c.aclose()
        await sim.wait_until(lambda s: 5 in s.held_client_ids, T)
        again = await RawClient.connect(sim.port)
        await again.hello()
        await again.send(wire.start_api(5))
        assert [m[3] for m in await again.expect_eof()] == ["326"]
        await sim.wait_until(lambda s: 5 not in s.held_client_ids, T)
        late = await RawClient.connect(sim.port)
        await late.handshake(client_id=5)

        sim.client_id_hold(math.inf)  # CLOSE_WAIT mode: held until restart
        await late.aclose()
        await sim.wait_until(lambda s: s.held_client_ids.get(5) == math.inf, T)
        sim.restart()
        assert sim.held_client_ids == {}


async def test_fast_close_turns_red_until_restart(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(red_on_fast_close=5.0)) as sim:
        survivor = await RawClient.connect(sim.port)
        await survivor.handshake(client_id=1)
        quick = await RawClient.connect(sim.port)
        await quick.handshake(client_id=2)
        await quick.aclose()
        await sim.wait_until(lambda s: not s.green, T)
        assert sim.counters.fast_closes == 1

        # TCP accepts and the hello is read, but nothing answers
        stuck = await RawClient.connect(sim.port)
        await stuck.send(wire.client_hello())
        await survivor.send(wire.encode_msg(49, 1))
        await stuck.expect_silence(0.3)
        await survivor.expect_silence(0.01)
        assert any(not s.handshaken for s in sim.sessions)

        sim.restart()
        assert sim.green
        assert await stuck.expect_eof() == []
        await survivor.expect_eof()
        fresh = await RawClient.connect(sim.port)
        await fresh.handshake(client_id=2)


async def test_silent_and_go_red(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(silent=True)) as sim:
        assert not sim.green
        c = await RawClient.connect(sim.port)
        await c.send(wire.client_hello())
        await sim.wait_until(lambda s: any(e.kind == "hello_ignored" for e in s.events), T)
        sim.restart()
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        sim.go_red()
        await c.send(wire.encode_msg(49, 1))
        await c.expect_silence(0.2)


async def test_handshake_delay(anyio_backend: str) -> None:
    async with GatewaySim(faults=Faults(handshake_delay=0.6)) as sim:
        c = await RawClient.connect(sim.port)
        t0 = time.monotonic()
        await c.hello()
        assert time.monotonic() - t0 >= 0.6
        sim.handshake_delay(0)
        c = await RawClient.connect(sim.port)
        t0 = time.monotonic()
        await c.hello()
        assert time.monotonic() - t0 < 0.6


async def test_stall_sync_leaves_one_request_unanswered(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        sim.stall_sync("positions")
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        await c.send(wire.encode_msg(61, 1) + wire.encode_msg(49, 1))
        assert (await c.recv())[0] == "49"  # positions skipped, current time answered
        assert sim.counters.requests_stalled == 1
        sim.stall_sync(None)
        await c.send(wire.encode_msg(61, 1))
        rows = await c.recv_until(lambda f: f[0] == "62")
        assert [r[0] for r in rows] == ["61", "61", "62"]
        with pytest.raises(ValueError):
            sim.stall_sync("bogus")


async def test_client_closes_tell_a_live_process_from_an_exit(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        await c.aclose()
        await sim.wait_until(lambda s: len(s.client_closes) == 1, T)
        live = sim.client_closes[0]
        assert (live.client_id, live.pid, live.peer_alive) == (1, os.getpid(), True)

        # a process that handshakes and exits without closing anything itself
        script = (
            "import socket, struct, os, sys\n"
            f"s = socket.create_connection(('127.0.0.1', {sim.port}))\n"
            f"s.sendall({wire.client_hello()!r} + {wire.start_api(2)!r})\n"
            "buf = b''\n"
            "while b'secdef' not in buf: buf += s.recv(4096)\n"
            "os._exit(0)\n"
        )
        proc = await anyio.run_process([sys.executable, "-c", script])
        assert proc.returncode == 0
        await sim.wait_until(lambda s: len(s.client_closes) == 2, T)
        gone = sim.client_closes[1]
        assert gone.client_id == 2 and gone.handshaken and gone.peer_alive is False
        assert gone.pid is not None and gone.pid != os.getpid()


async def test_malformed_clients_do_not_disturb_others(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        good = await RawClient.connect(sim.port)
        await good.handshake(client_id=1)

        bad_prefix = await RawClient.connect(sim.port)
        await bad_prefix.send(b"GET / HTTP/1.1\r\n\r\n")
        assert await bad_prefix.expect_eof() == []

        huge = await RawClient.connect(sim.port)
        await huge.send(wire.HELLO_PREFIX + struct.pack(">I", 1 << 30))
        assert await huge.expect_eof() == []

        junk_hello = await RawClient.connect(sim.port)
        await junk_hello.send(wire.HELLO_PREFIX + wire.frame(b"hello there"))
        assert await junk_hello.expect_eof() == []

        no_start = await RawClient.connect(sim.port)
        await no_start.hello()
        await no_start.send(wire.encode_msg(49, 1))
        assert await no_start.expect_eof() == []

        garbled = await RawClient.connect(sim.port)
        await garbled.handshake(client_id=2)
        await garbled.send(wire.frame(b"49\x00\xff\xfe\x00"))
        err = await garbled.recv()
        assert err[:4] == ["4", "2", "-1", "320"] and err[4].isascii()
        await garbled.send(wire.encode_msg(999, 1))
        assert (await garbled.recv())[:4] == ["4", "2", "-1", "505"]
        await garbled.send(wire.encode_msg(62, 1))  # account summary without its fields
        assert (await garbled.recv())[:4] == ["4", "2", "-1", "320"]
        await current_time_ok(garbled)  # errors, not closes: the session goes on

        await current_time_ok(good)
        fresh = await RawClient.connect(sim.port)
        await fresh.handshake(client_id=3)
        assert sim.counters.malformed == 6
        assert sorted(s.client_id for s in sim.sessions) == [1, 2, 3]


async def test_drop_all_and_down_for(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        sim.drop_all()
        await c.expect_eof()
        assert sim.counters.server_closes == 1

        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        sim.go_red()
        sim.down_for(0.4)
        await c.expect_eof()
        await sim.wait_until(lambda s: not s.listening, T)
        with pytest.raises(OSError):
            await anyio.connect_tcp("127.0.0.1", sim.port)
        await sim.wait_until(lambda s: s.listening, T)
        assert sim.green
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)


async def test_connectivity_and_farm_notices(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        c = await RawClient.connect(sim.port)
        await c.handshake(client_id=1)
        sim.connectivity_lost()
        assert not sim.upstream_connected
        sim.connectivity_restored(data_lost=True)
        sim.connectivity_restored(data_lost=False)
        sim.farm_flap()
        got = [m[3] for m in await c.recv_until(lambda f: f[3] == "2104")]
        assert got == ["1100", "1101", "1102", "2103", "2104"]
        assert sim.upstream_connected


async def test_wait_until_times_out(anyio_backend: str) -> None:
    async with GatewaySim() as sim:
        with pytest.raises(TimeoutError):
            await sim.wait_until(lambda s: not s.green, 0.05)


def test_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        GatewaySim(host="0.0.0.0")
    with pytest.raises(ValueError):
        GatewaySim(accounts=())


def test_cli_runs_prints_and_stops_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gatewaysim",
            "--port",
            "0",
            "--fault",
            "red_on_fast_close=0.5",
            "--accounts",
            "DU1,DU2",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    guard = threading.Timer(20, proc.kill)  # a hung child must fail the test, not hang it
    guard.start()
    try:
        assert proc.stdout is not None and proc.stdin is not None
        first = proc.stdout.readline()
        assert "listening" in first and "DU1,DU2" in first and "GREEN" in first
        proc.stdin.write("go_red\n")
        proc.stdin.flush()
        assert "RED" in proc.stdout.readline()
        proc.send_signal(2)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert out.strip().endswith("gatewaysim stopped")
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    bad = subprocess.run(
        [sys.executable, "-m", "gatewaysim", "--fault", "nonsense"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert bad.returncode == 2 and "unknown fault" in bad.stderr


def test_running_in_thread_reports_bad_arguments_and_busy_ports() -> None:
    from gatewaysim import running_in_thread

    with pytest.raises(ValueError, match="loopback"), running_in_thread(host="10.1.2.3"):
        pass
    with running_in_thread() as first:
        with pytest.raises(OSError), running_in_thread(port=first.port):
            pass
        assert first.snapshot()["listening"]


def test_cli_takes_the_order_and_market_faults() -> None:
    argv = [sys.executable, "-m", "gatewaysim", "--port", "0", "--seed", "3", "--tick-rate", "10"]
    argv += ["--fault", "reject_orders=2", "--fault", "drop_on_place=discard", "--fault", "partial_fills"]
    argv += ["--permission", "AAPL=delayed", "--no-limits", "--positions", "5"]
    commands = [
        "reject_next_order no margin today",
        "fill_while_away on",
        "read_only_api on",
        "farm_outage",
        "pacing_violation 2",
        "fill_order nope",  # an operation that fails is reported and the simulator goes on
        "snapshot",
    ]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    guard = threading.Timer(20, proc.kill)  # a hung child must fail the test, not hang it
    guard.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("\n".join(commands) + "\n")
        proc.stdin.flush()
        lines: list[str] = []
        while not lines or lines[-1] != "}\n":
            line = proc.stdout.readline()
            assert line, "the simulator stopped before its snapshot"
            lines.append(line)
        proc.send_signal(2)
        _, err = proc.communicate(timeout=10)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    for seen in (
        "market data permission AAPL=delayed",
        "reject_next_order reason='no margin today'",
        "fill_while_away=True",
        "read_only_api=True",
        "farm_outage",
        "pacing violation for the next 2",
    ):
        assert seen in text
    assert "fill_order: ValueError: no working order with orderRef 'nope'" in err
    snap = json.loads(text[text.index("\n{") + 1 :])
    assert snap["faults"] == {
        "red_on_fast_close": None,
        "silent": False,
        "handshake_delay": 0.0,
        "stall_sync": None,
        "client_id_hold": None,
        "read_only_api": True,
        "reject_orders": 3,  # two from the start, one from the prompt, none used yet
        "drop_on_place": "discard",
        "fill_while_away": True,
        "partial_fills": True,
    }
    assert snap["broker"] == {"placements": {}, "orders": [], "executions": snap["broker"]["executions"]}
    assert snap["positions"] == {"DU1234567": 5}
    assert snap["market"]["seed"] == 3 and snap["market"]["tick_rate"] == 10.0 and snap["market"]["farm_down"]
