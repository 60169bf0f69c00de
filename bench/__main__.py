"""`python -m bench [--quick] [--json FILE] [--update-readme]`: what isolation and safety cost.

Run at the root of an ibgw-fsm checkout: bench is a repository tool (never installed) and
measures the fsm, worker and gatewaysim of the checkout it lives in; anywhere else it refuses
(exit 2, one line). Targets are reported, not asserted: a MISS does not change the exit status;
a crash does (exit 1 when a figure group raised: its figures are error rows; 2 on a harness
error, e.g. the simulator did not start).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime as _dt
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import anyio

from fsm.diagram import is_checkout
from fsm.errors import CheckoutError

from . import figures as F
from .harness import NOTES, Context, SimHost, Sizes
from .report import (
    ERROR,
    NA,
    Figure,
    figures_from_json,
    markdown_table,
    print_table,
    update_readme,
    write_json,
)
from .spec import new_figures

REPO = Path(__file__).resolve().parent.parent


def _checkout() -> Path:
    """REPO, once it is an ibgw-fsm checkout and the current directory: `python -m bench` then
    imports this checkout's fsm, worker and gatewaysim, and so do the workers and children it
    starts (`python -m worker`, `python -m bench.mem_child`)."""
    if not is_checkout(REPO):
        raise CheckoutError(f"bench runs from an ibgw-fsm checkout, and {REPO} is not one")
    if Path.cwd().resolve() != REPO:
        raise CheckoutError(f"run `python -m bench` at the root of the checkout, {REPO}")
    return REPO


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


async def run(args: argparse.Namespace) -> tuple[list[Figure], dict[str, Any], int]:
    sizes = Sizes.quick() if args.quick else Sizes.full()
    figs = new_figures()
    errors = 0
    wanted = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory(prefix="ibgw-bench-") as state_dir:
        async with SimHost() as sim, contextlib.AsyncExitStack() as stack:
            # A benchmark must not trip a fault by accident (fast close at shutdown).
            await sim.call("red_on_fast_close", None)
            ctx = Context(sizes=sizes, state_dir=Path(state_dir), sim=sim, backend=args.backend, stack=stack)
            for name, fn, keys in F.GROUPS:
                if wanted and not (wanted & set(keys)) and name not in wanted:
                    for k in keys:
                        figs[k].unmeasured(NA, "not selected (--only)")
                    continue
                t0 = time.monotonic()
                ctx.log(f"bench: {name} ...")
                try:
                    await fn(ctx, {k: figs[k] for k in keys})
                except Exception as exc:
                    errors += 1
                    traceback.print_exc(file=sys.stderr)
                    for k in keys:
                        figs[k].unmeasured(ERROR, f"{type(exc).__name__}: {exc}")
                ctx.log(f"bench: {name} done in {time.monotonic() - t0:.1f} s")
    return list(figs.values()), {"sizes": sizes.__dict__}, errors


def _byte_compile(root: Path) -> None:
    """Compile our packages' bytecode first, as a (non-editable) pip install does.

    ib_async's .pyc files came with its install; ours would otherwise be recompiled from source
    in every spawned worker when PYTHONDONTWRITEBYTECODE is set (~10 ms per spawn), a cost an
    installed deployment does not pay."""
    for pkg in ("fsm", "worker", "gatewaysim", "bench"):
        compileall.compile_dir(root / pkg, quiet=1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="a short pass (< ~60 s)")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    p.add_argument(
        "--update-readme",
        action="store_true",
        help="rewrite the README block between the bench markers with this table",
    )
    p.add_argument("--readme", type=Path, default=None, help=argparse.SUPPRESS)  # tests: a copy
    p.add_argument(
        "--from-json",
        metavar="FILE",
        type=Path,
        help="do not measure: render (and --update-readme) from a saved JSON",
    )
    p.add_argument("--only", metavar="KEYS", help="comma-separated figure keys or group names")
    p.add_argument(
        "--backend",
        default="asyncio",
        choices=["asyncio", "trio"],
        help="anyio backend of the bench process and the trader-side children",
    )
    args = p.parse_args(argv)
    try:
        root = _checkout()
    except CheckoutError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    readme = args.readme or root / "README.md"

    if args.from_json:
        doc = json.loads(args.from_json.read_text())
        figs, meta, errors = figures_from_json(doc), doc["meta"], 0
    else:
        _byte_compile(root)
        started = time.monotonic()
        meta = {
            "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "cores": os.cpu_count(),
            "python": f"Python {platform.python_version()} ({sys.executable})",
            "platform": platform.platform(),
            "backend": args.backend,
            "quick": bool(args.quick),
            "load_before": _load(),
        }
        try:
            import importlib.metadata as md

            meta["ib_async"] = md.version("ib_async")
        except Exception:
            meta["ib_async"] = "?"
        try:
            figs, extra, errors = anyio.run(run, args, backend=args.backend)
        except Exception:
            traceback.print_exc()
            return 2
        meta.update(extra)
        meta["load_after"] = _load()
        meta["duration_s"] = round(time.monotonic() - started, 1)
        meta["notes"] = [
            "every process is the same interpreter; one simulator process serves every figure "
            "and every baseline, but for the trading-surface ones (quote, tick rate, history, "
            "order), which run on simulators of their own with a trading-day clock, each with its "
            "baseline; warm-up rounds are discarded; A/B runs alternate in ABBA order",
            f"load average before/after: {meta['load_before']} / {meta['load_after']} "
            "(other work on the machine shows up here)",
            *NOTES,
            "ib_async's 45 msg/s throttle (Client.MaxRequests) is left at its default "
            "everywhere, in the worker and in every ib_async baseline; nothing sets "
            "MaxRequests=0. A connect sends a handful of messages, under the limit; pings are "
            "paced below it (see ping_rtt)",
            "our packages' bytecode is compiled before the run, as a non-editable pip install "
            "does (ib_async's came with its install)",
            "the simulator runs with track_pids=False (its psutil look-up of each peer's pid is "
            "a test observable no real Gateway has; it would add CPU noise to every connect)",
        ]
    print_table(figs, meta)
    if args.json:
        write_json(args.json, figs, meta)
    if args.update_readme:
        if update_readme(readme, markdown_table(figs, meta)):
            print(f"updated the bench block in {readme}", file=sys.stderr)
        else:
            print(f"{readme}: no such file, or no bench markers in it; left alone", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
