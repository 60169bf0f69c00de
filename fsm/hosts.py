"""Host names: the loopback check, and the one resolution a manager makes of its Gateway host.

A manager resolves its host once, at start, and from then on keys its lock on, connects to and
judges peers by the addresses it got: ``localhost`` and ``127.0.0.1`` are the same Gateway, so
they must meet at the same lock, and a forged lock cannot name a look-alike address.
"""

from __future__ import annotations

import ipaddress
import socket

from fsm.errors import UnknownHost

__all__ = ["is_loopback", "normalise_address", "resolve"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback literals (127.0.0.0/8, ::1), judged without DNS."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def normalise_address(address: str) -> str:
    """One spelling per address (``0:0::1`` -> ``::1``, ``::ffff:127.0.0.1`` -> ``127.0.0.1``),
    as psutil reports peers; text that is not an address comes back unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def resolve(host: str, port: int) -> tuple[str, ...]:
    """Every address ``host`` names for a TCP connect to ``port``, in the resolver's order, once
    each. Blocking (DNS): call it from a thread in async code. UnknownHost if none."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError, ValueError) as exc:
        # gaierror for DNS, UnicodeError for a label over 63 characters, ValueError for a NUL
        raise UnknownHost(f"cannot resolve the Gateway host {host[:80]!r}: {exc}") from None
    out = dict.fromkeys(
        normalise_address(str(info[4][0])) for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)
    )
    if not out:
        raise UnknownHost(f"the Gateway host {host[:80]!r} has no IPv4 or IPv6 address")
    return tuple(out)
