"""worker.protocol: constructors cannot misplace params; the decoder names every mistake precisely."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker import protocol as wp
from worker.protocol import Code, ConnectParams, ProtocolError


def decode_error(line: bytes | str) -> ProtocolError:
    if isinstance(line, str):
        line = line.encode()
    with pytest.raises(ProtocolError) as info:
        wp.decode_request(line)
    return info.value


# ---- constructors


def test_request_nests_params_and_roundtrips() -> None:
    req = wp.request("ping", id=3, timeout=2.5)
    line = wp.encode(req)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {"command": "ping", "params": {"timeout": 2.5}, "id": 3}
    assert wp.decode_request(line) == req


def test_connect_constructor_is_the_report_shape() -> None:
    req = wp.connect(ConnectParams(host="127.0.0.1", port=4002, client_id=888, timeout=30.0))
    assert json.loads(wp.encode(req)) == {
        "command": "connect",
        "params": {"host": "127.0.0.1", "port": 4002, "client_id": 888, "readonly": True, "timeout": 30.0},
    }


def test_request_constructor_refuses_the_wrong_level() -> None:
    # the nearest a caller can get to the original bug: a nested "params" kwarg
    with pytest.raises(ProtocolError) as info:
        wp.request("connect", params={"host": "h", "port": 1, "client_id": 1})
    assert info.value.code == Code.BAD_REQUEST and "'params'" in info.value.message
    with pytest.raises(ProtocolError, match=r"connect: params.port is missing"):
        wp.request("connect", host="h", client_id=1)
    # unknown commands are the worker's call (a registry may add commands)
    assert wp.request("custom", x=1).params == {"x": 1}


def test_params_structs_validate() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"host": "h", "port": 70000, "client_id": 1}, ConnectParams)
    p = wp.parse_params("connect", {"host": "h", "port": 4002, "client_id": 0})
    assert p == ConnectParams(host="h", port=4002, client_id=0, readonly=True, timeout=30.0)
    for bad in (float("nan"), float("inf"), 0.0, 1e9):
        with pytest.raises(ProtocolError, match="ping: params.timeout"):
            wp.parse_params("ping", {"timeout": bad})


def test_response_shapes_and_invariants() -> None:
    ok = wp.success({"a": 1}, id=7)
    assert json.loads(wp.encode(ok)) == {"status": "success", "id": 7, "data": {"a": 1}}
    err = wp.failure(Code.GATEWAY_ERROR, "boom", ib_code=162)
    assert json.loads(wp.encode(err)) == {
        "status": "error",
        "error": {"code": "gateway_error", "message": "boom", "ib_code": 162},
    }
    assert json.loads(wp.encode(wp.success(wp.PingResult(gateway_time=1.0, latency_ms=0.2)))) == {
        "status": "success",
        "data": {"gateway_time": 1.0, "latency_ms": 0.2},
    }
    with pytest.raises(ValueError):
        wp.Response(status="success")
    with pytest.raises(ValueError):
        wp.Response(status="error", data={})


def test_events_and_decode_incoming() -> None:
    assert wp.encode(wp.event(wp.EventName.SESSION_LOST)) == b'{"event":"session_lost"}\n'
    ready = wp.decode_incoming(b'{"event":"ready","data":{"pid":1,"ib_async":"2.1.0","protocol":1}}')
    assert isinstance(ready, wp.Event)
    assert wp.data_as(ready, wp.ReadyData) == wp.ReadyData(pid=1, ib_async="2.1.0", protocol=1)
    resp = wp.decode_incoming(b'{"status":"error","id":4,"error":{"code":"x","message":"y"}}')
    assert isinstance(resp, wp.Response) and not resp.ok and resp.error.code == "x"
    for bad in (b"nope", b"[1]", b'{"status":"success"}', b'{"status":"maybe","data":{}}', b'{"event":1}'):
        with pytest.raises(ProtocolError):
            wp.decode_incoming(bad)


# ---- decoding what a caller may send


def test_params_at_top_level_names_the_misplaced_keys() -> None:
    """The original bug: {"command": "connect", "host": ...} is answered, naming the keys."""
    e = decode_error(
        '{"id": 9, "command": "connect", "host": "127.0.0.1", "port": 4002, '
        '"client_id": 1, "readonly": true, "timeout": 30.0}'
    )
    assert e.code == Code.BAD_REQUEST and e.id == 9
    assert "client_id, host, port, readonly, timeout" in e.message
    assert '"params"' in e.message


@pytest.mark.parametrize(
    ("line", "code", "fragment", "rid"),
    [
        ("", Code.INVALID_JSON, "empty line", None),
        ("{", Code.INVALID_JSON, "invalid JSON", None),
        ('{"id": 1} trailing', Code.INVALID_JSON, "invalid JSON", None),
        ("[1, 2]", Code.BAD_REQUEST, "must be a JSON object, got an array", None),
        ('"connect"', Code.BAD_REQUEST, "got a string", None),
        ("null", Code.BAD_REQUEST, "got null", None),
        ('{"id": 5}', Code.BAD_REQUEST, "command is missing", 5),
        ('{"id": 5, "command": 3}', Code.BAD_REQUEST, "command must be a non-empty string", 5),
        ('{"id": "x", "command": "status"}', Code.BAD_REQUEST, "id must be an integer", None),
        ('{"id": true, "command": "status"}', Code.BAD_REQUEST, "id must be an integer", None),
        (
            '{"id": 6, "command": "status", "params": [1]}',
            Code.BAD_REQUEST,
            "status: params must be an object, got an array",
            6,
        ),
        ('{"id": 7, "command": "launch"}', Code.UNKNOWN_COMMAND, "unknown command 'launch'", 7),
        (
            '{"id": 8, "command": "connect", "params": {"port": 1, "client_id": 1}}',
            Code.BAD_REQUEST,
            "connect: params.host is missing",
            8,
        ),
        (
            '{"id": 8, "command": "connect", "params": {"host": "h", "port": "4002", "client_id": 1}}',
            Code.BAD_REQUEST,
            "connect: params.port: expected `int`, got `str`",
            8,
        ),
        (
            '{"id": 8, "command": "connect", "params": {"host": "h", "port": 1, "client_id": 1, '
            '"readonly": "yes"}}',
            Code.BAD_REQUEST,
            "params.readonly: expected `bool`",
            8,
        ),
        (
            '{"id": 8, "command": "connect", "params": {"host": "h", "port": 0, "client_id": 1}}',
            Code.BAD_REQUEST,
            "params.port: expected `int` >= 1",
            8,
        ),
        (
            '{"id": 8, "command": "connect", "params": {"host": "h", "port": 1, "client_id": 1, '
            '"clientId": 2}}',
            Code.BAD_REQUEST,
            "has unknown field 'clientId'",
            8,
        ),
        (
            '{"id": 8, "command": "ping", "params": {"timeout": -1}}',
            Code.BAD_REQUEST,
            "ping: params.timeout: expected `float` > 0.0",
            8,
        ),
        (
            '{"id": 8, "command": "status", "params": {"verbose": true}}',
            Code.BAD_REQUEST,
            "status: params has unknown field 'verbose'",
            8,
        ),
    ],
)
def test_bad_requests(line: str, code: str, fragment: str, rid: int | None) -> None:
    e = decode_error(line)
    assert (e.code, e.id) == (code, rid)
    assert fragment in e.message
    resp = e.to_response()
    assert resp.status == "error" and resp.error is not None and resp.error.code == code


def test_line_too_long_is_its_own_code() -> None:
    e = decode_error(b" " * (wp.MAX_LINE_BYTES + 1))
    assert e.code == Code.LINE_TOO_LONG


def test_null_params_and_null_id_are_accepted() -> None:
    req = wp.decode_request(b'{"id": null, "command": "status", "params": null}')
    assert req == wp.Request(command="status")


def test_registry_of_params_is_pluggable() -> None:
    class EchoParams(wp.Params):
        text: str

    commands = {**wp.COMMAND_PARAMS, "echo": EchoParams}
    req, typed = wp.decode_command(b'{"command": "echo", "params": {"text": "hi"}}', commands)
    assert typed == EchoParams(text="hi") and req.command == "echo"


# ---- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_request_only_raises_protocol_errors(line: bytes) -> None:
    try:
        wp.decode_request(line)
    except ProtocolError as exc:
        assert exc.code in Code.ALL and exc.message


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["id", "command", "params", "host", "port", "x"]), json_values, max_size=5
    )
)
def test_decode_request_of_json_shapes(obj: dict) -> None:
    line = json.dumps(obj).encode()
    try:
        req = wp.decode_request(line)
    except ProtocolError as exc:
        assert exc.code in Code.ALL
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            assert exc.id == rid  # the id is echoed whenever it could be read
    else:
        assert req.command in wp.COMMAND_PARAMS and set(obj) <= {"id", "command", "params"}
