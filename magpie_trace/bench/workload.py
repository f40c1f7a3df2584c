"""The prompts a benchmark sends: random lengths, a ShareGPT file, or a JSONL of prompts. Seeded.

Random prompts follow `vllm bench serve --dataset-name random`: input and output lengths uniform on
[L*(1-r), L*(1+r)] and `ignore_eos` so every request generates exactly its output length. Without a
tokenizer a prompt is made of common English words that are one token each in GPT/Llama-style
vocabularies, so its length is close to the asked one; the server's `usage.prompt_tokens` is what
the results report either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import orjson

from magpie_trace.config import BenchmarkConfig
from magpie_trace.errors import ConfigError

# Single-token words (with their leading space) in the common BPE vocabularies.
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their has been if more when will would "
    "who so no out up into do only new some could time these two may then first any my now such "
    "like other how its our over also back after use well way even because good each just those "
    "people make work long very through where much year find great still day world own old life "
    "last down place small every hand found part give under name keep end may high house point"
).split()


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class Prompt:
    """One request's input: `text` for /v1/completions, `messages` for chat (both are kept)."""

    text: str
    prompt_tokens: int
    output_tokens: int

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.text}]


def build_workload(
    bench: BenchmarkConfig, count: int, tokenizer: Tokenizer | None = None
) -> list[Prompt]:
    """`count` prompts for the configured dataset, the same for the same seed."""
    rng = np.random.default_rng(bench.seed)
    if bench.dataset == "random":
        return random_prompts(rng, count, bench.input_len, bench.output_len, bench.range_ratio, tokenizer)
    path = Path(bench.dataset_path or "")
    if bench.dataset == "sharegpt":
        items = read_sharegpt(path, bench.output_len, tokenizer)
    else:
        items = read_jsonl(path, bench.output_len, tokenizer)
    if not items:
        raise ConfigError(f"{path}: no usable prompts in this {bench.dataset} file")
    order = rng.permutation(len(items))
    return [items[order[i % len(items)]] for i in range(count)]


def random_lengths(
    rng: np.random.Generator, count: int, length: int, range_ratio: float
) -> np.ndarray:
    """Uniform integers on [L*(1-r), L*(1+r)], at least 1 (vLLM's definition of range_ratio)."""
    low = max(1, int(length * (1 - range_ratio)))
    high = max(low, int(length * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=count)


def random_prompts(
    rng: np.random.Generator,
    count: int,
    input_len: int,
    output_len: int,
    range_ratio: float,
    tokenizer: Tokenizer | None = None,
) -> list[Prompt]:
    inputs = random_lengths(rng, count, input_len, range_ratio)
    outputs = random_lengths(rng, count, output_len, range_ratio)
    prompts = []
    for n_in, n_out in zip(inputs, outputs):
        words = rng.choice(len(WORDS), size=int(n_in))
        text = " ".join(WORDS[w] for w in words)
        if tokenizer is not None:
            # Re-fit to the exact token count the way vLLM does: encode, cut, decode.
            text = tokenizer.decode(tokenizer.encode(text)[: int(n_in)])
        prompts.append(Prompt(text=text, prompt_tokens=int(n_in), output_tokens=int(n_out)))
    return prompts


def _count(text: str, tokenizer: Tokenizer | None) -> int:
    return len(tokenizer.encode(text)) if tokenizer is not None else len(text.split())


def read_sharegpt(path: Path, output_len: int, tokenizer: Tokenizer | None) -> list[Prompt]:
    """ShareGPT JSON: a list of {"conversations": [{"from", "value"}, ...]}; the first two turns.

    The reply's length becomes the request's output length when a tokenizer can count it (as
    vLLM does); without one every request asks for `benchmark.output_len` tokens.
    """
    data = _read_json(path)
    if not isinstance(data, list):
        raise ConfigError(f"{path}: a ShareGPT file is a JSON list of conversations")
    prompts = []
    for i, item in enumerate(data):
        turns = item.get("conversations") if isinstance(item, dict) else None
        if not isinstance(turns, list) or len(turns) < 2:
            continue
        first, second = turns[0], turns[1]
        if not (isinstance(first, dict) and isinstance(second, dict)):
            raise ConfigError(f"{path}: conversation {i}: turns must be mappings")
        text, reply = str(first.get("value", "")), str(second.get("value", ""))
        if not text.strip():
            continue
        n_out = _count(reply, tokenizer) if tokenizer is not None else output_len
        if n_out < 1:
            continue
        prompts.append(Prompt(text=text, prompt_tokens=_count(text, tokenizer), output_tokens=n_out))
    return prompts


def read_jsonl(path: Path, output_len: int, tokenizer: Tokenizer | None) -> list[Prompt]:
    """One JSON object a line: {"prompt": str, "output_len"?: int} (blank lines skipped)."""
    try:
        lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item: Any = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not valid JSON ({exc})") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
            raise ConfigError(f"{path}:{number}: expected an object with a string \"prompt\"")
        n_out = item.get("output_len", output_len)
        if isinstance(n_out, bool) or not isinstance(n_out, int) or n_out < 1:
            raise ConfigError(f"{path}:{number}: output_len must be a positive integer")
        text = item["prompt"]
        prompts.append(Prompt(text=text, prompt_tokens=_count(text, tokenizer), output_tokens=n_out))
    return prompts


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def load_tokenizer(name: str | None) -> tuple[Tokenizer | None, str | None]:
    """(tokenizer, None), or (None, why not) when none is configured or no library can load it.

    Counts never include special tokens, so a count compares with the server's completion_tokens.
    """
    if not name:
        return None, None
    try:
        from transformers import AutoTokenizer  # type: ignore[import-not-found]
    except ImportError:
        AutoTokenizer = None
    try:
        if AutoTokenizer is not None:
            raw = AutoTokenizer.from_pretrained(name)
            return _Adapter(lambda t: raw(t, add_special_tokens=False).input_ids, raw.decode), None
        from tokenizers import Tokenizer as HfTokenizer  # type: ignore[import-not-found]
    except ImportError:
        return None, f"tokenizer {name!r} not used: neither transformers nor tokenizers is installed"
    except Exception as exc:  # noqa: BLE001 - a load failure only disables the cross-check
        return None, f"tokenizer {name!r} could not be loaded: {exc}"
    try:
        path = Path(name)
        fast = (
            HfTokenizer.from_file(str(path / "tokenizer.json"))
            if path.is_dir()
            else HfTokenizer.from_pretrained(name)
        )
    except Exception as exc:  # noqa: BLE001
        return None, f"tokenizer {name!r} could not be loaded: {exc}"
    return _Adapter(lambda t: fast.encode(t, add_special_tokens=False).ids, fast.decode), None


class _Adapter:
    """A library tokenizer behind the two calls used here."""

    def __init__(self, encode: Any, decode: Any) -> None:
        self._encode, self._decode = encode, decode

    def encode(self, text: str) -> list[int]:
        return list(self._encode(text))

    def decode(self, ids: list[int]) -> str:
        return str(self._decode(ids))
