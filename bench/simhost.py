"""Host the Gateway simulator in its own process, driven by JSON lines on stdin.

Run as `python -m bench.simhost [--accounts A,B]`. Every figure and every baseline of a bench run
talks to this one simulator process, so none of them shares a GIL with it. First line out:
`{"event": "serving", "port": N}`. Commands: `{"id", "call": NAME, "args": [...]}` calls a fault
control of the simulator and replies with CLOCK_MONOTONIC ns taken just before and after (the
start of a detection measurement); `{"id", "snapshot": true}` replies with its observables.
stdin EOF ends it.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


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


def main() -> None:
    from gatewaysim import running_in_thread

    accounts = ("DU1234567",)
    if "--accounts" in sys.argv:
        accounts = tuple(sys.argv[sys.argv.index("--accounts") + 1].split(","))

    def send(msg: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()

    # track_pids=False: the simulator's psutil look-up of each peer's pid is a test observable
    # (no real Gateway does it) and would put CPU noise into every connect being timed.
    with running_in_thread(accounts=accounts, track_pids=False) as sim:
        send({"event": "serving", "port": sim.port})
        for line in sys.stdin:
            req = json.loads(line)
            rid = req.get("id")
            try:
                if req.get("snapshot"):
                    send({"id": rid, "status": "success", "data": {"snapshot": _jsonable(sim.snapshot())}})
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
