"""Token counts for building prompts: a local tokenizer, the server's /tokenize, or words.

Random prompts need an exact number of tokens, which only the model's tokenizer knows (one
token per English word is wrong for most vocabularies). With a local tokenizer
(`benchmark.tokenizer`) the text is fitted locally; without one the server's `/tokenize` and
`/detokenize` (vLLM and SGLang both serve them) do the same; with neither, one word is taken for
one token and the result says the lengths are approximate.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import numpy as np
import orjson

FIT_ATTEMPTS = 8
SERVER_PARALLEL = 32

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


class Tokens(Protocol):
    """Where token counts come from while a workload is built (async: it may be the server)."""

    source: str

    async def encode(self, text: str) -> list[int]: ...

    async def decode(self, ids: list[int]) -> str: ...


class LocalTokens:
    source = "tokenizer"

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    async def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    async def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


class ServerTokens:
    """The server's own tokenizer over HTTP (vLLM and SGLang: POST /tokenize, /detokenize)."""

    source = "server"

    def __init__(self, session: aiohttp.ClientSession, base_url: str, model: str) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._slots = asyncio.Semaphore(SERVER_PARALLEL)

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        async with self._slots, self.session.post(
            self.base_url + path, data=orjson.dumps(body), headers={"Content-Type": "application/json"},
            timeout=aiohttp.ClientTimeout(total=60),
        ) as response:
            text = await response.read()
            if response.status != 200:
                raise ValueError(f"{path}: HTTP {response.status}: {text[:200]!r}")
            return orjson.loads(text)

    async def encode(self, text: str) -> list[int]:
        data = await self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return [int(t) for t in data["tokens"]]

    async def decode(self, ids: list[int]) -> str:
        data = await self._post("/detokenize", {"model": self.model, "tokens": ids})
        return str(data.get("prompt", data.get("text", "")))  # vLLM says prompt, SGLang text

    async def available(self) -> str | None:
        """None when /tokenize and /detokenize answer, else why not."""
        try:
            ids = await self.encode(" the")
            await self.decode(ids)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, KeyError, TypeError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None


class WordSource:
    """Seeded common words: the raw material of synthetic prompts."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def words(self, count: int) -> list[str]:
        return [WORDS[i] for i in self.rng.integers(0, len(WORDS), size=count)]

    def text(self, count: int) -> str:
        return " ".join(self.words(count))


async def fit(tokens: Tokens | None, source: WordSource, length: int) -> tuple[str, int]:
    """A text of `length` tokens and its count (the count may differ if no exact fit was found).

    Encode, cut or extend, decode, re-encode until the count holds (decoding and re-encoding
    is not always the identity at the cut).
    """
    text = source.text(length)
    if tokens is None:
        return text, length
    ids = await tokens.encode(text)
    if len(ids) == length:
        return text, length
    for _ in range(FIT_ATTEMPTS):
        if len(ids) < length:
            ids = ids + await tokens.encode(" " + source.text(length - len(ids)))
        text = await tokens.decode(ids[:length])
        ids = await tokens.encode(text)
        if len(ids) == length:
            break
    return text, len(ids)


async def count_tokens(tokens: Tokens | None, text: str) -> int | None:
    """Tokens in text, None when there is no tokenizer."""
    return None if tokens is None else len(await tokens.encode(text))


def joined(first: str, second: str) -> str:
    """Two fitted texts as one prompt, with a space where neither brings one."""
    if not first or not second or first[-1].isspace() or second[0].isspace():
        return first + second
    return first + " " + second


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
