"""In-process ib_async baselines, run in a child so the bench parent never imports ib_async.

Run by path: `python bench/ib_child.py`. JSON-lines commands on stdin; every timing is taken
inside this process around the ib_async call alone (or, for streams, stamped with
`time.monotonic_ns()` in ib_async's own update callback), so the pipe to the parent is not part
of the figure:

- `connect` {host, port, client_id, name?, readonly?}: a new `IB().connectAsync(...)`; replies
  {elapsed_ms}. With a `name`, the other commands use it by that name (`conn`).
- `ping_setup` {host, port, client_id}: connect the client named "ping".
- `ping`: `reqCurrentTimeAsync()` on it; replies {elapsed_ms}. ib_async's own throttle
  (45 msg/s) is left ON; the parent paces pings below it.
- `quotes_start` / `quotes_stop` {conn, symbol}: reqMktData; each update with ticks is stamped
  as [t_ns, volume]; stop cancels it and replies {got: [...]}.
- `trades_start` / `trades_stop` {conn, symbol}: reqTickByTickData "Last"; each tick is stamped
  as [t_ns, price, size] (one stamp per batch ib_async read); stop replies {got: [...]}.
- `history` {conn, symbol, duration, bar_size, use_rth}: reqHistoricalDataAsync (formatDate 2,
  as the worker asks); replies {elapsed_ms, bars}.
- `place` {conn, symbol, action, quantity, limit_price, order_ref}: placeOrder of a DAY LMT
  until its orderStatus carries a permId and a status the broker sent; replies {elapsed_ms,
  perm_id}.

Contracts are qualified once per connection and symbol, outside any timing. Every IB stays
referenced until stdin EOF, then the process leaves with `os._exit` so that no `disconnect()`
or `IB.__del__` runs: sessions end by process exit only.
"""

import asyncio
import json
import os
import sys
import time

import ib_async

# Statuses that prove the broker holds the order (worker.orders_protocol.ACKNOWLEDGED).
ACKNOWLEDGED = {
    "PreSubmitted",
    "Submitted",
    "Filled",
    "Cancelled",
    "PendingCancel",
    "ApiCancelled",
    "Inactive",
}


class Baselines:
    def __init__(self) -> None:
        self.conns: dict[str, ib_async.IB] = {}
        self.keep: list[ib_async.IB] = []
        self.contracts: dict[tuple[str, str], ib_async.Contract] = {}
        self.feeds: dict[tuple[str, str, str], tuple[ib_async.Ticker, object, list]] = {}

    async def contract(self, conn: str, symbol: str) -> ib_async.Contract:
        key = (conn, symbol)
        if key not in self.contracts:
            c = ib_async.Stock(symbol, "SMART", "USD")
            await self.conns[conn].qualifyContractsAsync(c)
            self.contracts[key] = c
        return self.contracts[key]

    async def connect(self, p: dict) -> dict:
        ib = ib_async.IB()
        self.keep.append(ib)
        t0 = time.perf_counter_ns()
        await ib.connectAsync(
            p["host"], p["port"], clientId=p["client_id"], timeout=30, readonly=p.get("readonly", True)
        )
        t1 = time.perf_counter_ns()
        if p.get("name"):
            self.conns[p["name"]] = ib
        return {"elapsed_ms": (t1 - t0) / 1e6}

    async def ping(self, p: dict) -> dict:
        ib = self.conns[p.get("conn", "ping")]
        t0 = time.perf_counter_ns()
        await ib.reqCurrentTimeAsync()
        return {"elapsed_ms": (time.perf_counter_ns() - t0) / 1e6}

    async def stream_start(self, kind: str, p: dict) -> dict:
        conn, symbol = p["conn"], p["symbol"]
        ib, c = self.conns[conn], await self.contract(conn, symbol)
        got: list = []
        if kind == "quotes":
            ticker = ib.reqMktData(c, "", False, False)

            def on_update(t: ib_async.Ticker) -> None:
                if t.ticks:
                    got.append([time.monotonic_ns(), t.volume])
        else:
            ticker = ib.reqTickByTickData(c, "Last")

            def on_update(t: ib_async.Ticker) -> None:
                now = time.monotonic_ns()
                got.extend([now, x.price, x.size] for x in t.tickByTicks)

        ticker.updateEvent += on_update
        self.feeds[(kind, conn, symbol)] = (ticker, on_update, got)
        return {}

    async def stream_stop(self, kind: str, p: dict) -> dict:
        conn, symbol = p["conn"], p["symbol"]
        ticker, on_update, got = self.feeds.pop((kind, conn, symbol))
        ticker.updateEvent -= on_update
        c = self.contracts[(conn, symbol)]
        if kind == "quotes":
            self.conns[conn].cancelMktData(c)
        else:
            self.conns[conn].cancelTickByTickData(c, "Last")
        return {"got": got}

    async def history(self, p: dict) -> dict:
        ib, c = self.conns[p["conn"]], await self.contract(p["conn"], p["symbol"])
        t0 = time.perf_counter_ns()
        bars = await ib.reqHistoricalDataAsync(
            c, "", p["duration"], p["bar_size"], "TRADES", p["use_rth"], formatDate=2, timeout=0
        )
        return {"elapsed_ms": (time.perf_counter_ns() - t0) / 1e6, "bars": len(bars)}

    async def place(self, p: dict) -> dict:
        ib, c = self.conns[p["conn"]], await self.contract(p["conn"], p["symbol"])
        order = ib_async.LimitOrder(
            p["action"], p["quantity"], p["limit_price"], orderRef=p["order_ref"], tif="DAY"
        )
        acked = asyncio.Event()

        def on_status(trade: ib_async.Trade) -> None:
            if trade.orderStatus.permId and trade.orderStatus.status in ACKNOWLEDGED:
                acked.set()

        t0 = time.perf_counter_ns()
        trade = ib.placeOrder(c, order)
        trade.statusEvent += on_status
        await asyncio.wait_for(acked.wait(), 30)
        t1 = time.perf_counter_ns()
        return {"elapsed_ms": (t1 - t0) / 1e6, "perm_id": trade.orderStatus.permId}

    async def run(self, cmd: str, p: dict) -> dict:
        if cmd == "connect":
            return await self.connect(p)
        if cmd == "ping_setup":
            return await self.connect({**p, "name": "ping"})
        if cmd == "ping":
            return await self.ping(p)
        if cmd in ("quotes_start", "trades_start"):
            return await self.stream_start(cmd.partition("_")[0], p)
        if cmd in ("quotes_stop", "trades_stop"):
            return await self.stream_stop(cmd.partition("_")[0], p)
        if cmd == "history":
            return await self.history(p)
        if cmd == "place":
            return await self.place(p)
        raise ValueError(f"unknown command {cmd!r}")


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    baselines = Baselines()

    def reply(rid, data=None, error=None):
        msg = {"id": rid, "status": "error" if error else "success"}
        if error:
            msg["error"] = {"code": "internal_error", "message": error}
        else:
            msg["data"] = data or {}
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    while True:
        line = await reader.readline()
        if not line:
            break
        req = json.loads(line)
        rid, cmd, p = req.get("id"), req.get("command"), req.get("params", {})
        try:
            reply(rid, await baselines.run(cmd, p))
        except Exception as exc:  # report, keep serving
            reply(rid, error=f"{type(exc).__name__}: {exc}")
    sys.stdout.flush()
    os._exit(0)


asyncio.run(main())
