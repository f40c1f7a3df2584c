"""When each request is sent: all at once under a concurrency cap, or at a request rate.

The rate schedule is `vllm bench serve`'s: gaps drawn from gamma(shape=burstiness,
scale=1/(rate*burstiness)) (burstiness 1 is Poisson, below 1 burstier, inf evenly spaced), their
running sum then rescaled so the last send time is exactly N/rate (the raw sum is off by 1-2%).
Times are computed up front, so drawing them costs nothing during the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from magpie_trace.config import BenchmarkConfig


@dataclass(frozen=True)
class LoadPoint:
    """One point of a sweep: a concurrency cap and an optional request rate (None: no pacing)."""

    concurrency: int
    rate: float | None = None

    @property
    def label(self) -> str:
        rate = "" if self.rate is None else f"-rate{self.rate:g}"
        return f"c{self.concurrency}{rate}"


def send_times(count: int, rate: float | None, burstiness: float, seed: int) -> np.ndarray:
    """Seconds after the start at which each of `count` requests is due."""
    if rate is None or math.isinf(rate) or count == 0:
        return np.zeros(count)
    if rate <= 0:
        raise ValueError("request rate must be positive")
    if math.isinf(burstiness):
        gaps = np.full(count, 1.0 / rate)
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=count)
    times = np.cumsum(gaps)
    return times * ((count / rate) / times[-1])


def sweep_points(
    bench: BenchmarkConfig,
    concurrency: list[int] | None = None,
    rate: float | None = None,
) -> list[LoadPoint]:
    """The sweep: one point per concurrency value, each paced at the request rate if one is set."""
    rate = rate if rate is not None else bench.request_rate
    return [LoadPoint(c, rate) for c in (concurrency or bench.concurrency)]
