"""`vllm bench serve`'s flags as benchmark config keys, so its command lines work with ours.

    magpie-trace bench --url http://head:8000 --dataset-name random --random-input-len 1024
        --random-output-len 128 --num-prompts 500 --max-concurrency 64 --request-rate inf

A flag given more than once (`--max-concurrency`, `--request-rate`) makes a sweep. Flags override
the config file's `benchmark:` section; without a config file they are the whole workload, and
the concurrency is uncapped unless `--max-concurrency` is given (vLLM's default).
"""

from __future__ import annotations

import json
from typing import Any

from magpie_trace.bench.metrics import LATENCIES
from magpie_trace.errors import ConfigError

# vLLM's --percentile-metrics names; every one that applies is always reported (the queue ones under a cap)
PERCENTILE_METRICS = (*LATENCIES, "client_queue_time", "e2el_including_client_queue")
DATASETS = ("random", "prefix_repetition", "sharegpt", "custom", "jsonl", "mooncake", "burstgpt")
ENDPOINTS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
BACKENDS = {"openai": "completions", "vllm": "completions", "openai-chat": "chat"}

# flag (as click names it) -> benchmark key; the value is taken as given.
DIRECT = {
    "num_prompts": "num_prompts",
    "burstiness": "burstiness",
    "seed": "seed",
    "tokenizer": "tokenizer",
    "label": "label",
    "num_warmups": "warmup_requests",
    "random_range_ratio": "range_ratio",
    "sharegpt_output_len": "sharegpt_output_len",
    "ramp_up_strategy": "ramp_up_strategy",
    "ramp_up_start_rps": "ramp_up_start_rps",
    "ramp_up_end_rps": "ramp_up_end_rps",
    "duration": "duration_s",
    "dataset_path": "dataset_path",
    "turns": "turns",
    "ignore_eos": "ignore_eos",
}


def _set(key: str, value: Any) -> str:
    return f"benchmark.{key}={json.dumps(value)}"


def overrides(options: dict[str, Any], with_config: bool) -> list[str]:
    """`--set`-style items for the given flags (None / empty: not given)."""
    out: list[str] = []
    given = {k: v for k, v in options.items() if v is not None and v != ()}
    for flag, key in DIRECT.items():
        if flag in given:
            out.append(_set(key, given[flag]))
    model, served = given.get("model"), given.get("served_model_name")
    if served or model:
        out.append(_set("model", served or model))
    if served and model and "tokenizer" not in given:
        out.append(_set("tokenizer", model))  # as vLLM: --model names the tokenizer then
    if "backend" in given:
        if given["backend"] not in BACKENDS:
            raise ConfigError(f"--backend {given['backend']}: one of {', '.join(BACKENDS)}")
        out.append(_set("endpoint", BACKENDS[given["backend"]]))
    if "endpoint" in given:
        if given["endpoint"] not in ENDPOINTS:
            raise ConfigError(f"--endpoint {given['endpoint']}: one of {', '.join(ENDPOINTS)}")
        out.append(_set("endpoint", ENDPOINTS[given["endpoint"]]))
    caps = list(given.get("max_concurrency", ()))
    if caps:
        out.append(_set("concurrency", caps))
    elif not with_config:
        out.append("benchmark.concurrency=null")
    rates = list(given.get("request_rate", ()))
    if rates:
        out.append(_set("request_rate", ["inf" if r == float("inf") else r for r in rates]))
    out += _lengths(given)
    out += _dataset(given)
    for metric in str(given.get("percentile_metrics", "")).split(","):
        if metric.strip() and metric.strip() not in PERCENTILE_METRICS:
            raise ConfigError(f"--percentile-metrics {metric.strip()}: one of {', '.join(PERCENTILE_METRICS)}")
    if "metric_percentiles" in given:
        out.append(_set("percentiles", [float(p) for p in str(given["metric_percentiles"]).split(",") if p]))
    goodput = {}
    for item in given.get("goodput", ()):
        key, _, value = item.partition(":")
        try:
            goodput[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--goodput {item!r}: expected KEY:MS, e.g. ttft:500") from None
    if goodput:
        out.append(_set("goodput", goodput))
    if given.get("sglang_result"):
        out.append(_set("sglang_result", True))
    return out


def _lengths(given: dict[str, Any]) -> list[str]:
    out = []
    input_len = given.get("random_input_len", given.get("input_len"))
    output_len = given.get("random_output_len", given.get("custom_output_len", given.get("output_len")))
    if input_len is not None:
        out.append(_set("input_len", input_len))
    if output_len is not None:
        out.append(_set("output_len", output_len))
    return out


def _dataset(given: dict[str, Any]) -> list[str]:
    name = given.get("dataset_name")
    if name is None:
        if "random_prefix_len" in given:
            return [_set("prefix_len", given["random_prefix_len"])]
        return []
    if name not in DATASETS:
        raise ConfigError(f"--dataset-name {name}: one of {', '.join(DATASETS)}")
    if name != "prefix_repetition":
        out = [_set("dataset", name)]
        if "random_prefix_len" in given:
            out.append(_set("prefix_len", given["random_prefix_len"]))
        return out
    out = [_set("dataset", "random"), _set("prefix_len", given.get("prefix_repetition_prefix_len", 256)),
           _set("num_prefixes", given.get("prefix_repetition_num_prefixes", 10)),
           _set("input_len", given.get("prefix_repetition_suffix_len", 256))]
    if "prefix_repetition_output_len" in given:
        out.append(_set("output_len", given["prefix_repetition_output_len"]))
    return out


def base_url(host: str | None, port: int | None) -> str:
    """vLLM's `--host`/`--port` as one URL (its defaults: 127.0.0.1, 8000)."""
    host = host or "127.0.0.1"
    if any(c in host for c in "/?#@ \t") or host.startswith("-"):
        raise ConfigError(f"--host {host!r}: a host name or address")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{port or 8000}"
