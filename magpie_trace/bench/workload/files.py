"""Prompts from files: ShareGPT (one turn or whole conversations) and custom JSONL.

ShareGPT's reply lengths become the requests' output lengths, counted with the tokenizer (local
or the server's); with neither they are estimated (one token per 4 characters) and the result
says so, instead of every request silently asking for `output_len`.
`sharegpt_output_len` fixes every output length instead, as vLLM's `--sharegpt-output-len`.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from magpie_trace.bench.workload.model import Conversation, Prompt
from magpie_trace.bench.workload.tokens import Tokens, count_tokens
from magpie_trace.config import BenchmarkConfig
from magpie_trace.errors import ConfigError

CHARS_PER_TOKEN = 4
USER_ROLES = ("human", "user")
REPLY_ROLES = ("gpt", "assistant", "chatgpt", "bard", "bing")


def estimate(text: str) -> int:
    return max(1, round(len(text) / CHARS_PER_TOKEN))


async def tokens_in(tokens: Tokens | None, text: str) -> int:
    counted = await count_tokens(tokens, text)
    return counted if counted is not None else estimate(text)


def cycled(items: list[Conversation], count: int, rng: np.random.Generator, path: Path, kind: str) -> list[Conversation]:
    if not items:
        raise ConfigError(f"{path}: no usable prompts in this {kind} file")
    order = rng.permutation(len(items))
    return [items[order[i % len(items)]] for i in range(count)]


def _turn_pairs(conversation: Any, index: int, path: Path) -> list[tuple[str, str]]:
    """(user text, reply text) pairs of one ShareGPT conversation, in order."""
    turns = conversation.get("conversations") if isinstance(conversation, dict) else None
    if not isinstance(turns, list):
        return []
    pairs: list[tuple[str, str]] = []
    pending: str | None = None
    for turn in turns:
        if not isinstance(turn, dict):
            raise ConfigError(f"{path}: conversation {index}: turns must be mappings")
        role, text = str(turn.get("from", "")).lower(), str(turn.get("value", ""))
        if role in USER_ROLES:
            pending = text if text.strip() else None
        elif role in REPLY_ROLES and pending is not None:
            pairs.append((pending, text))
            pending = None
    return pairs


async def sharegpt_workload(
    bench: BenchmarkConfig, count: int, tokens: Tokens | None, notes: list[str]
) -> list[Conversation]:
    """`turns` user turns of each conversation (0: all), each with its reply's length."""
    path = Path(bench.dataset_path or "")
    data = read_json(path)
    if not isinstance(data, list):
        raise ConfigError(f"{path}: a ShareGPT file is a JSON list of conversations")
    rng = np.random.default_rng(bench.seed)
    chosen: list[list[tuple[str, str]]] = []
    for index in rng.permutation(len(data)):
        pairs = _turn_pairs(data[index], int(index), path)
        if bench.turns:
            pairs = pairs[: bench.turns]
        if pairs:
            chosen.append(pairs)
        if len(chosen) == count:
            break
    if tokens is None and bench.sharegpt_output_len is None:
        notes.append(
            "sharegpt: no tokenizer (benchmark.tokenizer) and no server /tokenize: reply lengths "
            f"(the requests' output lengths) are estimated at 1 token per {CHARS_PER_TOKEN} characters"
        )

    async def conversation(pairs: list[tuple[str, str]]) -> Conversation:
        prompts = []
        for text, reply in pairs:
            out = bench.sharegpt_output_len or await tokens_in(tokens, reply)
            prompts.append(Prompt(text, await tokens_in(tokens, text), max(1, out)))
        return Conversation(tuple(prompts))

    items = list(await asyncio.gather(*(conversation(pairs) for pairs in chosen)))
    return cycled(items, count, rng, path, "sharegpt")


async def custom_workload(bench: BenchmarkConfig, count: int, tokens: Tokens | None) -> list[Conversation]:
    """One JSON object a line: {"prompt": str, "output_tokens" or "output_len"?: int} (vLLM's custom)."""
    path = Path(bench.dataset_path or "")
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    rows: list[tuple[str, int]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ConfigError(f"{path}:{number}: expected an object with a string \"prompt\"")
        out = item.get("output_tokens", item.get("output_len", bench.output_len))
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise ConfigError(f"{path}:{number}: output_tokens must be a positive integer")
        rows.append((item["prompt"], out))
    rng = np.random.default_rng(bench.seed)
    order = rng.permutation(len(rows))[:count] if rows else []

    async def conversation(text: str, out: int) -> Conversation:
        return Conversation((Prompt(text, await tokens_in(tokens, text), out),))

    items = list(await asyncio.gather(*(conversation(*rows[i]) for i in order)))
    return cycled(items, count, rng, path, bench.dataset)


def read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
