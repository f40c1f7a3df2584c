"""`magpie-trace bench`: benchmark a (multi-node) server through its one endpoint.

    from magpie_trace.bench import run_benchmark
    result = run_benchmark(config, plan, run_dir.bench, backend=backend, handles=state.handles)

Metric definitions follow `vllm bench serve` (docs/bench.md has the formulas and name mapping).
"""

from magpie_trace.bench.arrivals import LoadPoint, profile_point, send_times, sweep_points
from magpie_trace.bench.results import SCHEMA, attempts, latest_attempt, read_result
from magpie_trace.bench.runner import BenchResult, run_benchmark, run_benchmark_async
from magpie_trace.bench.watchdog import BenchInterrupted, BenchInvalid, RunAborted

__all__ = [
    "SCHEMA",
    "attempts",
    "latest_attempt",
    "profile_point",
    "BenchInterrupted",
    "BenchInvalid",
    "BenchResult",
    "LoadPoint",
    "RunAborted",
    "read_result",
    "run_benchmark",
    "run_benchmark_async",
    "send_times",
    "sweep_points",
]
