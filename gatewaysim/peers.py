"""Which local process is at the other end of a loopback socket, and is it still alive.

Used to tell a live process closing its socket (what `disconnect()` looks like) from a process
exit. The owner must be found while the socket is still open: once closed, no fd names it.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Iterable, Iterator

import psutil

_SOCK_DIAG_BY_FAMILY = 20
_NETLINK_SOCK_DIAG = 4
_NLMSG_ERROR = 2
_NOCOOKIE = 0xFFFFFFFF


def _diag_inode(peer: tuple[str, int], server: tuple[str, int]) -> int | None:
    """Inode of the client's socket by an exact sock_diag netlink query (Linux, IPv4).

    Costs microseconds, where reading /proc/net/tcp costs milliseconds of kernel time that
    grow with every socket on the host.
    """
    sockid = struct.pack(">HH", peer[1], server[1]) + socket.inet_aton(peer[0]) + bytes(12)
    sockid += socket.inet_aton(server[0]) + bytes(12) + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE)
    req = struct.pack("=BBBBI", socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
    msg = struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 1, 1, 0) + req
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG) as nl:
            nl.settimeout(1.0)
            nl.send(msg)
            reply = nl.recv(8192)
    except (OSError, AttributeError):
        return None
    if len(reply) < 16 + 72:
        return None
    (msg_type,) = struct.unpack_from("=H", reply, 4)
    if msg_type != _SOCK_DIAG_BY_FAMILY:
        return None
    (inode,) = struct.unpack_from("=I", reply, 16 + 68)
    return inode or None


def _proc_inode(peer: tuple[str, int], server: tuple[str, int]) -> int | None:
    """Inode of the client's socket from /proc/net/tcp (Linux, IPv4); the slow fallback."""
    key = f" {_hex_addr(peer)} {_hex_addr(server)} ".encode()
    try:
        with open("/proc/net/tcp", "rb") as f:
            data = f.read()
    except OSError:
        return None
    at = data.find(key)
    if at < 0:
        return None
    end = data.find(b"\n", at)
    parts = data[at : end if end >= 0 else len(data)].split()
    # local, remote, st, tx:rx, tr:when, retrnsmt, uid, timeout, inode
    try:
        return int(parts[8]) or None
    except (IndexError, ValueError):
        return None


def _hex_addr(addr: tuple[str, int]) -> str:
    (packed,) = struct.unpack("=I", socket.inet_aton(addr[0]))
    return f"{packed:08X}:{addr[1]:04X}"


def _candidates(hints: Iterable[int]) -> Iterator[int]:
    """Hinted pids (recent peers) first, then our own process, then newest pids first."""
    seen: set[int] = set()
    for pid in (*hints, os.getpid()):
        if pid not in seen:
            seen.add(pid)
            yield pid
    for pid in sorted((int(p) for p in os.listdir("/proc") if p.isdigit()), reverse=True):
        if pid not in seen:
            yield pid


def _owner_of_inode(inode: int, hints: Iterable[int] = ()) -> int | None:
    """The process holding an fd on this socket inode (newest fds first: a fresh socket
    usually has the highest number)."""
    target = f"socket:[{inode}]"
    for pid in _candidates(hints):
        base = f"/proc/{pid}/fd/"
        try:
            fds = sorted((int(n) for n in os.listdir(base)), reverse=True)
        except (OSError, ValueError):
            continue
        for fd in fds:
            try:
                if os.readlink(base + str(fd)) == target:
                    return pid
            except OSError:
                continue
    return None


def find_peer_pid(peer: tuple[str, int], server: tuple[str, int], hints: Iterable[int] = ()) -> int | None:
    """Pid owning the client end of a loopback TCP connection, or None if the OS won't say.
    `hints`: pids to try first (processes that connected recently)."""
    if sys.platform.startswith("linux") and ":" not in peer[0]:
        inode = _diag_inode(peer, server) or _proc_inode(peer, server)
        if inode is not None:
            return _owner_of_inode(inode, hints)
    try:
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and tuple(conn.laddr)[:2] == tuple(peer)[:2] and conn.pid:
                return int(conn.pid)
    except (psutil.Error, OSError):
        return None
    return None


def process_alive(pid: int | None) -> bool | None:
    """True if the process runs and is not a zombie; None if we never knew the pid."""
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return None
