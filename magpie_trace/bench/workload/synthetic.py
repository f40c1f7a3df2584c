"""Random prompts, as `vllm bench serve --dataset-name random`, with shared prefixes and turns.

Input and output lengths are uniform on [L*(1-r), L*(1+r)] (vLLM's range ratio). With
`prefix_len` P > 0, `num_prefixes` N prefixes of P tokens are made and each conversation's first
prompt starts with one of them (groups of about num_prompts/N, in shuffled order): what
exercises prefix caching, like vLLM's prefix_repetition dataset. With `turns` T > 1 each
conversation has T user turns, each sent after the reply to the one before.
Every text piece has its own seeded word stream, so the prompts do not depend on the order in
which the tokenizer answers.
"""

from __future__ import annotations

import asyncio

import numpy as np

from magpie_trace.bench.workload.model import Conversation, Prompt
from magpie_trace.bench.workload.tokens import Tokens, WordSource, count_tokens, fit, joined
from magpie_trace.config import BenchmarkConfig


def random_lengths(rng: np.random.Generator, count: int, length: int, range_ratio: float) -> np.ndarray:
    """Uniform integers on [L*(1-r), L*(1+r)], at least 1 (vLLM's definition of range_ratio)."""
    low = max(1, int(length * (1 - range_ratio)))
    high = max(low, int(length * (1 + range_ratio)))
    return rng.integers(low, high + 1, size=count)


def _source(seed: int, *key: int) -> WordSource:
    return WordSource(np.random.default_rng([seed, *key]))


async def random_workload(bench: BenchmarkConfig, count: int, tokens: Tokens | None) -> list[Conversation]:
    rng = np.random.default_rng(bench.seed)
    turns = bench.turns
    inputs = random_lengths(rng, count * turns, bench.input_len, bench.range_ratio).reshape(count, turns)
    outputs = random_lengths(rng, count * turns, bench.output_len, bench.range_ratio).reshape(count, turns)
    groups = rng.permutation(np.arange(count) % bench.num_prefixes)
    prefixes: list[tuple[str, int]] = []
    if bench.prefix_len:
        prefixes = list(await asyncio.gather(*(
            fit(tokens, _source(bench.seed, 1, g), bench.prefix_len) for g in range(bench.num_prefixes)
        )))

    async def conversation(i: int) -> Conversation:
        prompts = []
        for t in range(turns):
            text, length = await fit(tokens, _source(bench.seed, 2, i, t), int(inputs[i, t]))
            shared = 0
            if t == 0 and prefixes:
                prefix, shared = prefixes[groups[i]]
                text = joined(prefix, text)
                counted = await count_tokens(tokens, text)
                length = counted if counted is not None else shared + length
            prompts.append(Prompt(text, length, int(outputs[i, t]), shared_prefix_tokens=shared))
        return Conversation(tuple(prompts))

    return list(await asyncio.gather(*(conversation(i) for i in range(count))))
