"""When each request is sent: at once under a concurrency cap, at a request rate, on a ramp, or
at a trace's own times.

The rate schedule is `vllm bench serve`'s: gaps drawn from gamma(shape=burstiness,
scale=1/(rate*burstiness)) (burstiness 1 is Poisson, below 1 burstier, inf evenly spaced), their
running sum then rescaled so the last send time is exactly N/rate (the raw sum is off by 1-2%).
A ramp raises the rate from start to end over the point's requests, linearly or exponentially
(vLLM's `--ramp-up-strategy`: request i of N is drawn at rate(i/(N-1)), no rescaling).
Times are computed up front, so drawing them costs nothing during the run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from magpie_trace.bench.workload import TRACE_DATASETS
from magpie_trace.config import BenchmarkConfig, Config


@dataclass(frozen=True)
class Ramp:
    strategy: str  # linear | exponential
    start_rps: float
    end_rps: float

    def rates(self, count: int) -> np.ndarray:
        progress = np.arange(count) / max(count - 1, 1)
        if self.strategy == "linear":
            return self.start_rps + (self.end_rps - self.start_rps) * progress
        return self.start_rps * (self.end_rps / self.start_rps) ** progress


@dataclass(frozen=True)
class LoadPoint:
    """One point of a sweep.

    concurrency: the cap on requests in flight (None: no cap). rate: req/s (None: no pacing).
    ramp: a rising rate instead. replay: send at the workload's own times (a trace).
    duration_s: stop sending after this long (the point also ends after num_prompts).
    profiled: the point `run` profiles (its latencies carry the profiler's overhead).
    """

    concurrency: int | None = None
    rate: float | None = None
    ramp: Ramp | None = None
    replay: bool = False
    duration_s: float | None = None
    profiled: bool = False

    @property
    def label(self) -> str:
        parts = [] if self.concurrency is None else [f"c{self.concurrency}"]
        if self.ramp is not None:
            parts.append(f"ramp-{self.ramp.strategy}-{self.ramp.start_rps:g}-{self.ramp.end_rps:g}")
        elif self.replay:
            parts.append("replay")
        elif self.rate is not None:
            parts.append(f"rate{self.rate:g}")
        label = "-".join(parts) or "rate-inf"
        return f"profile-{label}" if self.profiled else label


def send_times(
    count: int, rate: float | None, burstiness: float, seed: int, ramp: Ramp | None = None
) -> np.ndarray:
    """Seconds after the start at which each of `count` requests is due."""
    if count == 0 or (ramp is None and (rate is None or math.isinf(rate))):
        return np.zeros(count)
    rates = ramp.rates(count) if ramp is not None else np.full(count, float(rate))  # type: ignore[arg-type]
    if np.any(rates <= 0):
        raise ValueError("request rate must be positive")
    if math.isinf(burstiness):
        gaps = 1.0 / rates
    else:
        rng = np.random.default_rng(seed)
        gaps = rng.gamma(shape=burstiness, scale=1.0 / (rates * burstiness), size=count)
    times = np.cumsum(gaps)
    if ramp is not None:
        return times
    return times * ((count / rates[0]) / times[-1])


def sweep_points(
    bench: BenchmarkConfig,
    concurrency: list[int] | None = None,
    rates: list[float | None] | None = None,
) -> list[LoadPoint]:
    """Every concurrency cap x every request rate (a ramp, or a trace's own times, instead of
    rates). A rate of inf is no pacing, as vLLM spells it."""
    caps: list[int | None] = list(concurrency or bench.concurrency or [None])
    duration = bench.duration_s
    if bench.ramp_up_strategy is not None:
        assert bench.ramp_up_start_rps is not None and bench.ramp_up_end_rps is not None
        ramp = Ramp(bench.ramp_up_strategy, bench.ramp_up_start_rps, bench.ramp_up_end_rps)
        return [LoadPoint(c, ramp=ramp, duration_s=duration) for c in caps]
    if bench.dataset in TRACE_DATASETS and bench.request_rate is None and rates is None:
        return [LoadPoint(c, replay=True, duration_s=duration) for c in caps]
    paced = [None if r is None or math.isinf(r) else r for r in (rates or bench.rates)]
    return [LoadPoint(c, r, duration_s=duration) for c in caps for r in paced]


def profile_point(config: Config) -> LoadPoint:
    """The load `run` profiles under, before the sweep: `profile.concurrency` (default: the
    sweep's largest cap; num_prompts in flight for an uncapped, unpaced sweep) at the sweep's
    first rate. It lasts until the capture is done; its duration only bounds a capture that
    never ends."""
    bench, profile = config.benchmark, config.profile
    caps = bench.concurrency or [None]
    cap = profile.concurrency or (None if None in caps else max(c for c in caps if c is not None))
    rate = bench.rates[0]
    if cap is None and (rate is None or math.isinf(rate)):
        cap = bench.num_prompts
    bound = profile.start_after_s + profile.duration_s + profile.timeout_s
    return LoadPoint(cap, None if rate is None or math.isinf(rate) else rate, duration_s=bound, profiled=True)
