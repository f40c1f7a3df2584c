"""Server-side counters from each node's Prometheus `/metrics`, as deltas over a load point.

vLLM's API server labels each data-parallel engine `engine="<dp rank>"`; SGLang with
`--enable-metrics-for-all-schedulers` labels `dp_rank`. Deltas are grouped by that label, so under
DP each engine gets its own share; under TP/PP across nodes there is one engine and per-node
request numbers are undefined (the result says so).
"""

from __future__ import annotations

import asyncio
import math
import re
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from magpie_trace.plan import Plan

# Our name -> the engines' counter names (vLLM first, then SGLang).
COUNTERS = {
    "prompt_tokens": ("vllm:prompt_tokens_total", "sglang:prompt_tokens_total"),
    "generation_tokens": ("vllm:generation_tokens_total", "sglang:generation_tokens_total"),
    "requests_finished": ("vllm:request_success_total", "sglang:num_requests_total"),
    "preemptions": ("vllm:num_preemptions_total",),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total",),
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total",),
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
    "queue": ("vllm:request_queue_time_seconds", "sglang:queue_time_seconds"),
    "prefill": ("vllm:request_prefill_time_seconds",),
    "decode": ("vllm:request_decode_time_seconds",),
    # A decode server's KV pulls from its prefill servers (vLLM's NIXL connector).
    "kv_transfer": ("vllm:nixl_xfer_time_seconds",),
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


def metrics_targets(plan: Plan | None, base_url: str) -> dict[str, str]:
    """node name -> /metrics URL for every node that serves HTTP.

    SGLang started with `--enable-metrics-for-all-schedulers` serves /metrics on non-head nodes
    too (sglang PR #7720), so every node is scraped then; a node without the page gets an error
    entry, not a failed run.
    """
    if plan is None:
        return {"endpoint": base_url.rstrip("/") + "/metrics"}
    server = plan.config.server
    every_node = server.engine == "sglang" and "--enable-metrics-for-all-schedulers" in server.extra_args
    return {node.name: f"{node.api_url}/metrics" for node in plan.nodes
            if node.serves_http or every_node}


def group_totals(plan: Plan, server: dict[str, Any]) -> dict[str, Any]:
    """Per group (prefill, decode, replica): its nodes' counter deltas summed, and each histogram
    mean of its API servers (a group's requests are all counted by its head)."""
    out: dict[str, Any] = {}
    for group in plan.groups:
        names = [node.name for node in plan.nodes if node.index in group.nodes]
        pages = [server[name] for name in names if isinstance(server.get(name), dict)
                 and "error" not in server[name]]
        total: dict[str, float] = {}
        means: dict[str, float] = {}
        for page in pages:
            for key, value in page.get("total", {}).items():
                total[key] = total.get(key, 0.0) + value
            for engine in page.get("engines", {}).values():
                means.update({k: v for k, v in engine.items() if k.startswith("mean_")})
        out[str(group.name)] = {"role": group.role, "nodes": names, "total": total, **means}
    return out


async def fetch_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.text()


async def scrape_all(session: aiohttp.ClientSession, targets: dict[str, str]) -> dict[str, Scrape | str]:
    """node -> parsed page, or the error text when the page could not be read."""

    async def one(url: str) -> Scrape | str:
        try:
            return parse_prometheus(await fetch_text(session, url))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"

    pages = await asyncio.gather(*(one(url) for url in targets.values()))
    return dict(zip(targets, pages))


def server_deltas(before: dict[str, Scrape | str], after: dict[str, Scrape | str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for node, page in after.items():
        start = before.get(node)
        if isinstance(page, str) or isinstance(start, str) or start is None:
            out[node] = {"error": page if isinstance(page, str) else start}
        else:
            out[node] = deltas(start, page)
    return out


SPEC_DECODE = {
    "num_drafts": "vllm:spec_decode_num_drafts_total",
    "draft_tokens": "vllm:spec_decode_num_draft_tokens_total",
    "accepted_tokens": "vllm:spec_decode_num_accepted_tokens_total",
}
SPEC_DECODE_PER_POSITION = "vllm:spec_decode_num_accepted_tokens_per_pos_total"


def _total(scrape: Scrape, name: str) -> float:
    return sum(v for (sample, _), v in scrape.samples.items() if sample == name and not math.isnan(v))


def _per_position(scrape: Scrape) -> dict[int, float]:
    found: dict[int, float] = {}
    for (sample, labels), value in scrape.samples.items():
        position = dict(labels).get("position")
        if sample == SPEC_DECODE_PER_POSITION and position is not None and position.isdigit():
            found[int(position)] = found.get(int(position), 0.0) + value
    return found


def spec_decode(before: Scrape | str | None, after: Scrape | str | None) -> dict[str, Any]:
    """vLLM's spec_decode_* result keys from the head's counters over a point, as `vllm bench
    serve` writes them: only when draft tokens were proposed (MTP / EAGLE / n-gram serving)."""
    if not isinstance(before, Scrape) or not isinstance(after, Scrape):
        return {}
    delta = {key: int(_total(after, name) - _total(before, name)) for key, name in SPEC_DECODE.items()}
    if delta["draft_tokens"] <= 0:
        return {}
    start, end = _per_position(before), _per_position(after)
    drafts = delta["num_drafts"]
    per_position = [(end.get(p, start.get(p, 0.0)) - start.get(p, 0.0)) / drafts for p in sorted(set(start) | set(end))] if drafts > 0 else []
    return {
        "spec_decode_acceptance_rate": delta["accepted_tokens"] / delta["draft_tokens"] * 100,
        "spec_decode_acceptance_length": 1 + delta["accepted_tokens"] / drafts if drafts > 0 else 0.0,
        "spec_decode_num_drafts": drafts,
        "spec_decode_draft_tokens": delta["draft_tokens"],
        "spec_decode_accepted_tokens": delta["accepted_tokens"],
        "spec_decode_per_position_acceptance_rates": per_position,
    }
