"""Summary statistics and A/B interleaving for the benchmarks.

Figures are compared with baselines measured in the same run, interleaved round by round in
ABBA order, so that slow drift of a noisy machine (other processes, CPU frequency, caches) lands
on both sides instead of on whichever ran second.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import anyio


@dataclass(frozen=True, slots=True)
class Summary:
    """Order statistics of one series of samples (warm-up already discarded)."""

    median: float
    p90: float
    p99: float
    n: int
    min: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return float(sorted_values[lo])
    frac = pos - lo
    return float(sorted_values[lo] * (1 - frac) + sorted_values[hi] * frac)


def summarize(samples: Sequence[float]) -> Summary:
    """Median, p90, p99, n, min, max and mean of a non-empty series."""
    values = sorted(float(v) for v in samples)
    if not values:
        raise ValueError("no samples to summarize")
    return Summary(
        median=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        n=len(values),
        min=values[0],
        max=values[-1],
        mean=sum(values) / len(values),
    )


Sample = float | Sequence[float] | Mapping[str, float | Sequence[float]] | None
Sampler = Callable[[], Awaitable[Sample]]


def ms_since(t0_ns: int) -> float:
    """Milliseconds of CLOCK_MONOTONIC since `t0_ns` (comparable across processes on Linux)."""
    return (time.monotonic_ns() - t0_ns) / 1e6


def abba_order(names: Sequence[str], round_index: int) -> list[str]:
    """Forward order on even rounds, reversed on odd ones (ABBA...), to cancel linear drift."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def _add(out: dict[str, list[float]], name: str, got: float | Sequence[float]) -> None:
    series = out.setdefault(name, [])
    if isinstance(got, (int, float)):
        series.append(float(got))
    else:
        series.extend(float(v) for v in got)


async def interleave(
    samplers: Mapping[str, Sampler],
    *,
    rounds: int,
    warmup: int = 1,
    period: float | None = None,
) -> dict[str, list[float]]:
    """Run every sampler once per round in ABBA order; drop the first `warmup` rounds.

    A sampler returns one sample, a batch of samples (e.g. 50 round trips), a mapping of series
    name -> sample(s) when one run yields several figures, or None for "nothing to record"; a
    result from a warm-up round is discarded whole. Plain results are filed under the sampler's
    name. `period` paces the rounds (a rate limit, e.g. under ib_async's 45 msg/s throttle).
    """
    names = list(samplers)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        t_round = time.monotonic_ns()
        for name in abba_order(names, r):
            got = await samplers[name]()
            if r < warmup or got is None:
                continue
            if isinstance(got, Mapping):
                for series, values in got.items():
                    _add(out, series, values)
            else:
                _add(out, name, got)
        if period is not None:
            left = period - (time.monotonic_ns() - t_round) / 1e9
            if left > 0:
                await anyio.sleep(left)
    return out
