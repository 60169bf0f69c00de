"""Large answers through a real worker: ~9,000 positions (a 1.3 MB response) arrive intact as
chunk lines no longer than the 1 MiB bound, and the worker keeps serving (issue 11, item 2)."""

from __future__ import annotations

from collections import defaultdict

from support.worker_process import WorkerProcess

from gatewaysim.threaded import running_in_thread
from worker.protocol import MAX_LINE_BYTES, PositionsResult, data_as

ACCOUNTS = tuple(f"DU{n:07d}" for n in range(4500))  # the simulator books the same 2 rows in each


def test_nine_thousand_positions_arrive_intact_and_the_worker_keeps_serving() -> None:
    with running_in_thread(accounts=ACCOUNTS) as sim, WorkerProcess(label="test-large") as w:
        w.wait_ready()
        assert w.connect(sim.port, 31, timeout=60.0, wait=70.0).ok
        before = w.chunk_lines
        big = w.submit("positions", timeout=60.0)
        probe = w.submit("probe", window=0.0, timeout=10.0)
        resp = w.wait_response(big, 70.0)
        assert resp.ok, resp
        rows = data_as(resp, PositionsResult).positions
        assert len(rows) == 2 * len(ACCOUNTS)
        by_account: dict[str, list[tuple[object, ...]]] = defaultdict(list)
        for r in rows:
            by_account[r.account].append((r.symbol, r.con_id, r.sec_type, r.currency, r.position, r.avg_cost))
        assert set(by_account) == set(ACCOUNTS)
        first = by_account[ACCOUNTS[0]]
        assert len(first) == 2 and all(book == first for book in by_account.values())
        assert w.chunk_lines - before >= 2  # it did travel in pieces
        assert max(len(line) for line in w.raw_lines) <= MAX_LINE_BYTES + 1  # newline included
        assert w.wait_response(probe, 12.0).ok
        # the same worker goes on serving, big answers and small
        assert w.call("ping", timeout=5.0).ok
        one = w.call("positions", account=ACCOUNTS[7], timeout=60.0, wait=70.0)
        assert one.ok and len(data_as(one, PositionsResult).positions) == 2
        status = w.call("status").data
        assert status is not None and status["connected"] is True and status["requests_failed"] == 0
