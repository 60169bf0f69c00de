"""The order journal: what was asked of the broker, written before it is sent.

One file per Gateway address, port and client id in the state dir (``orders-<address>-<port>-
<client_id>.jsonl``), JSON lines, each record written and fsync'd before the call goes on (but
the ack, see below):

- ``intent``    a place, modify or cancel is about to be sent (op, params, the session it is
                sent in); durable before the send, so a crash right after it leaves a trace;
- ``ack``       the broker acknowledged it (order id, perm id, status). Written at once (the
                kernel has it: a crash of this process loses nothing) but not fsync'd on the
                caller's path: the next fsync'd record or ``sync()`` (fsm.orders calls it off
                the event loop soon after) makes it durable. Should the machine fail before
                that, the request is unresolved at the next open, as if it had failed just
                before the ack came, and reconciliation resolves it from the broker by order_ref;
- ``outcome``   how a request ended otherwise: ``done`` (it took effect: found at the broker
                after a doubt), ``not_done`` (it did not: no trace at the broker, nothing sent),
                ``rejected`` (refused by the broker, with IB's code);
- ``delivered`` an execution id handed to the trader (fills are delivered once, across crashes).

Rebuilt on open: the orders by ref, the requests still unresolved (in flight when the process
died, or in doubt), the refs in use, the delivered execution ids. Records older than RETENTION
whose requests are resolved are dropped by rewriting the file at open.

The file must prove it is ours before it is read: opened with O_NOFOLLOW (a symlink is refused),
a regular file with one link, owned by us, no permissions for group or others; created 0600. A
torn last line (a crash mid-write) is cut off; any other line that is not a record is refused.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from fsm.errors import UnsafeStateDir
from fsm.statedir import file_slug
from worker.orders_protocol import OrderState

__all__ = [
    "RETENTION",
    "Journal",
    "JournalOrder",
    "Op",
    "Outcome",
    "Request",
    "journal_path",
]

RETENTION: Final = timedelta(days=3)
"""Resolved records and delivered execution ids are kept this long (IB reports a day's fills)."""
REUSE_AFTER: Final = timedelta(hours=24)
"""A ref is refused for this long after its order was placed ("refs used today")."""
MAX_RECORD_BYTES: Final = 64 * 1024

Op = Literal["place", "modify", "cancel"]
Outcome = Literal["done", "not_done", "rejected"]

_OPEN_FLAGS = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


# ------------------------------------------------------------------------------- records


class _Record(msgspec.Struct, tag_field="t", forbid_unknown_fields=True, omit_defaults=True):
    pass


class IntentRec(_Record, tag="intent"):
    ref: str
    seq: int
    op: Op
    at: str
    session: str
    params: dict[str, Any]


class AckRec(_Record, tag="ack"):
    ref: str
    seq: int
    state: OrderState


class OutcomeRec(_Record, tag="outcome"):
    ref: str
    seq: int
    outcome: Outcome
    state: OrderState | None = None
    code: int | None = None
    message: str = ""


class DeliveredRec(_Record, tag="delivered"):
    exec_id: str
    at: str


Record = IntentRec | AckRec | OutcomeRec | DeliveredRec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


def journal_path(state_dir: Path, address: str, port: int, client_id: int) -> Path:
    """``<state_dir>/orders-<address>-<port>-<client_id>.jsonl`` (beside the lock and status)."""
    return Path(state_dir) / f"orders-{file_slug(address)}-{port}-{client_id}.jsonl"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


# ------------------------------------------------------------------------------- state


@dataclass
class Request:
    """One place, modify or cancel sent (or about to be) for an order."""

    seq: int
    op: Op
    at: datetime
    session: str
    params: dict[str, Any]
    outcome: Outcome | None = None  # None: unresolved (or acknowledged, see `acked`)
    acked: bool = False
    code: int | None = None
    message: str = ""

    @property
    def resolved(self) -> bool:
        return self.acked or self.outcome is not None


@dataclass
class JournalOrder:
    """What the journal knows of one order_ref: its latest placement and what followed."""

    ref: str
    requests: list[Request] = field(default_factory=list)
    state: OrderState | None = None  # the last state the broker reported (ack or outcome)

    @property
    def place(self) -> Request:
        """The latest placement (an earlier one can only have been proven not placed)."""
        return next(r for r in reversed(self.requests) if r.op == "place")

    @property
    def order_id(self) -> int:
        return self.state.order_id if self.state else 0

    @property
    def perm_id(self) -> int:
        return self.state.perm_id if self.state else 0

    def unresolved(self) -> list[Request]:
        return [r for r in self.requests if not r.resolved]

    def last_record_at(self) -> datetime:
        return max(r.at for r in self.requests)


class Journal:
    """The journal file of one manager and what it says. Not thread-safe: one event loop, but
    `sync()` may run in a worker thread."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._fd_lock = threading.Lock()  # a sync() in a thread never meets a closed descriptor
        self.orders: dict[str, JournalOrder] = {}
        self.delivered: dict[str, datetime] = {}  # exec id -> when delivered
        self._last_seq = 0
        self._written = self._synced = 0  # records written, and how many of them are fsync'd

    # ----------------------------------------------------------------------------- open

    @classmethod
    def open(cls, path: Path, *, now: datetime | None = None) -> Journal:
        """Open (create 0600) and rebuild; old resolved records compacted away.
        UnsafeStateDir if the file is not provably ours or holds something else than records."""
        now = now or _now()
        fd = _open_owned(path)
        try:
            records = list(_read_records(fd, path))
            j = cls._fold(path, fd, records)
            kept = list(j._retained(records, now))
            if len(kept) < len(records):
                new = _rewrite(path, kept)
                os.close(fd)
                fd = new
                j = cls._fold(path, fd, kept)
        except BaseException:
            os.close(fd)
            raise
        return j

    @classmethod
    def _fold(cls, path: Path, fd: int, records: Iterable[Record]) -> Journal:
        j = cls(path, fd)
        for rec in records:
            j._apply(rec)
        return j

    def close(self) -> None:
        """Sync what is not yet durable and close."""
        self.sync()
        with self._fd_lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    @property
    def unsynced(self) -> bool:
        """Records written but not yet fsync'd (acks)."""
        return self._synced < self._written

    def sync(self) -> None:
        """fsync the records written so far (none pending: nothing to do). Safe from a worker
        thread while the loop writes on: those records wait for the next sync."""
        with self._fd_lock:
            upto = self._written
            if self._fd < 0 or self._synced >= upto:
                return
            os.fsync(self._fd)
            self._synced = max(self._synced, upto)

    # ----------------------------------------------------------------------------- reads

    def unresolved(self) -> list[tuple[JournalOrder, Request]]:
        """Requests with no known end: in flight when the process stopped, or in doubt."""
        return [(o, r) for o in self.orders.values() for r in o.unresolved()]

    def in_use(self, ref: str, now: datetime | None = None) -> bool:
        """Would a new order with this ref be a duplicate? Yes while any request of it is
        unresolved, and for REUSE_AFTER after a placement unless that was proven not placed."""
        o = self.orders.get(ref)
        if o is None:
            return False
        if o.unresolved():
            return True
        p = o.place
        return p.outcome != "not_done" and (now or _now()) - p.at < REUSE_AFTER

    # ----------------------------------------------------------------------------- writes

    def intent(self, ref: str, op: Op, params: dict[str, Any], session: str) -> Request:
        """Record a request before it is sent (fsync'd); returns it (its seq names it)."""
        rec = IntentRec(
            ref=ref, seq=self._last_seq + 1, op=op, at=_iso(_now()), session=session, params=params
        )
        self._write(rec)
        req = self._apply(rec)
        assert req is not None
        return req

    def ack(self, ref: str, seq: int, state: OrderState) -> None:
        """Record the broker's acknowledgement; written, not fsync'd (see the module docstring)."""
        rec = AckRec(ref=ref, seq=seq, state=state)
        self._write(rec, durable=False)
        self._apply(rec)

    def outcome(
        self,
        ref: str,
        seq: int,
        outcome: Outcome,
        *,
        state: OrderState | None = None,
        code: int | None = None,
        message: str = "",
    ) -> None:
        rec = OutcomeRec(ref=ref, seq=seq, outcome=outcome, state=state, code=code, message=message)
        self._write(rec)
        self._apply(rec)

    def deliver(self, exec_id: str) -> None:
        """Record an execution as handed to the trader (before it is handed over)."""
        rec = DeliveredRec(exec_id=exec_id, at=_iso(_now()))
        self._write(rec)
        self._apply(rec)

    def observe(self, state: OrderState) -> None:
        """Keep the broker's latest word on a journalled order in memory (not written: the
        broker is asked again after any restart)."""
        o = self.orders.get(state.order_ref)
        if o is not None and (o.perm_id in (0, state.perm_id)):
            o.state = state

    # ----------------------------------------------------------------------------- inner

    def _write(self, rec: Record, *, durable: bool = True) -> None:
        """Append one record; `durable`: fsync'd (with every record before it) before returning."""
        if self._fd < 0:
            raise UnsafeStateDir(f"the order journal {self.path} is closed")
        line = _encoder.encode(rec) + b"\n"
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view) :]
        self._written += 1
        if durable:
            upto = self._written
            os.fsync(self._fd)
            self._synced = max(self._synced, upto)

    def _apply(self, rec: Record) -> Request | None:
        """Fold one record into the state; returns the request it created or ended."""
        if isinstance(rec, DeliveredRec):
            self.delivered[rec.exec_id] = datetime.fromisoformat(rec.at)
            return None
        self._last_seq = max(self._last_seq, rec.seq)
        if isinstance(rec, IntentRec):
            o = self.orders.get(rec.ref)
            if o is None or rec.op == "place":
                o = self.orders[rec.ref] = JournalOrder(rec.ref, list(o.requests) if o else [])
            req = Request(rec.seq, rec.op, datetime.fromisoformat(rec.at), rec.session, rec.params)
            o.requests.append(req)
            return req
        o = self.orders.get(rec.ref)
        req_ = next((r for r in o.requests if r.seq == rec.seq), None) if o else None
        if o is None or req_ is None:
            raise UnsafeStateDir(
                f"the order journal {self.path} has a {type(rec).__name__} for request {rec.seq} of "
                f"{rec.ref!r} without its intent; refusing to use it"
            )
        if isinstance(rec, AckRec):
            req_.acked = True
            o.state = rec.state
        else:
            req_.outcome, req_.code, req_.message = rec.outcome, rec.code, rec.message
            if rec.state is not None:
                o.state = rec.state
        return req_

    def _retained(self, records: Iterable[Record], now: datetime) -> Iterator[Record]:
        """The records worth keeping: everything of an order with a request unresolved or a
        record within RETENTION; delivered ids within RETENTION."""
        horizon = now - RETENTION
        keep = {ref for ref, o in self.orders.items() if o.unresolved() or o.last_record_at() >= horizon}
        for rec in records:
            if isinstance(rec, DeliveredRec):
                if datetime.fromisoformat(rec.at) >= horizon:
                    yield rec
            elif rec.ref in keep:
                yield rec


# ------------------------------------------------------------------------------- the file


def _open_owned(path: Path) -> int:
    try:
        fd = os.open(path, _OPEN_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeStateDir(f"the order journal {path} is a symbolic link; refusing to use it") from None
        raise UnsafeStateDir(f"cannot open the order journal {path}: {exc.strerror}") from None
    try:
        _check_owned(os.fstat(fd), path)
        os.set_blocking(fd, True)
        _fsync_dir(path.parent)  # a new journal's name is durable before anything relies on it
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_owned(st: os.stat_result, path: Path) -> None:
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "is not a regular file"
    elif st.st_uid != os.geteuid():
        why = f"is owned by uid {st.st_uid}, not by this user (uid {os.geteuid()})"
    elif stat.S_IMODE(st.st_mode) & 0o077:
        why = f"is open to group or others (mode {stat.S_IMODE(st.st_mode):o}; it must be 600)"
    elif st.st_nlink != 1:
        why = f"has {st.st_nlink} hard links"
    if why:
        raise UnsafeStateDir(f"the order journal {path} {why}; refusing to use it")


def _read_records(fd: int, path: Path) -> Iterator[Record]:
    """Every record from the start; a torn last line is cut off the file."""
    os.lseek(fd, 0, os.SEEK_SET)
    with os.fdopen(os.dup(fd), "rb") as f:
        offset = 0
        for n, line in enumerate(f, 1):
            if not line.endswith(b"\n"):
                os.ftruncate(fd, offset)  # a crash mid-write: the record never counted
                os.fsync(fd)
                return
            offset += len(line)
            try:
                if len(line) > MAX_RECORD_BYTES:
                    raise msgspec.DecodeError("record too long")
                yield _decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise UnsafeStateDir(
                    f"the order journal {path} line {n} is not a journal record ({exc}); refusing to use "
                    f"it. Move it away to start afresh (orders in doubt must then be checked by hand)"
                ) from None


def _rewrite(path: Path, records: list[Record]) -> int:
    """Replace the journal by `records` (temp file 0600, fsync, rename, fsync the dir); the
    descriptor of the new file."""
    tmp = path.with_name(f".{path.name}.compact")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    new = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        data = b"".join(_encoder.encode(r) + b"\n" for r in records)
        view = memoryview(data)
        while view:
            view = view[os.write(new, view) :]
        os.fsync(new)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        os.close(new)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(new)
    return _open_owned(path)


def _fsync_dir(directory: Path) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
