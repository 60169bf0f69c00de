"""Hostile input and broken promises (issue 11 items 3, 4, 5, 7, 8): a real manager with a real
(scripted) worker process, real files, real processes and sockets on loopback.

- bad request arguments are a BadRequest at once and never reach the worker;
- an answer line over the protocol's bound fails that request alone;
- a session lost under a request is SessionLost (a NotConnected);
- state files and locks are not trusted; a forged lock signals nothing;
- "already running" holds across host spellings and state dirs;
- a host that does not resolve and a Gateway too old for ib_async say so at once.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.abc
import psutil
import pytest
from support.manager import assert_clean_exit, quick

from fsm import (
    AlreadyRunning,
    BadRequest,
    ConnectionManager,
    NotConnected,
    Notice,
    Reason,
    ResponseTooLarge,
    SessionLost,
    State,
    UnknownHost,
    UnsafeStateDir,
)
from fsm.lockfile import lock_path
from fsm.pids import worker_label
from gatewaysim import wire

pytestmark = pytest.mark.anyio


# ------------------------------------------------------------------------------ item 7: requests

BAD_CALLS = {
    "timeout_nan": {"timeout": math.nan},
    "timeout_text": {"timeout": "5"},
    "timeout_inf": {"timeout": math.inf},
    "timeout_negative": {"timeout": -1},
    "timeout_bool": {"timeout": True},
    "timeout_huge": {"timeout": 1e308},
    "wait_nan": {"wait": math.nan},
    "lone_surrogate": {"account": "\ud800"},
    "surrogate_unknown_command": {"note": "\udfff"},
    "object_param": {"account": object()},
    "huge_int_param": {"account": 10**400},
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
async def test_bad_request_arguments_are_a_bad_request_and_never_sent(
    tmp_path: Path, fake_argv: list[str], name: str
) -> None:
    kwargs = dict(BAD_CALLS[name])
    command = "ping2" if name == "surrogate_unknown_command" else "positions"
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        before = m.metrics()
        with pytest.raises(BadRequest) as exc:
            await m.request(command, **kwargs)
        assert "\n" not in str(exc.value)
        after = m.metrics()
        # refused before it was sent: the worker never saw it, nothing is in flight
        assert after["requests_in_flight"] == 0
        assert (after["requests_ok"], after["requests_failed"]) == (
            before["requests_ok"],
            before["requests_failed"],
        )
        assert await m.request("ping") == {"gateway_time": 1.0, "latency_ms": 0.1}
        assert m.state == State.CONNECTED
    await assert_clean_exit(m, None)


async def test_a_command_that_is_not_text_is_a_bad_request(tmp_path: Path, fake_argv: list[str]) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        for command in (None, 7, "", b"ping"):
            with pytest.raises(BadRequest):
                await m.request(command)  # type: ignore[arg-type]
    await assert_clean_exit(m, None)


# ---------------------------------------------------------------- items 2 and 8: answers that fail


async def test_an_answer_over_the_line_bound_fails_that_request_alone(
    tmp_path: Path, fake_argv: list[str]
) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        pid, spawned = m.worker_pid, m.metrics()["workers_spawned"]
        with pytest.raises(ResponseTooLarge, match="bytes"):
            await m.request("huge")
        # the worker's next lines are read as before: the same session answers
        assert await m.request("ping") == {"gateway_time": 1.0, "latency_ms": 0.1}
        assert m.state == State.CONNECTED and m.worker_pid == pid
        assert m.metrics()["workers_spawned"] == spawned
        assert all(t.dest != State.DEGRADED_RED for t in m.history)
    await assert_clean_exit(m, None)


async def test_a_session_lost_under_a_request_is_session_lost(tmp_path: Path, fake_argv: list[str]) -> None:
    async with ConnectionManager(quick(tmp_path), worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        with pytest.raises(SessionLost) as exc:
            await m.request("lost")
        assert isinstance(exc.value, NotConnected)  # what the README's example catches
    await assert_clean_exit(m, None)


# ------------------------------------------------------------------------ item 3: state files


@pytest.mark.parametrize(
    "content",
    [
        b'{"manager_pid": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"manager_pid": 1' + b"0" * 300 + b"}",
        b"\xff\xfe",
    ],
    ids=["nested", "huge_pid", "not_utf8"],
)
async def test_a_damaged_lock_file_does_not_stop_a_start(
    tmp_path: Path, fake_argv: list[str], content: bytes
) -> None:
    s = quick(tmp_path)
    s.state_dir.mkdir(mode=0o700)
    lock = lock_path(s.state_dir, s.host, s.port, s.client_id)
    lock.write_bytes(content)
    async with ConnectionManager(s, worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        assert json.loads(lock.read_text())["manager_pid"] == os.getpid()
    await assert_clean_exit(m, None)


async def test_a_symlink_at_the_lock_path_is_refused(tmp_path: Path, fake_argv: list[str]) -> None:
    s = quick(tmp_path)
    s.state_dir.mkdir(mode=0o700)
    target = tmp_path / "not-a-lock"
    target.write_text("precious\n")
    lock_path(s.state_dir, s.host, s.port, s.client_id).symlink_to(target)
    with pytest.raises(UnsafeStateDir, match="symbolic link"):
        async with ConnectionManager(s, worker_argv=fake_argv):
            pass
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("what", ["a_file", "world_writable"])
async def test_a_state_dir_that_is_not_ours_is_refused_before_anything_starts(
    tmp_path: Path, fake_argv: list[str], what: str
) -> None:
    s = quick(tmp_path)
    if what == "a_file":
        s.state_dir.write_text("root:x:0:0::/root:/bin/sh\n")
    else:
        s.state_dir.mkdir(mode=0o700)
        s.state_dir.chmod(0o777)
    m = ConnectionManager(s, worker_argv=fake_argv)
    with pytest.raises(UnsafeStateDir):
        async with m:
            pass
    assert m.state == State.IDLE and m.worker_pid is None


# ------------------------------------------------------------------- item 4: a forged lock file


@pytest.fixture
async def gateway_port() -> AsyncIterator[int]:
    """A listener standing in for the Gateway's port (only its address matters here)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    yield srv.getsockname()[1]
    srv.close()


async def test_a_forged_lock_makes_the_manager_signal_nothing(
    tmp_path: Path, fake_argv: list[str], gateway_port: int
) -> None:
    # An innocent process of ours that looks like our worker and holds a connection to the
    # Gateway's port, named in a lock file "left by a dead manager" that never started it.
    s = quick(tmp_path).replace(port=gateway_port)
    code = (
        "import socket, sys; s = socket.create_connection(('127.0.0.1', int(sys.argv[1]))); sys.stdin.read()"
    )
    label = worker_label(s.host, s.port, s.client_id)
    innocent = await anyio.open_process(
        [sys.executable, "-c", code, str(gateway_port), "-m", "worker", "--label", label]
    )
    dead = psutil.Popen([sys.executable, "-c", "pass"])
    dead_start = dead.create_time()
    dead.wait()
    s.state_dir.mkdir(mode=0o700)
    lock_path(s.state_dir, s.host, s.port, s.client_id).write_text(
        json.dumps(
            {
                "manager_pid": dead.pid,
                "manager_create_time": dead_start,
                "worker_pid": innocent.pid,
                "worker_create_time": psutil.Process(innocent.pid).create_time(),
                "host": s.host,
                "port": s.port,
                "client_id": s.client_id,
            }
        )
    )
    try:
        async with ConnectionManager(s, worker_argv=fake_argv) as m:
            await m.wait_connected(10)
            assert m.metrics()["zombies_reaped"] == 0
            alive = psutil.Process(innocent.pid)
            assert innocent.returncode is None and alive.status() != psutil.STATUS_ZOMBIE
    finally:
        innocent.kill()
        await innocent.wait()
        await innocent.aclose()
    await assert_clean_exit(m, None)


# ---------------------------------------------------------------- item 5: already running


async def test_already_running_holds_across_host_spellings_and_state_dirs(
    tmp_path: Path, fake_argv: list[str]
) -> None:
    first = quick(tmp_path / "a")
    async with ConnectionManager(first, worker_argv=fake_argv) as m:
        await m.wait_connected(10)
        for other in (
            first.replace(host="localhost"),
            first.replace(state_dir=tmp_path / "b" / "state"),
            first.replace(host="localhost", state_dir=tmp_path / "c" / "state"),
        ):
            with pytest.raises(AlreadyRunning, match=rf"pid {os.getpid()}"):
                async with ConnectionManager(other, worker_argv=fake_argv):
                    pass
        assert m.state == State.CONNECTED
        assert lock_path(first.state_dir, "127.0.0.1", first.port, 7).exists()  # not removed by them
    await assert_clean_exit(m, None)


# ------------------------------------------------------------ item 8: causes reported as they are


async def test_a_host_that_does_not_resolve_is_unknown_host_at_once(
    tmp_path: Path, fake_argv: list[str]
) -> None:
    m = ConnectionManager(quick(tmp_path, host="no-such-host.invalid"), worker_argv=fake_argv)
    with anyio.fail_after(15), pytest.raises(UnknownHost, match="no-such-host.invalid"):
        async with m:
            pass
    assert m.worker_pid is None and not (tmp_path / "state").exists()


@pytest.fixture
async def too_old_gateway() -> AsyncIterator[int]:
    """A peer that answers the API hello as a Gateway of server version 100 would."""

    async def serve(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            seen = b""
            while len(seen) < 8 or len(seen) < 8 + int.from_bytes(seen[4:8], "big"):
                seen += await conn.receive()
            await conn.send(wire.server_hello(100, "20260101 00:00:00 UTC"))
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, serve)
        yield port
        tg.cancel_scope.cancel()


async def test_a_gateway_too_old_is_reported_at_once_not_after_30_s(
    tmp_path: Path, too_old_gateway: int
) -> None:
    s = quick(tmp_path, min_session=0.4).replace(port=too_old_gateway)
    async with ConnectionManager(s) as m:
        sub = m.subscribe()
        with anyio.fail_after(20):  # the handshake budget is 30 s: this must come long before
            await m.wait_for(State.DEGRADED_RED)
        assert m.reason == Reason.gateway_too_old
        assert m.last_error is not None and m.last_error.startswith("server_version_too_old")
        assert "100" in m.last_error
        with anyio.fail_after(5):
            async for item in sub:
                if isinstance(item, Notice) and item.kind == "handshake_failed":
                    assert item.message == m.last_error
                    break
    await assert_clean_exit(m, None)
