"""Chunking of long responses (worker.protocol): split by encode_response, joined by Reassembler.

Small line bounds stand in for the 1 MiB one so that every path runs in microseconds; the bound
is a parameter, the code is the same.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import worker.protocol as wp
from worker.protocol import Chunk, Code, ProtocolError, Reassembler, Response

json_leaf = st.one_of(
    st.text(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
json_value = st.recursive(
    json_leaf, lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids), max_leaves=20
)
responses = st.builds(
    lambda rid, data, pad, ok: (
        wp.success({**data, "pad": pad}, id=rid) if ok else wp.failure("x", pad, id=rid)
    ),
    st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    st.dictionaries(st.text(), json_value, max_size=5),
    st.text(alphabet='"\\aé€\U0001f600\x7f\u2028', max_size=1500),  # escapes and multi-byte characters
    st.booleans(),
)


def decoded(lines: list[bytes]) -> list[Response | Chunk]:
    out = []
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        msg = wp.decode_incoming(line)
        assert not isinstance(msg, wp.Event)
        out.append(msg)
    return out


def reassemble(lines: list[bytes], r: Reassembler | None = None) -> Response:
    r = r or Reassembler()
    done = []
    for msg in decoded(lines):
        if isinstance(msg, Response):
            done.append(msg)
        elif (whole := r.feed(msg)) is not None:
            done.append(whole)
    assert len(done) == 1 and r.pending() == []
    return done[0]


@settings(max_examples=150, deadline=None)
@given(resp=responses, max_line=st.integers(200, 2000))
def test_any_response_survives_split_and_reassembly(resp: Response, max_line: int) -> None:
    lines = wp.encode_response(resp, max_line=max_line)
    assert all(len(line) - 1 <= max_line for line in lines)
    assert all(wp.line_id(line[:40]) == resp.id for line in lines if resp.id is not None)
    if len(wp.encode(resp)) - 1 <= max_line:
        assert lines == [wp.encode(resp)]
    assert reassemble(lines) == resp


@settings(max_examples=60, deadline=None)
@given(a=responses, b=responses, seed=st.integers(0, 2**32))
def test_interleaved_chunks_of_two_responses(a: Response, b: Response, seed: int) -> None:
    a.id, b.id = 1, 2
    la, lb = wp.encode_response(a, max_line=200), wp.encode_response(b, max_line=200)
    merged, rng = [], random.Random(seed)
    while la or lb:  # a random interleaving that keeps each response's own order
        src = la if la and (not lb or rng.random() < 0.5) else lb
        merged.append(src.pop(0))
    r, done = Reassembler(), {}
    for msg in decoded(merged):
        whole = msg if isinstance(msg, Response) else r.feed(msg)
        if whole is not None:
            done[whole.id] = whole
    assert done == {1: a, 2: b} and r.pending() == []


def big(rid: int, n: int = 2000) -> Response:
    return wp.success({"rows": [{"symbol": f'S"{i}\\é', "qty": i} for i in range(n)]}, id=rid)


def test_oversize_total_fails_that_id_alone() -> None:
    small, large = big(1, 20), big(2, 2000)
    r = Reassembler(max_bytes=len(wp.encode(small)) + 10)
    lines = wp.encode_response(large, max_line=500)
    ls = wp.encode_response(small, max_line=500)
    errors, done = [], []
    for msg in decoded([*lines[:3], *ls, *lines[3:]]):
        try:
            whole = msg if isinstance(msg, Response) else r.feed(msg)
        except ProtocolError as exc:
            errors.append(exc)
            continue
        if whole is not None:
            done.append(whole)
    assert [(e.code, e.id) for e in errors] == [(Code.RESPONSE_TOO_LARGE, 2)]  # once, for id 2
    assert done == [small] and r.pending() == []
    # the id is usable again afterwards
    assert reassemble(wp.encode_response(big(2, 5), max_line=120), r) == big(2, 5)


def test_out_of_order_piece_fails_that_id_alone() -> None:
    lines = decoded(wp.encode_response(big(5, 50), max_line=300))
    assert len(lines) > 3
    r = Reassembler()
    assert r.feed(lines[0]) is None  # type: ignore[arg-type]
    with pytest.raises(ProtocolError) as err:
        r.feed(lines[2])  # type: ignore[arg-type]
    assert err.value.code == Code.BAD_CHUNK and err.value.id == 5
    assert all(r.feed(c) is None for c in lines[3:])  # type: ignore[arg-type]
    assert r.pending() == []


def test_pieces_that_do_not_join_into_their_response() -> None:
    r = Reassembler()
    with pytest.raises(ProtocolError) as err:
        r.feed(Chunk(id=3, chunk='{"id":4,"status":"success","data":{}}', seq=0, last=True))
    assert err.value.code == Code.BAD_CHUNK and err.value.id == 3


def test_over_the_total_bound_the_worker_answers_response_too_large() -> None:
    (line,) = wp.encode_response(big(9), max_line=500, max_total=5000)
    resp = wp.decode_incoming(line)
    assert isinstance(resp, Response) and resp.id == 9
    assert resp.error is not None and resp.error.code == Code.RESPONSE_TOO_LARGE


def test_an_unencodable_answer_is_still_one_answer() -> None:
    (line,) = wp.encode_response(wp.success({"s": "\ud800"}, id=4))
    resp = wp.decode_incoming(line)
    assert isinstance(resp, Response) and resp.id == 4
    assert resp.error is not None and resp.error.code == Code.INTERNAL_ERROR


def test_line_id_reads_only_a_leading_id() -> None:
    assert wp.line_id(b'{"id":-12,"status":"success"') == -12
    assert wp.line_id(b'{"id":7}') == 7
    assert wp.line_id(b'{"event":"ready","data":{"id":3}}') is None
    assert wp.line_id(b'{"id":null,"chunk":"') is None
    assert wp.line_id(b'{"status":"success","id":7}') is None
