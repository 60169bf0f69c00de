"""The worker process without a Gateway: ready, bad input, line limits, stdin kinds, exit, guard.

Real `python -m worker` subprocesses; every bad line must be answered at once with its exact code
and the worker must go on answering the next good request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.worker_process import WorkerProcess

from worker.protocol import (
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    Code,
    Response,
    decode_incoming,
    encode,
    request,
)

WORKER = [sys.executable, "-m", "worker"]


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    """One long-lived worker shared by the bad-input cases: it must survive all of them."""
    with WorkerProcess(label="test-io") as w:
        w.wait_ready()
        yield w
        assert w.proc.poll() is None, "the worker died while serving bad input"


def assert_still_serving(w: WorkerProcess) -> None:
    resp = w.call("status")
    assert resp.ok and resp.data is not None and resp.data["connected"] is False


def test_ready_event() -> None:
    with WorkerProcess(label="test-ready") as w:
        ready = w.wait_ready()
        assert ready.data == {"pid": w.pid, "ib_async": "2.1.0", "protocol": PROTOCOL_VERSION}
        assert w.ready_after is not None and w.ready_after < 10
        print(f"\nworker start-to-ready: {w.ready_after * 1000:.0f} ms")
        status = w.call("status").data
        assert status is not None
        assert status["guard_installed"] is True and status["suppressed_disconnects"] == 0
        assert status["pacing"] == {"max_requests": 45, "interval_s": 1, "probe_max_per_s": 4}
        w.close_stdin()
        assert w.wait_exit() == 0


BAD_LINES = [
    # (line, expected code, expected id echoed)
    (b"this is not json", Code.INVALID_JSON, None),
    (b'{"id": 1,', Code.INVALID_JSON, None),
    (b"\xff\xfe\x00garbage", Code.INVALID_JSON, None),
    (b"", Code.INVALID_JSON, None),
    (b"   \t ", Code.INVALID_JSON, None),
    (b'["connect"]', Code.BAD_REQUEST, None),
    (b"42", Code.BAD_REQUEST, None),
    # the original bug, verbatim shape: params at the top level
    (
        b'{"id": 11, "command": "connect", "host": "127.0.0.1", "port": 4002, "client_id": 1, '
        b'"readonly": true, "timeout": 30.0}',
        Code.BAD_REQUEST,
        11,
    ),
    (b'{"id": 12, "command": "connect", "params": {"host": "127.0.0.1"}}', Code.BAD_REQUEST, 12),
    (
        b'{"id": 13, "command": "connect", "params": {"host": "127.0.0.1", "port": "4002", "client_id": 1}}',
        Code.BAD_REQUEST,
        13,
    ),
    (b'{"id": 14, "command": "ping", "params": {"timeout": "soon"}}', Code.BAD_REQUEST, 14),
    (b'{"id": 15}', Code.BAD_REQUEST, 15),
    (b'{"id": 16, "command": "frobnicate", "params": {}}', Code.UNKNOWN_COMMAND, 16),
    (b'{"id": 17, "command": "disconnect"}', Code.DISCONNECT_FORBIDDEN, 17),
    (b'{"id": 18, "command": "ping", "params": {"timeout": 1}}', Code.NOT_CONNECTED, 18),
    (b'{"id": 19, "command": "positions"}', Code.NOT_CONNECTED, 19),
    (b'{"id": 20, "command": "account_summary"}', Code.NOT_CONNECTED, 20),
    (b'{"id": 21, "command": "accounts"}', Code.NOT_CONNECTED, 21),
]


@pytest.mark.parametrize(
    ("line", "code", "rid"), BAD_LINES, ids=[f"{c}-{i}" for i, (_, c, _) in enumerate(BAD_LINES)]
)
def test_bad_input_is_answered_and_worker_keeps_serving(
    worker: WorkerProcess, line: bytes, code: str, rid: int | None
) -> None:
    worker.send_bytes(line + b"\n")
    resp = worker.recv_response()
    assert resp.status == "error" and resp.error is not None
    assert (resp.error.code, resp.id) == (code, rid), resp
    assert resp.error.message
    assert_still_serving(worker)


def test_top_level_params_message_names_the_keys(worker: WorkerProcess) -> None:
    worker.send_bytes(
        b'{"id": 30, "command": "connect", "host": "127.0.0.1", "port": 4002, "client_id": 888}\n'
    )
    resp = worker.recv_response()
    assert resp.error is not None and resp.id == 30
    assert "client_id, host, port" in resp.error.message and '"params"' in resp.error.message


def test_disconnect_refusal_says_what_to_do(worker: WorkerProcess) -> None:
    resp = worker.call("disconnect")
    assert resp.error is not None and resp.error.code == Code.DISCONNECT_FORBIDDEN
    assert "stdin" in resp.error.message and "shutdown()" in resp.error.message


def test_over_long_line_answered_at_once_rest_discarded(worker: WorkerProcess) -> None:
    """line_too_long arrives before the line even ends; its tail is not parsed as a new line."""
    worker.send_bytes(b'{"id": 40, "command": "status", "pad": "' + b"x" * (MAX_LINE_BYTES + 10))
    resp = worker.recv_response()
    assert resp.error is not None and resp.error.code == Code.LINE_TOO_LONG and resp.id is None
    # the tail of that line (another 300 KiB, then its newline) is discarded silently
    worker.send_bytes(b"y" * 300_000 + b'"}\n')
    assert_still_serving(worker)  # the very next response is the status: nothing in between
    status = worker.call("status").data
    assert status is not None and status["requests_rejected"] >= 1


def test_line_of_exactly_the_limit_is_accepted(worker: WorkerProcess) -> None:
    head = b'{"id": 41, "command": "status", "params": {}'
    line = head + b" " * (MAX_LINE_BYTES - len(head) - 1) + b"}"
    assert len(line) == MAX_LINE_BYTES
    worker.send_bytes(line + b"\n")
    assert worker.wait_response(41).ok
    worker.send_bytes(line[:-1] + b" }\n")  # one byte over
    resp = worker.recv_response()
    assert resp.error is not None and resp.error.code == Code.LINE_TOO_LONG
    assert_still_serving(worker)


def test_crlf_lines_are_fine(worker: WorkerProcess) -> None:
    worker.send_bytes(b'{"id": 42, "command": "status"}\r\n')
    assert worker.wait_response(42).ok


def test_connect_refused_port(worker: WorkerProcess, unused_port: int) -> None:
    resp = worker.call("connect", host="127.0.0.1", port=unused_port, client_id=3, timeout=30.0)
    assert resp.error is not None and resp.error.code == Code.CONNECTION_REFUSED, resp
    status = worker.call("status").data
    assert status is not None
    assert status["phase"] == "failed" and status["socket_open"] is False
    # ib_async's failure path tried to disconnect twice; both were suppressed and counted
    assert status["suppressed_by_path"] == {"Client.disconnect": 1, "IB.disconnect": 1}


@pytest.fixture
def unused_port() -> int:
    """A loopback port with nothing listening (bound then released, never listened on)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_stdin_regular_file_and_devnull(tmp_path: Path) -> None:
    """stdin may be a file (thread fallback) or /dev/null: same answers, exit 0."""
    src = tmp_path / "requests.jsonl"
    src.write_bytes(encode(request("status", id=1)) + b"not json\n" + encode(request("ping", id=2)))
    with src.open("rb") as f:
        out = subprocess.run(WORKER, stdin=f, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    msgs = [decode_incoming(line) for line in out.stdout.splitlines()]
    assert msgs[0].event == "ready"  # type: ignore[union-attr]
    codes = sorted(
        (m.id or 0, m.error.code if m.error else "ok") for m in msgs[1:] if isinstance(m, Response)
    )
    assert codes == [(0, Code.INVALID_JSON), (1, "ok"), (2, Code.NOT_CONNECTED)]
    out = subprocess.run(WORKER, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 1


def test_eof_answers_what_was_read_then_exits_zero() -> None:
    lines = b"".join(encode(request("status", id=i)) for i in range(1, 6)) + b"{oops\n"
    out = subprocess.run(WORKER, input=lines, capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    responses = [m for m in map(decode_incoming, out.stdout.splitlines()) if isinstance(m, Response)]
    assert sorted(r.id or 0 for r in responses) == [0, 1, 2, 3, 4, 5]
    assert b"stdin closed" in out.stderr


def test_logs_go_to_stderr_only() -> None:
    out = subprocess.run(
        WORKER,
        input=encode(request("connect", id=1, host="127.0.0.1", port=1, client_id=1)),
        capture_output=True,
        timeout=30,
    )
    for line in out.stdout.splitlines():
        json.loads(line)  # every stdout line is a protocol message
    assert b"ib_async" in out.stderr  # ib_async's own logging went to stderr


def test_guard_pins_the_version_and_counts_every_path() -> None:
    """In a child process (the guard patches ib_async globally): each path is counted, none closes."""
    code = textwrap.dedent("""
        import asyncio, json
        from worker import guard
        try:
            guard.check_version("2.2.0")
        except guard.GuardVersionError as e:
            assert "2.1.0" in str(e) and "2.2.0" in str(e)
        else:
            raise SystemExit("no error for a wrong version")
        from ib_async import IB
        guard.install(); guard.install()
        assert guard.installed()
        ib = IB()
        ib.disconnect(); ib.client.disconnect(); ib.client.conn.disconnect()
        with ib:
            pass
        IB.__del__(ib)
        print(json.dumps(guard.stats.snapshot()))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr.decode()
    snap = json.loads(out.stdout)
    assert snap == {
        "total": 5,
        "by_path": {
            "IB.disconnect": 1,
            "Client.disconnect": 1,
            "Connection.disconnect": 1,
            "IB.__exit__": 1,
            "IB.__del__": 1,
        },
    }


def test_wrong_ib_async_version_refuses_to_start() -> None:
    """The guard's pin: another ib_async version exits 3 with a clear message and no `ready`."""
    code = (
        "import ib_async, runpy; ib_async.__version__ = '2.2.0'; "
        "runpy.run_module('worker', run_name='__main__')"
    )
    out = subprocess.run([sys.executable, "-c", code], input=b"", capture_output=True, timeout=30)
    assert out.returncode == 3
    assert out.stdout == b""
    assert b"written against ib_async==2.1.0, but 2.2.0 is installed" in out.stderr


# ---- Hypothesis: arbitrary lines into ONE long-lived worker

COMMANDS = ["ping", "accounts", "positions", "account_summary", "status", "disconnect"]
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
json_values = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
requests_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.integers(min_value=0, max_value=10**6),
        "command": st.sampled_from(COMMANDS) | st.text(max_size=10) | json_values,
        "params": st.dictionaries(
            st.sampled_from(["timeout", "account", "host", "x"]), json_values, max_size=3
        )
        | json_values,
        "host": st.text(max_size=5),
        "port": st.integers(),
    },
)
lines = (
    st.binary(max_size=300).map(lambda b: b.replace(b"\n", b" "))
    | json_values.map(lambda v: json.dumps(v).encode())
    | requests_like.map(lambda d: json.dumps(d).encode())
)


@pytest.fixture(scope="module")
def fuzz_worker() -> Iterator[WorkerProcess]:
    with WorkerProcess(label="test-fuzz") as w:
        w.wait_ready()
        yield w


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(lines, min_size=1, max_size=4))
def test_fuzz_one_well_formed_response_per_line(fuzz_worker: WorkerProcess, batch: list[bytes]) -> None:
    w = fuzz_worker
    w.send_bytes(b"".join(line + b"\n" for line in batch))
    got = [w.recv_response(timeout=10) for _ in batch]  # the client asserts each is well-formed
    expected_ids = []
    for line in batch:
        try:
            obj = json.loads(line.strip())  # the worker strips ASCII whitespace too
        except ValueError:
            obj = None
        rid = obj.get("id") if isinstance(obj, dict) else None
        expected_ids.append(rid if isinstance(rid, int) and not isinstance(rid, bool) else None)
    assert sorted(map(repr, (r.id for r in got))) == sorted(map(repr, expected_ids))
    for r in got:
        assert (r.status == "success") == (r.error is None)
        if r.error:
            assert r.error.code in Code.ALL and r.error.message


def test_fuzzed_worker_is_alive_and_has_nothing_left_over(fuzz_worker: WorkerProcess) -> None:
    rid = fuzz_worker.submit("status")
    resp = fuzz_worker.recv_response()
    assert resp.id == rid and resp.ok  # no stray response was queued before it
    assert fuzz_worker.proc.poll() is None
    fuzz_worker.close_stdin()
    assert fuzz_worker.wait_exit() == 0
