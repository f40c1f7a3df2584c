"""Server-side counters from each node's Prometheus `/metrics`, as deltas over a load point.

vLLM's API server labels each data-parallel engine `engine="<dp rank>"`; SGLang with
`--enable-metrics-for-all-schedulers` labels `dp_rank`. Deltas are grouped by that label, so under
DP each engine gets its own share; under TP/PP across nodes there is one engine and per-node
request numbers are undefined (the result says so).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# Our name -> the engines' counter names (vLLM first, then SGLang).
COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total"),
    "generation_tokens": ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
    "requests_finished": ("vllm:request_success_total", "sglang:num_requests_total"),
    "preemptions": ("vllm:num_preemptions_total",),
}
# Histograms whose delta mean (sum/count) is reported in ms.
HISTOGRAMS = {
    "ttft": ("vllm:time_to_first_token_seconds", "sglang:time_to_first_token_seconds"),
    "itl": (
        "vllm:inter_token_latency_seconds",
        "vllm:time_per_output_token_seconds",
        "sglang:inter_token_latency_seconds",
    ),
    "e2el": ("vllm:e2e_request_latency_seconds", "sglang:e2e_request_latency_seconds"),
}
GAUGES = {
    "running": ("vllm:num_requests_running", "sglang:num_running_reqs"),
    "waiting": ("vllm:num_requests_waiting", "sglang:num_queue_reqs"),
}
ENGINE_LABELS = ("engine", "dp_rank")

_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(?:\s+\S+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?\s*')

Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One parsed /metrics page: value per (name, sorted labels)."""

    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)


def parse_prometheus(text: str) -> Scrape:
    """Parse the Prometheus text exposition format (0.0.4). Unparseable lines are skipped."""
    scrape = Scrape()
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                scrape.types[parts[2]] = parts[3].strip()
            continue
        match = _LINE.match(line)
        if not match:
            continue
        name, _, label_text, value_text = match.groups()
        try:
            value = float(value_text)
        except ValueError:
            continue
        labels: Labels = ()
        if label_text:
            pairs = [(k, _unescape(v)) for k, v in _LABEL.findall(label_text)]
            labels = tuple(sorted(pairs))
        scrape.samples[(name, labels)] = value
    return scrape


def _unescape(value: str) -> str:
    return value.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")


def _engine_of(labels: Labels) -> str:
    for key, value in labels:
        if key in ENGINE_LABELS:
            return value
    return "0"


def _sums(scrape: Scrape, names: tuple[str, ...]) -> dict[str, float]:
    """Per engine, the sum over every other label of the first name present."""
    for name in names:
        found: dict[str, float] = {}
        for (sample, labels), value in scrape.samples.items():
            if sample == name and not math.isnan(value):
                engine = _engine_of(labels)
                found[engine] = found.get(engine, 0.0) + value
        if found:
            return found
    return {}


def deltas(before: Scrape, after: Scrape) -> dict[str, Any]:
    """Per engine: counter deltas, histogram mean over the interval (ms), gauges at the end."""
    engines: dict[str, dict[str, Any]] = {}

    def put(engine: str, key: str, value: Any) -> None:
        engines.setdefault(engine, {})[key] = value

    for key, names in COUNTERS.items():
        start, end = _sums(before, names), _sums(after, names)
        for engine, value in end.items():
            put(engine, key, value - start.get(engine, 0.0))
    for key, names in HISTOGRAMS.items():
        sums = (_sums(before, tuple(n + "_sum" for n in names)), _sums(after, tuple(n + "_sum" for n in names)))
        counts = (_sums(before, tuple(n + "_count" for n in names)), _sums(after, tuple(n + "_count" for n in names)))
        for engine, total in sums[1].items():
            count = counts[1].get(engine, 0.0) - counts[0].get(engine, 0.0)
            if count > 0:
                put(engine, f"mean_{key}_ms", (total - sums[0].get(engine, 0.0)) / count * 1000)
    for key, names in GAUGES.items():
        for engine, value in _sums(after, names).items():
            put(engine, f"{key}_at_end", value)
    total: dict[str, float] = {}
    for values in engines.values():
        for key in COUNTERS:
            if key in values:
                total[key] = total.get(key, 0.0) + values[key]
    return {"engines": engines, "total": total}
