"""Units of the probe: Liveness's rules, and the currentTime reply diversion on real ib_async objects."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from ib_async import IB

from worker import ibapi
from worker.liveness import Liveness
from worker.protocol import Code, CommandError

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Sends:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def test_recent_bytes_answer_at_once_without_sending() -> None:
    async def main() -> None:
        sends = Sends()
        live = Liveness(sends, backlog=lambda: 7)
        live.arrived(time.monotonic())
        res = await live.probe(window=60.0, timeout=1.0)
        assert res.sent is False and res.waited_ms == 0.0 and res.user_backlog == 7
        assert sends.count == 0

    run(main())


def test_concurrent_probes_share_one_send_and_any_bytes_answer_them() -> None:
    async def main() -> None:
        sends = Sends()
        live = Liveness(sends, backlog=lambda: 0)
        probes = [asyncio.create_task(live.probe(window=0.0, timeout=5.0)) for _ in range(10)]
        await asyncio.sleep(0)  # every probe is now waiting
        assert sends.count == 1  # within 1/PROBE_MESSAGES_PER_S of each other: one message
        live.arrived(1.0)
        results = await asyncio.gather(*probes)
        assert [r.sent for r in results].count(True) == 1
        assert live.take_reply() is True and live.take_reply() is False  # one reply was ours

    run(main())


def test_silence_fails_the_probe_with_gateway_silent() -> None:
    async def main() -> None:
        live = Liveness(Sends(), backlog=lambda: 0)
        with pytest.raises(CommandError) as err:
            await live.probe(window=0.0, timeout=0.05)
        assert err.value.code == Code.GATEWAY_SILENT

    run(main())


def test_a_lost_session_fails_waiting_and_later_probes() -> None:
    async def main() -> None:
        live = Liveness(Sends(), backlog=lambda: 0)
        waiting = asyncio.create_task(live.probe(window=0.0, timeout=5.0))
        await asyncio.sleep(0)
        live.lost(CommandError(Code.SESSION_LOST, "gone"))
        for coro in (waiting, live.probe(window=60.0, timeout=1.0)):
            with pytest.raises(CommandError) as err:
                await coro
            assert err.value.code == Code.SESSION_LOST

    run(main())


def test_our_current_time_replies_never_reach_a_users_request() -> None:
    """Real ib_async Decoder and Wrapper: a reply we are owed is taken; the next one is the user's."""

    async def main() -> None:
        ib = IB()
        owed = [1]

        def take() -> bool:
            if owed[0]:
                owed[0] -= 1
                return True
            return False

        ibapi.divert_current_time_replies(ib, take)
        users = ibapi.start_request(ib, "currentTime")
        decoder: Any = ib.client.decoder
        decoder.interpret(["49", "1", "1700000000"])
        assert not users.done()  # the first reply was ours
        decoder.interpret(["49", "1", "1700000001"])
        assert users.done() and users.result().timestamp() == 1700000001

    run(main())
