"""The head's Prometheus `/metrics`, with vLLM's metric names, labels and TTFT buckets."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

# vLLM's buckets for vllm:time_to_first_token_seconds and vllm:e2e_request_latency_seconds.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
# vLLM's NIXL connector's buckets for vllm:nixl_xfer_time_seconds (recorded by the decode side).
XFER_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 5.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        index = bisect.bisect_left(self.buckets, value)
        if index < len(self.counts):
            self.counts[index] += 1
        self.total += value
        self.count += 1


@dataclass
class Metrics:
    model: str
    running: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    finished: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISH_REASONS, 0))
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    kv_transfer: Histogram | None = None  # a decode server's KV pulls

    def render(self) -> str:
        """Prometheus text format as prometheus_client writes it (counters get `_total`)."""
        model = self.model.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        labels = f'model_name="{model}",engine="0"'
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")

        family("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.")
        lines.append(f"vllm:num_requests_running{{{labels}}} {float(self.running)}")
        family("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.")
        lines.append(f"vllm:num_requests_waiting{{{labels}}} 0.0")
        family("vllm:prompt_tokens", "counter", "Number of prefill tokens processed.")
        lines.append(f"vllm:prompt_tokens_total{{{labels}}} {float(self.prompt_tokens)}")
        family("vllm:generation_tokens", "counter", "Number of generation tokens processed.")
        lines.append(f"vllm:generation_tokens_total{{{labels}}} {float(self.generation_tokens)}")
        family("vllm:prefix_cache_queries", "counter", "Prefix cache queries, in terms of number of queried tokens.")
        lines.append(f"vllm:prefix_cache_queries_total{{{labels}}} {float(self.prefix_cache_queries)}")
        family("vllm:prefix_cache_hits", "counter", "Prefix cache hits, in terms of number of cached tokens.")
        lines.append(f"vllm:prefix_cache_hits_total{{{labels}}} {float(self.prefix_cache_hits)}")
        family("vllm:request_success", "counter", "Count of successfully processed requests.")
        for reason, count in self.finished.items():
            lines.append(
                f'vllm:request_success_total{{{labels},finished_reason="{reason}"}} {float(count)}'
            )
        histograms = [
            ("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
             self.ttft),
            ("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
             self.e2e),
        ]
        if self.kv_transfer is not None:
            histograms.append(("vllm:nixl_xfer_time_seconds",
                               "Histogram of transfer duration for NIXL KV Cache transfers.",
                               self.kv_transfer))
        for name, help_text, histogram in histograms:
            family(name, "histogram", help_text)
            cumulative = 0
            for bound, count in zip(histogram.buckets, histogram.counts):
                cumulative += count
                lines.append(f'{name}_bucket{{{labels},le="{bound}"}} {float(cumulative)}')
            lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {float(histogram.count)}')
            lines.append(f"{name}_count{{{labels}}} {float(histogram.count)}")
            lines.append(f"{name}_sum{{{labels}}} {histogram.total}")
        return "\n".join(lines) + "\n"
