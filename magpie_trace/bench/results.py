"""The files a benchmark leaves, one attempt folder per invocation, and the result schema.

    <bench root>/attempt-001/   the first `bench` (or `run`) on this run; attempt-002 the next ...
      result.json         schema `magpie-trace/bench/1`: valid + invalid_reasons, config,
                          versions, one summary per load point (vLLM's keys and ours), per-node
                          server deltas and GPU telemetry
      points/<point>.json per point, what `vllm bench serve --save-result --save-detailed` writes
      sglang.jsonl        (benchmark.sglang_result) SGLang bench_serving's line per point
      requests.jsonl      one line per request (every status), appended as each point ends
      telemetry.jsonl     every GPU sample; sweep.csv one row per point; plots/*.png
Nothing is ever overwritten: a new invocation makes the next attempt folder (made exclusively,
so two at once never share one).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
import os
import platform
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

from magpie_trace.bench.arrivals import LoadPoint
from magpie_trace.bench.formats import dumps, sglang_line, vllm_point
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.config import BenchmarkConfig
from magpie_trace.errors import ConfigError
from magpie_trace.fsutil import atomic_write_bytes, atomic_write_text, temp_path_for

SCHEMA = "magpie-trace/bench/1"
ATTEMPT = re.compile(r"attempt-(\d{3,})")
CSV_KEYS = (
    "point", "profiled", "max_concurrency", "request_rate", "completed", "failed", "incomplete",
    "duration", "request_throughput", "output_throughput", "total_token_throughput", "request_goodput",
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


def attempts(bench_root: str | Path) -> list[Path]:
    """Every attempt folder under a bench root, oldest first."""
    root = Path(bench_root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if ATTEMPT.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_attempt(bench_root: str | Path) -> Path | None:
    found = attempts(bench_root)
    return found[-1] if found else None


def new_attempt(bench_root: str | Path) -> Path:
    """Make the next attempt folder (never one that exists: mkdir is the lock)."""
    root = Path(bench_root)
    root.mkdir(parents=True, exist_ok=True)
    existing = attempts(root)
    number = int(existing[-1].name.split("-")[1]) + 1 if existing else 1
    while True:
        path = root / f"attempt-{number:03d}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            number += 1


def point_header(
    point: LoadPoint, bench: BenchmarkConfig, model_id: str, num_prompts: int
) -> dict[str, Any]:
    """The leading keys `vllm bench serve` writes before the metrics, with its meanings."""
    backend = "openai-chat" if bench.endpoint == "chat" else "openai"
    header: dict[str, Any] = {
        "date": dt.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "endpoint_type": backend,
        "backend": backend,
        "label": bench.label,
        "model_id": model_id,
        "tokenizer_id": bench.tokenizer or model_id,
        "num_prompts": num_prompts,
        "request_rate": "inf" if point.rate is None else point.rate,
        "burstiness": bench.burstiness,
        "max_concurrency": point.concurrency,
    }
    if point.ramp is not None:
        header["ramp_up_strategy"] = point.ramp.strategy
        header["ramp_up_start_rps"] = point.ramp.start_rps
        header["ramp_up_end_rps"] = point.ramp.end_rps
    return header


def _json(data: Any) -> bytes:
    return orjson.dumps(
        data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
    )


def write_point(
    out_dir: Path, point: dict[str, Any], records: list[RequestRecord], workload: dict[str, Any], sglang: bool
) -> list[str]:
    """As a point ends: its vLLM file (and SGLang line), its requests appended. Returns the files."""
    name = f"points/{point['point']}.json"
    atomic_write_text(out_dir / name, dumps(vllm_point(point, records)))
    written = [name]
    if sglang:
        with (out_dir / "sglang.jsonl").open("a") as handle:
            handle.write(dumps(sglang_line(point, records, workload)) + "\n")
        written.append("sglang.jsonl")
    with (out_dir / "requests.jsonl").open("ab") as handle:
        handle.write(b"".join(orjson.dumps(r.to_dict()) + b"\n" for r in records))
    return written


def write_outputs(
    out_dir: Path, result: dict[str, Any], telemetry: dict[str, list[dict[str, Any]]]
) -> Path:
    """The run-wide files (atomically); returns the path of result.json, written last."""
    (out_dir / "requests.jsonl").touch()
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


def check_result_filename(filename: str) -> str:
    if not filename or Path(filename).name != filename or filename in (".", ".."):
        raise ConfigError(f"--result-filename {filename!r}: a file name without a folder (the folder is --result-dir)")
    return filename


def result_file_targets(root: str | Path, filename: str, labels: list[str]) -> list[Path]:
    """Where vLLM's `--result-filename NAME` puts each point's vLLM file: root/NAME for one point,
    root/<stem>-<point><suffix> for each of several. Refused (before the run) when NAME is not a
    plain file name or a target exists: vLLM would overwrite it, we never do."""
    target = Path(root) / check_result_filename(filename)
    targets = [target] if len(labels) == 1 else [
        target.with_name(f"{target.stem}-{label}{target.suffix}") for label in labels
    ]
    for path in targets:
        if os.path.lexists(path):
            raise ConfigError(f"--result-filename: {path} exists; nothing is overwritten (give another name)")
    return targets


def export_new(source: Path, target: Path) -> None:
    """A copy of source at target, whole or not at all, never over a file (or link) already there."""
    tmp = temp_path_for(target)
    try:
        tmp.write_bytes(source.read_bytes())
        os.link(tmp, target)  # fails if target exists, unlike a rename
    finally:
        tmp.unlink()


def read_result(path: str | Path) -> dict[str, Any]:
    """A result.json, or the latest attempt's when given a bench root or an attempt folder."""
    target = Path(path)
    if target.is_dir():
        latest = latest_attempt(target)
        target = (latest or target) / "result.json"
    return orjson.loads(target.read_bytes())
