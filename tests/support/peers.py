"""Small peers on loopback for the tests: a lazy Gateway, one too old for ib_async, and hostile
non-Gateways, shared by the worker's and the CLI's tests.

Each is a real TCP server in a thread, speaking (or refusing to speak) the TWS wire format through
gatewaysim.wire's encoders. They model what the simulator deliberately does not: a Gateway that
answers its handshake and the time but sits on everything else, one too old for ib_async, and
peers that are not Gateways at all.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from gatewaysim import wire

HELLO_TIME = "20250102 09:30:00 EST"


@dataclass
class Peer:
    """A loopback server running `serve(conn, peer)` for each connection, in its own thread."""

    serve: Callable[[socket.socket, Peer], None]
    port: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    sent: int = 0  # bytes written to clients
    blocked: threading.Event = field(default_factory=threading.Event)  # a send found the client not reading
    mute: threading.Event = field(default_factory=threading.Event)  # set: a lazy Gateway answers nothing more
    accepted: int = 0
    errors: list[BaseException] = field(default_factory=list)

    def send_all(self, conn: socket.socket, data: bytes) -> bool:
        """sendall that notices a client that stopped reading; False once told to stop."""
        view = memoryview(data)
        while view and not self.stop.is_set():
            try:
                n = conn.send(view)
            except TimeoutError:
                self.blocked.set()
                continue
            self.sent += n
            view = view[n:]
        return not self.stop.is_set()


@contextlib.contextmanager
def running(serve: Callable[[socket.socket, Peer], None]) -> Iterator[Peer]:
    peer = Peer(serve)
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.1)
    peer.port = srv.getsockname()[1]
    threads: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        conn.settimeout(0.1)
        with conn:
            try:
                serve(conn, peer)
            except (ConnectionError, OSError) as exc:
                if not peer.stop.is_set():
                    peer.errors.append(exc)

    def accept_loop() -> None:
        while not peer.stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            peer.accepted += 1
            t = threading.Thread(target=handle, args=(conn,), daemon=True)
            threads.append(t)
            t.start()

    acceptor = threading.Thread(target=accept_loop, daemon=True)
    acceptor.start()
    try:
        yield peer
    finally:
        peer.stop.set()
        acceptor.join(5)
        for t in threads:
            t.join(5)
        srv.close()


def recv_exactly(conn: socket.socket, n: int, peer: Peer) -> bytes | None:
    """n bytes, or None at EOF or when the peer is told to stop."""
    buf = bytearray()
    while len(buf) < n:
        if peer.stop.is_set():
            return None
        try:
            chunk = conn.recv(n - len(buf))
        except TimeoutError:
            continue
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(conn: socket.socket, peer: Peer) -> list[str] | None:
    head = recv_exactly(conn, 4, peer)
    if head is None:
        return None
    payload = recv_exactly(conn, int.from_bytes(head, "big"), peer)
    return None if payload is None else wire.decode_fields(payload)


def read_client_hello(conn: socket.socket, peer: Peer) -> bool:
    return recv_exactly(conn, len(wire.HELLO_PREFIX), peer) is not None and recv_frame(conn, peer) is not None


def hold_open(conn: socket.socket, peer: Peer) -> None:
    """Read and drop whatever the client sends until it closes or we are stopped."""
    while not peer.stop.is_set():
        try:
            if not conn.recv(65536):
                return
        except TimeoutError:
            continue


# ---- the peers


def lazy_gateway(conn: socket.socket, peer: Peer) -> None:
    """Completes ib_async's handshake and start-up sync and answers reqCurrentTime; every other
    request is read and never answered (a Gateway busy elsewhere, as far as the client can tell)."""
    serve_lazily(conn, peer, lambda: wire.current_time(int(time.time())))


def broken_after_handshake(conn: socket.socket, peer: Peer) -> None:
    """A lazy Gateway that answers reqCurrentTime with a frame announcing 32 MiB (over IB's 16 MiB)."""
    serve_lazily(conn, peer, lambda: (32 << 20).to_bytes(4, "big") + b"x" * 4096)


def serve_lazily(conn: socket.socket, peer: Peer, current_time: Callable[[], bytes]) -> None:
    if not read_client_hello(conn, peer):
        return
    peer.send_all(conn, wire.server_hello(178, HELLO_TIME))
    answers: dict[int, Callable[[list[str]], bytes]] = {
        wire.START_API: lambda f: wire.next_valid_id(1) + wire.managed_accounts(["DU1"]),
        wire.REQ_POSITIONS: lambda f: wire.position_end(),
        wire.REQ_ACCOUNT_UPDATES: lambda f: wire.account_download_end(f[3]) if f[2] == "1" else b"",
        wire.REQ_ACCOUNT_UPDATES_MULTI: lambda f: wire.account_update_multi_end(int(f[2])),
        wire.REQ_EXECUTIONS: lambda f: wire.execution_end(int(f[2])),
        wire.REQ_CURRENT_TIME: lambda f: current_time(),
    }
    while (fields := recv_frame(conn, peer)) is not None:
        answer = None if peer.mute.is_set() else answers.get(int(fields[0]))
        if answer is not None and not peer.send_all(conn, answer(fields)):
            return


def too_old_gateway(conn: socket.socket, peer: Peer) -> None:
    """A Gateway from before ib_async's minimum server version (157): answers 100, then waits."""
    if read_client_hello(conn, peer):
        peer.send_all(conn, wire.server_hello(100, HELLO_TIME))
        hold_open(conn, peer)


def garbage_streamer(conn: socket.socket, peer: Peer) -> None:
    """Not a Gateway: streams bytes as fast as the client takes them, from the first moment."""
    block = bytes(range(256)) * 256  # 64 KiB; "\x00\x01\x02\x03" announces a 66 051-byte hello
    while peer.send_all(conn, block):
        pass


def zero_streamer(conn: socket.socket, peer: Peer) -> None:
    """Not a Gateway: streams NUL bytes (empty frames, which ib_async would never leave)."""
    block = bytes(65536)
    while peer.send_all(conn, block):
        pass


def hello_then_garbage(conn: socket.socket, peer: Peer) -> None:
    """A proper hello, then a stream whose first frame announces ~4 GiB."""
    if read_client_hello(conn, peer):
        peer.send_all(conn, wire.server_hello(178, HELLO_TIME))
        block = b"\xff" * 65536
        while peer.send_all(conn, block):
            pass
