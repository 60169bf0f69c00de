"""Host the Gateway simulator in its own process, driven by JSON lines on stdin.

Run as `python -m bench.simhost [--accounts A,B] [--tick-rate R] [--trading-day] [--record-sends]`.
Every figure and every baseline of a bench run talks to a simulator process, so none of them
shares a GIL with it. First line out: `{"event": "serving", "port": N, "seed": S, "tick_rate": R}`.
Commands: `{"id", "call": NAME, "args": [...]}` calls a fault control of the simulator and replies
with CLOCK_MONOTONIC ns taken just before and after (the start of a detection measurement);
`{"id", "snapshot": true}` replies with its observables; `{"id", "sends": true}` replies with
(and forgets) what the market pushed since the last ask (--record-sends, see SendLog). stdin EOF
ends it.

--trading-day pins the simulator's wall clock to a Wednesday 11:00 New York time, running at
real speed from the start: quotes, trades, bars and resting orders then look the same whatever
the hour or day the bench runs at.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from collections import deque
from typing import Any
from zoneinfo import ZoneInfo

from gatewaysim import GatewaySim, running_in_thread
from gatewaysim.market import Market, Quotes

TRADING_DAY = dt.datetime(2026, 11, 18, 11, 0, tzinfo=ZoneInfo("America/New_York")).timestamp()
SEND_LOG_MAX = 200_000


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if hasattr(obj, "_asdict"):
        return _jsonable(obj._asdict())
    return repr(obj)


class SendLog:
    """What the market pushed, stamped when it pushed it.

    After each run of the market's pump (`Market.counters.pumps` moved), one record per stream
    whose `sent` count moved: `[t_ns, kind, client_id, sent, last_tick, volume]` (`volume`: of the
    quote just sent, for market-data streams; `last_tick`: the newest tick sent). The simulator
    has no hook at its socket writes, so the stamp is taken by wrapping its change callback
    (`Gateway.on_change`, which the pump calls as it returns): after the pump queued its frames,
    just before the session writers flush them, on the simulator's own loop."""

    def __init__(self, sim: GatewaySim) -> None:
        self.sim = sim
        self.records: deque[list[Any]] = deque(maxlen=SEND_LOG_MAX)
        self._pumps = -1
        self._sent: dict[tuple[int, int], int] = {}

    def install(self) -> None:
        market = self.sim.component(Market)
        wake = self.sim.on_change

        def on_change() -> None:
            if market.counters.pumps != self._pumps:
                self._pumps = market.counters.pumps
                self._record(market, time.monotonic_ns())
            wake()

        self.sim.on_change = on_change

    def _record(self, market: Market, t_ns: int) -> None:
        for st in market.streams.values():
            if self._sent.get(st.key) == st.sent:
                continue
            self._sent[st.key] = st.sent
            volume = st.last.volume if isinstance(st, Quotes) and st.last is not None else None
            tick = getattr(st, "last_tick", None)
            self.records.append([t_ns, st.kind, st.session.client_id, st.sent, tick, volume])

    def take(self) -> list[list[Any]]:
        out = list(self.records)
        self.records.clear()
        return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.simhost")
    p.add_argument("--accounts", default="DU1234567")
    p.add_argument("--tick-rate", type=float, default=None)
    p.add_argument("--trading-day", action="store_true")
    p.add_argument("--record-sends", action="store_true")
    args = p.parse_args()
    kwargs: dict[str, Any] = {"accounts": tuple(args.accounts.split(","))}
    if args.tick_rate is not None:
        kwargs["tick_rate"] = args.tick_rate
    if args.trading_day:
        started = time.monotonic()
        kwargs["wall"] = lambda: TRADING_DAY + (time.monotonic() - started)

    def send(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    # track_pids=False: the simulator's psutil look-up of each peer's pid is a test observable
    # (no real Gateway does it) and would put CPU noise into every connect being timed.
    with running_in_thread(track_pids=False, **kwargs) as sim:
        log = SendLog(sim.sim)
        if args.record_sends:
            sim.run(log.install)
        send({"event": "serving", "port": sim.port, "seed": sim.sim.seed, "tick_rate": sim.sim.tick_rate})
        for line in sys.stdin:
            req = json.loads(line)
            rid = req.get("id")
            try:
                if req.get("snapshot"):
                    send({"id": rid, "status": "success", "data": {"snapshot": _jsonable(sim.snapshot())}})
                    continue
                if req.get("sends"):
                    send({"id": rid, "status": "success", "data": {"sends": sim.run(log.take)}})
                    continue
                t0 = time.monotonic_ns()
                result = sim.call(req["call"], *req.get("args", []))
                t1 = time.monotonic_ns()
                send(
                    {
                        "id": rid,
                        "status": "success",
                        "data": {"t0_ns": t0, "t1_ns": t1, "result": _jsonable(result)},
                    }
                )
            except Exception as exc:  # report and keep serving
                send(
                    {
                        "id": rid,
                        "status": "error",
                        "error": {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"},
                    }
                )


if __name__ == "__main__":
    main()
