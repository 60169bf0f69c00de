"""The worker tests' peers (support.peers) as fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.peers import (
    Peer,
    broken_after_handshake,
    garbage_streamer,
    hello_then_garbage,
    lazy_gateway,
    running,
    too_old_gateway,
    zero_streamer,
)


@pytest.fixture
def lazy_gateway_peer() -> Iterator[Peer]:
    with running(lazy_gateway) as p:
        yield p


@pytest.fixture
def broken_peer() -> Iterator[Peer]:
    with running(broken_after_handshake) as p:
        yield p


@pytest.fixture
def too_old_peer() -> Iterator[Peer]:
    with running(too_old_gateway) as p:
        yield p


@pytest.fixture(
    params=[garbage_streamer, zero_streamer, hello_then_garbage],
    ids=["garbage", "zeros", "hello_then_garbage"],
)
def streaming_peer(request: pytest.FixtureRequest) -> Iterator[Peer]:
    with running(request.param) as p:
        yield p
