"""The files a benchmark leaves in run_dir/bench, and the result schema (docs/bench.md).

- result.json: schema `magpie-trace/bench/1`, `valid` + `invalid_reasons`, config, versions, one
  entry per load point whose keys are `vllm bench serve --save-result` names (request_throughput,
  mean_ttft_ms, p99_itl_ms, ...), per-node server deltas and GPU telemetry.
- points/<label>.json: one flat vLLM-shaped file per point, for tools that read vLLM results.
- requests.jsonl: one line per request (every status), telemetry.jsonl: every GPU sample.
- sweep.csv: one row per point.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from magpie_trace.bench.arrivals import LoadPoint
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.fsutil import atomic_write_bytes, atomic_write_text

SCHEMA = "magpie-trace/bench/1"
CSV_KEYS = (
    "label", "max_concurrency", "request_rate", "completed", "failed", "incomplete", "duration",
    "request_throughput", "output_throughput", "total_token_throughput", "request_goodput",
    "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
    "p99_tpot_ms", "mean_itl_ms", "median_itl_ms", "p99_itl_ms", "mean_e2el_ms",
    "median_e2el_ms", "p99_e2el_ms", "max_output_tokens_per_s", "max_concurrent_requests",
)


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("magpie-trace", "aiohttp", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def point_header(point: LoadPoint, model: str, endpoint: str, num_prompts: int, burstiness: float) -> dict[str, Any]:
    """The leading keys vLLM writes before the metrics."""
    return {
        "label": point.label,
        "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if endpoint == "chat" else "openai",
        "endpoint_type": "openai-chat" if endpoint == "chat" else "openai",
        "model_id": model,
        "num_prompts": num_prompts,
        "request_rate": "inf" if point.rate is None else point.rate,
        "burstiness": burstiness,
        "max_concurrency": point.concurrency,
    }


def _json(data: Any) -> bytes:
    return orjson.dumps(
        data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    )


def write_outputs(
    out_dir: Path,
    result: dict[str, Any],
    records: list[RequestRecord],
    telemetry: dict[str, list[dict[str, Any]]],
) -> Path:
    """Write every file (atomically); returns the path of result.json, written last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for point in result["points"]:
        flat = {k: v for k, v in point.items() if k not in ("server", "telemetry")}
        atomic_write_bytes(out_dir / "points" / f"{point['label']}.json", _json(flat))
    atomic_write_bytes(
        out_dir / "requests.jsonl",
        b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in records),
    )
    atomic_write_bytes(
        out_dir / "telemetry.jsonl",
        b"".join(
            orjson.dumps({"node": node, **sample}) + b"\n"
            for node, samples in telemetry.items()
            for sample in samples
        ),
    )
    atomic_write_text(out_dir / "sweep.csv", sweep_csv(result["points"]))
    path = out_dir / "result.json"
    atomic_write_bytes(path, _json(result))
    return path


def sweep_csv(points: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_KEYS)
    for point in points:
        row = []
        for key in CSV_KEYS:
            value = point.get(key)
            if isinstance(value, float):
                value = "" if math.isnan(value) else f"{value:.6g}"
            row.append("" if value is None else value)
        writer.writerow(row)
    return buffer.getvalue()


def read_result(path: str | Path) -> dict[str, Any]:
    return orjson.loads(Path(path).read_bytes())
