"""Timestamped request logs replayed at their own times: Mooncake traces and BurstGPT's CSV.

- Mooncake (JSONL, as in FAST'25 Mooncake and SGLang/AIPerf's `mooncake` dataset): one request a
  line, `{"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}`; each hash id
  is a block of `trace_block_size` tokens (512 in Mooncake's traces), so equal ids are equal
  text and the trace's prefix sharing reaches the server.
- BurstGPT (CSV with header `Timestamp,Model,Request tokens,Response tokens,Total tokens,Log
  Type`, seconds): rows with no response (failures) are skipped, as vLLM's loader does.
The first `num_prompts` requests are taken; send times are relative to the first, divided by
`trace_speedup`.
"""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from magpie_trace.bench.workload.model import Conversation, Prompt
from magpie_trace.bench.workload.tokens import Tokens, WordSource, fit, joined
from magpie_trace.config import BenchmarkConfig
from magpie_trace.errors import ConfigError

BURSTGPT_COLUMNS = ("Timestamp", "Request tokens", "Response tokens")


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < 0:
        raise ConfigError(f"{where}: expected a non-negative integer, got {value!r}")
    return int(value)


def read_mooncake(path: Path, limit: int) -> list[tuple[float, int, int, list[int]]]:
    """(timestamp s, input tokens, output tokens, hash ids) of the first `limit` lines."""
    rows = []
    for number, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(item, dict) or "timestamp" not in item or "input_length" not in item:
            raise ConfigError(f"{path}:{number}: expected a Mooncake record with timestamp, input_length, output_length")
        where = f"{path}:{number}"
        stamp = item["timestamp"]
        if isinstance(stamp, bool) or not isinstance(stamp, (int, float)):
            raise ConfigError(f"{where}: timestamp must be a number (ms)")
        hashes = item.get("hash_ids") or []
        if not isinstance(hashes, list) or not all(type(h) is int for h in hashes):
            raise ConfigError(f"{where}: hash_ids must be a list of integers")
        rows.append((stamp / 1000.0, max(1, _positive_int(item["input_length"], where)),
                     max(1, _positive_int(item.get("output_length"), where)), hashes))
        if len(rows) == limit:
            break
    return rows


def read_burstgpt(path: Path, limit: int) -> list[tuple[float, int, int]]:
    """(timestamp s, request tokens, response tokens) of the first `limit` usable rows."""
    reader = csv.DictReader(io.StringIO(_read(path).decode("utf-8", errors="replace")))
    missing = [c for c in BURSTGPT_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise ConfigError(f"{path}: not a BurstGPT CSV (missing column(s) {', '.join(missing)})")
    rows = []
    for number, row in enumerate(reader, 2):
        try:
            stamp = float(row["Timestamp"])
            request, response = int(float(row["Request tokens"])), int(float(row["Response tokens"]))
        except (TypeError, ValueError):
            raise ConfigError(f"{path}:{number}: Timestamp and token counts must be numbers") from None
        if request > 0 and response > 0:
            rows.append((stamp, request, response))
        if len(rows) == limit:
            break
    return rows


async def mooncake_workload(bench: BenchmarkConfig, count: int, tokens: Tokens | None) -> list[Conversation]:
    path = Path(bench.dataset_path or "")
    rows = read_mooncake(path, count)
    block = bench.trace_block_size
    blocks: dict[tuple[int, int], asyncio.Task[tuple[str, int]]] = {}

    def block_text(hash_id: int, size: int) -> asyncio.Task[tuple[str, int]]:
        key = (hash_id, size)
        if key not in blocks:  # one fit per distinct block, shared by every request that has it
            source = WordSource(np.random.default_rng([bench.seed, 3, hash_id & 0xFFFFFFFF, size]))
            blocks[key] = asyncio.ensure_future(fit(tokens, source, size))
        return blocks[key]

    async def request(index: int, input_len: int, output_len: int, hashes: list[int]) -> Prompt:
        parts, left = [], input_len
        for hash_id in hashes or [-(index + 1)]:
            size = min(block, left)
            parts.append(block_text(hash_id, size))
            left -= size
            if left <= 0:
                break
        if left > 0:  # more tokens than the hash ids cover: a unique tail
            source = WordSource(np.random.default_rng([bench.seed, 4, index]))
            parts.append(asyncio.ensure_future(fit(tokens, source, left)))
        fitted = [await part for part in parts]
        text = ""
        for piece, _ in fitted:
            text = joined(text, piece)
        return Prompt(text, sum(n for _, n in fitted), output_len)

    return await _timed(path, bench, [r[0] for r in rows], [request(i, *r[1:]) for i, r in enumerate(rows)])


async def burstgpt_workload(bench: BenchmarkConfig, count: int, tokens: Tokens | None) -> list[Conversation]:
    path = Path(bench.dataset_path or "")
    rows = read_burstgpt(path, count)

    async def request(index: int, input_len: int, output_len: int) -> Prompt:
        source = WordSource(np.random.default_rng([bench.seed, 5, index]))
        text, length = await fit(tokens, source, input_len)
        return Prompt(text, length, output_len)

    return await _timed(path, bench, [r[0] for r in rows], [request(i, *r[1:]) for i, r in enumerate(rows)])


async def _timed(path: Path, bench: BenchmarkConfig, stamps: list[float], requests: list[Any]) -> list[Conversation]:
    if not requests:
        raise ConfigError(f"{path}: no usable requests in this {bench.dataset} trace")
    prompts = await asyncio.gather(*requests)
    first = min(stamps)
    order = sorted(range(len(stamps)), key=lambda i: stamps[i])
    return [Conversation((prompts[i],), at_s=(stamps[i] - first) / bench.trace_speedup) for i in order]
