"""The requests a benchmark sends: synthetic, from files, or replayed from traces. Seeded.

    workload = await build_workload(bench, count, tokens)   # tokens: local, the server's, or None

| dataset | what | module |
|---|---|---|
| random | vLLM's random lengths; shared prefixes (prefix_len, num_prefixes); turns | synthetic |
| sharegpt | first turn, or whole conversations (turns) with reply lengths | files |
| jsonl / custom | {"prompt", "output_tokens"?} a line (vLLM's custom) | files |
| mooncake / burstgpt | timestamped traces, replayed at their times | traces |
"""

from magpie_trace.bench.workload.files import custom_workload, sharegpt_workload
from magpie_trace.bench.workload.model import Conversation, Prompt, Workload
from magpie_trace.bench.workload.synthetic import random_lengths, random_workload
from magpie_trace.bench.workload.tokens import (
    WORDS,
    LocalTokens,
    ServerTokens,
    Tokenizer,
    Tokens,
    load_tokenizer,
)
from magpie_trace.bench.workload.traces import burstgpt_workload, mooncake_workload
from magpie_trace.config import BenchmarkConfig

TRACE_DATASETS = ("mooncake", "burstgpt")


async def build_workload(bench: BenchmarkConfig, count: int, tokens: Tokens | None = None) -> Workload:
    """`count` conversations of the configured dataset, the same for the same seed."""
    notes: list[str] = []
    if bench.dataset == "random":
        conversations = await random_workload(bench, count, tokens)
    elif bench.dataset == "sharegpt":
        conversations = await sharegpt_workload(bench, count, tokens, notes)
    elif bench.dataset in ("jsonl", "custom"):
        conversations = await custom_workload(bench, count, tokens)
    elif bench.dataset == "mooncake":
        conversations = await mooncake_workload(bench, count, tokens)
    else:
        conversations = await burstgpt_workload(bench, count, tokens)
    if tokens is None and bench.dataset in ("random", *TRACE_DATASETS):
        notes.append("no tokenizer and no server /tokenize: prompts assume one token per word, "
                     "so their lengths are approximate (the server's usage counts are reported)")
    return Workload(conversations, notes, tokens.source if tokens is not None else "words")


__all__ = [
    "TRACE_DATASETS",
    "WORDS",
    "Conversation",
    "LocalTokens",
    "Prompt",
    "ServerTokens",
    "Tokenizer",
    "Tokens",
    "Workload",
    "build_workload",
    "load_tokenizer",
    "random_lengths",
]
