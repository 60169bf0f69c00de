"""Summary statistics and A/B interleaving for the benchmarks.

Figures are compared with baselines measured in the same run, interleaved round by round in
ABBA order, so that slow drift of a noisy machine (other processes, CPU frequency, caches) lands
on both sides instead of on whichever ran second.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass


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

    def scaled(self, factor: float) -> "Summary":
        """The same series in another unit (e.g. seconds -> ms)."""
        return Summary(
            median=self.median * factor,
            p90=self.p90 * factor,
            p99=self.p99 * factor,
            n=self.n,
            min=self.min * factor,
            max=self.max * factor,
            mean=self.mean * factor,
        )


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


Sampler = Callable[[], Awaitable[float | Sequence[float] | None]]


def abba_order(names: Sequence[str], round_index: int) -> list[str]:
    """Forward order on even rounds, reversed on odd ones (ABBA...), to cancel linear drift."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


async def interleave(
    samplers: Mapping[str, Sampler], *, rounds: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every sampler once per round in ABBA order; drop the first `warmup` rounds.

    A sampler returns one sample, a batch of samples (e.g. 50 round trips), or None when it
    records its own samples; a batch from a warm-up round is discarded whole.
    """
    names = list(samplers)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        for name in abba_order(names, r):
            got = await samplers[name]()
            if r < warmup or got is None:
                continue
            if isinstance(got, (int, float)):
                out[name].append(float(got))
            else:
                out[name].extend(float(v) for v in got)
    return out
