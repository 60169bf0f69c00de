"""The order journal: records survive a reopen, the file proves it is ours, a torn last line is
cut, a damaged one refused, old resolved records compacted, refs in use refused."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fsm.errors import UnsafeStateDir
from fsm.journal import RETENTION, Journal, journal_path
from worker.orders_protocol import OrderState

PLACE = {"symbol": "AAPL", "action": "BUY", "quantity": 10.0, "order_type": "LMT", "limit_price": 100.0}


def state(ref: str, status: str = "Submitted", order_id: int = 5, perm_id: int = 900) -> OrderState:
    return OrderState(
        order_ref=ref, order_id=order_id, perm_id=perm_id, status=status, filled=0.0, remaining=10.0,
        avg_fill_price=0.0, action="BUY", quantity=10.0, order_type="LMT", limit_price=100.0,
        stop_price=None, tif="DAY", con_id=265598, symbol="AAPL", account="DU1", client_id=7,
    )  # fmt: skip


@pytest.fixture
def path(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir(mode=0o700)
    return journal_path(d, "127.0.0.1", 4002, 7)


def test_records_survive_a_reopen_and_the_file_is_0600(path: Path) -> None:
    j = Journal.open(path)
    a = j.intent("a", "place", PLACE, "s1")
    j.ack("a", a.seq, state("a"))
    b = j.intent("b", "place", PLACE, "s1")
    c = j.intent("c", "place", PLACE, "s1")
    j.outcome("c", c.seq, "not_done")
    d = j.intent("d", "place", PLACE, "s1")
    j.outcome("d", d.seq, "rejected", code=201, message="Order rejected")
    m = j.intent("a", "modify", {"quantity": 5.0}, "s1")
    j.deliver("0000e0d5.1")
    j.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.name == "orders-127.0.0.1-4002-7.jsonl"

    again = Journal.open(path)
    assert sorted(again.orders) == ["a", "b", "c", "d"]
    assert [(o.ref, r.seq, r.op) for o, r in again.unresolved()] == [
        ("a", m.seq, "modify"),
        ("b", b.seq, "place"),
    ]
    assert again.orders["a"].state == state("a") and again.orders["a"].perm_id == 900
    assert again.orders["d"].place.code == 201 and again.orders["d"].place.outcome == "rejected"
    assert set(again.delivered) == {"0000e0d5.1"}
    assert again.intent("e", "place", PLACE, "s2").seq > m.seq  # seqs never repeat
    again.close()


def test_refs_in_use(path: Path) -> None:
    j = Journal.open(path)
    later = datetime.now(UTC) + timedelta(hours=25)
    p = j.intent("placed", "place", PLACE, "s1")
    j.ack("placed", p.seq, state("placed"))
    j.intent("doubt", "place", PLACE, "s1")
    n = j.intent("never", "place", PLACE, "s1")
    j.outcome("never", n.seq, "not_done")
    assert j.in_use("placed") and j.in_use("doubt")
    assert not j.in_use("never") and not j.in_use("fresh")  # proven not placed: a retry is safe
    assert not j.in_use("placed", later)  # "today" is over
    assert j.in_use("doubt", later)  # in doubt: never reusable until resolved
    retry = j.intent("never", "place", PLACE, "s2")  # the retry is a new placement of the ref
    assert j.orders["never"].place is not None and j.orders["never"].place.seq == retry.seq
    assert j.in_use("never")
    j.close()


def test_a_torn_last_line_is_cut_and_appending_goes_on(path: Path) -> None:
    j = Journal.open(path)
    j.intent("a", "place", PLACE, "s1")
    j.close()
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"t":"intent","ref":"b","se')  # the process died mid-write
    j = Journal.open(path)
    assert path.read_bytes() == whole and sorted(j.orders) == ["a"]
    j.intent("b", "place", PLACE, "s2")
    j.close()
    assert sorted(Journal.open(path).orders) == ["a", "b"]


@pytest.mark.parametrize(
    "line",
    [b"not json\n", b'{"t":"ack","ref":"zz","seq":99,"state":null}\n', b'{"t":"unknown"}\n', b"[1,2]\n"],
    ids=["garbage", "ack-without-intent", "unknown-kind", "not-an-object"],
)
def test_a_damaged_line_is_refused_with_its_number(path: Path, line: bytes) -> None:
    Journal.open(path).close()
    with open(path, "ab") as f:
        f.write(line)
    with pytest.raises(UnsafeStateDir, match="order journal"):
        Journal.open(path)


def test_a_file_not_provably_ours_is_refused(path: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    path.symlink_to(target)
    with pytest.raises(UnsafeStateDir, match="symbolic link"):
        Journal.open(path)
    path.unlink()

    path.write_bytes(b"")
    os.chmod(path, 0o644)
    with pytest.raises(UnsafeStateDir, match="group or others"):
        Journal.open(path)
    os.chmod(path, 0o600)

    os.link(path, tmp_path / "second-name")
    with pytest.raises(UnsafeStateDir, match="hard links"):
        Journal.open(path)
    path.unlink()

    os.mkfifo(path, 0o600)
    with pytest.raises(UnsafeStateDir, match="not a regular file"):
        Journal.open(path)
    path.unlink()

    path.mkdir()
    with pytest.raises(UnsafeStateDir, match="cannot open"):
        Journal.open(path)


def test_old_resolved_records_are_compacted_unresolved_kept(path: Path) -> None:
    j = Journal.open(path)
    a = j.intent("old-done", "place", PLACE, "s1")
    j.ack("old-done", a.seq, state("old-done"))
    j.intent("old-doubt", "place", PLACE, "s1")
    j.deliver("x-1")
    j.close()
    size = path.stat().st_size

    assert Journal.open(path, now=datetime.now(UTC) + RETENTION / 2).orders.keys() == {
        "old-done",
        "old-doubt",
    }
    later = Journal.open(path, now=datetime.now(UTC) + RETENTION + timedelta(hours=1))
    assert set(later.orders) == {"old-doubt"} and later.delivered == {}
    assert path.stat().st_size < size and stat.S_IMODE(path.stat().st_mode) == 0o600
    later.intent("new", "place", PLACE, "s2")  # the rewritten file is the one appended to
    later.close()
    assert set(Journal.open(path).orders) == {"old-doubt", "new"}


def test_the_intent_is_durable_before_it_returns_the_ack_soon_after(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    j = Journal.open(path)
    synced: list[bytes] = []  # the file's content at each fsync of it
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(path.read_bytes()), real_fsync(fd))[1])

    a = j.intent("a", "place", PLACE, "s1")
    assert len(synced) == 1 and b'"t":"intent","ref":"a"' in synced[0]  # durable before it returned
    assert not j.unsynced and a.seq == 1
    j.ack("a", a.seq, state("a"))  # in the file at once, not fsync'd on the caller's path
    assert j.unsynced and len(synced) == 1 and b'"t":"ack"' in path.read_bytes()
    b = j.intent("b", "place", PLACE, "s1")  # the next intent's fsync makes the ack durable with it
    assert not j.unsynced and len(synced) == 2 and b'"t":"ack"' in synced[1]
    j.ack("b", b.seq, state("b"))
    j.sync()  # what fsm.orders runs in a worker thread soon after
    assert not j.unsynced and len(synced) == 3
    j.sync()  # nothing left: no fsync
    assert len(synced) == 3
    c = j.intent("c", "place", PLACE, "s1")
    j.ack("c", c.seq, state("c"))
    j.close()  # closing syncs what is left
    assert len(synced) == 5 and synced[-1] == path.read_bytes()  # c's ack with it
