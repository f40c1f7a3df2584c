"""Per load point, the files other tools write, key for key, so their readers read ours.

- `vllm_point`: what `vllm bench serve --save-result --save-detailed` (vLLM 0.32,
  `vllm/benchmarks/serve.py`) writes: its header, its metrics, and its per-request lists in its
  units (seconds in the lists, ms in the `*_ms` aggregates; `request_goodput` null without SLOs;
  `label` is the benchmark's label, null by default). Our own keys (`point`, `incomplete`,
  `send_lag`, per-node server deltas, ...) come after, never in place of one of vLLM's.
- `sglang_line`: one line of SGLang's `bench_serving --output-file` JSONL (sglang 0.5,
  `sglang/benchmark/serving.py`), with its names (e2e_latency, total_throughput, concurrency =
  sum of E2E latencies / duration) and its fixed p90/p95/p99.
Both are written with the standard json module, which spells an infinite rate or burstiness
`Infinity` as vLLM and SGLang do (orjson would write null).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from magpie_trace.bench.metrics import RequestRecord, distribution

# After this key of vLLM's, its per-request lists follow.
LISTS_AFTER = "total_token_throughput"
SGLANG_PERCENTILES = (90, 95, 99)


def per_request_lists(records: list[RequestRecord]) -> dict[str, list[Any]]:
    """vLLM's --save-detailed lists: one entry per request, seconds, 0 / "" for a failed one."""
    def seconds(ms: float | None) -> float:
        return 0.0 if ms is None else ms / 1000

    ok = [r.status == "ok" for r in records]
    return {
        "input_lens": [r.input_tokens for r in records],
        "output_lens": [r.output_tokens if good else 0 for r, good in zip(records, ok)],
        "ttfts": [seconds(r.ttft_ms()) for r in records],
        "itls": [[gap / 1000 for gap in r.itls_ms()] for r in records],
        "latencies": [seconds(r.e2el_ms()) if good else 0.0 for r, good in zip(records, ok)],
        "start_times": [(r.start_ns or 0) / 1e9 for r in records],
        "queue_times": [seconds(r.client_queue_ms()) for r in records],
        "generated_texts": [r.text for r in records],
        "errors": ["" if good else (r.error or r.status) for r, good in zip(records, ok)],
    }


def vllm_point(point: dict[str, Any], records: list[RequestRecord]) -> dict[str, Any]:
    """The point's summary with vLLM's per-request lists in vLLM's place (no server/telemetry)."""
    lists = per_request_lists(records)
    out: dict[str, Any] = {}
    for key, value in point.items():
        if key in ("server", "telemetry"):
            continue
        out[key] = value
        if key == LISTS_AFTER:
            out.update(lists)
    return out


def dumps(data: Any) -> str:
    """JSON as vLLM's and SGLang's json.dump writes it (Infinity, NaN allowed)."""
    return json.dumps(data, default=_plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def sglang_line(point: dict[str, Any], records: list[RequestRecord], workload: dict[str, Any]) -> dict[str, Any]:
    """SGLang bench_serving's result line for one point (its `--output-file` JSONL)."""
    done = [r for r in records if r.status == "ok"]
    duration = point["duration"] or math.nan
    e2els = [r.e2el_ms() or 0.0 for r in done]
    retokenized = [r.tokenizer_tokens for r in done]
    rate = point["request_rate"]
    line: dict[str, Any] = {
        "tag": point.get("label"),
        "backend": "sglang-oai-chat" if point["endpoint_type"] == "openai-chat" else "sglang-oai",
        "dataset_name": workload["dataset"],
        "request_rate": "trace" if point.get("schedule") == "replay" else (math.inf if rate == "inf" else rate),
        "max_concurrency": point["max_concurrency"],
        "sharegpt_output_len": workload.get("sharegpt_output_len"),
        "random_input_len": workload["input_len"],
        "random_output_len": workload["output_len"],
        "random_range_ratio": workload["range_ratio"],
        "server_info": None,
        "duration": point["duration"],
        "completed": point["completed"],
        "total_input_tokens": point["total_input_tokens"],
        "total_input_text_tokens": point["total_input_tokens"],
        "total_input_vision_tokens": 0,
        "total_output_tokens": point["total_output_tokens"],
        "total_output_tokens_retokenized": (
            sum(retokenized) if done and all(t is not None for t in retokenized) else point["total_output_tokens"]
        ),
        "request_throughput": point["request_throughput"],
        "input_throughput": point["input_throughput"],
        "output_throughput": point["output_throughput"],
        "total_throughput": point["total_token_throughput"],
    }
    for name, values in (
        ("e2e_latency", e2els),
        ("ttft", [v for v in (r.ttft_ms() for r in done) if v is not None]),
        ("tpot", [v for v in (r.tpot_ms() for r in done) if v is not None]),
        ("itl", [v for r in done for v in r.itls_ms()]),
    ):
        line.update(distribution(values, list(SGLANG_PERCENTILES), name, empty=None))
    line["concurrency"] = sum(e2els) / 1000 / duration if done else 0.0
    line["accept_length"] = None
    line["max_output_tokens_per_s"] = point["max_output_tokens_per_s"]
    line["max_concurrent_requests"] = point["max_concurrent_requests"]
    return line
