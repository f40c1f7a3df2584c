"""Workloads and arrival schedules: vLLM's definitions, seeded, bad input named."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from magpie_trace.bench.arrivals import LoadPoint, Ramp, profile_point, send_times, sweep_points
from magpie_trace.bench.workload import build_workload, random_lengths
from magpie_trace.bench.workload.tokens import Tokens
from magpie_trace.config import BenchmarkConfig, Config, ProfileConfig, config_from_dict
from magpie_trace.errors import ConfigError


def build(bench: BenchmarkConfig, count: int, tokens: Tokens | None = None):
    return asyncio.run(build_workload(bench, count, tokens))


def firsts(bench: BenchmarkConfig, count: int):
    return [c.turns[0] for c in build(bench, count).conversations]


class SplitTokens:
    """A tokenizer that is not one token per word: every 3 characters of a word are a token
    (like BPE pieces), so "people" is 2 tokens and "through" 3."""

    source = "tokenizer"

    def __init__(self) -> None:
        self.pieces: dict[str, int] = {}

    async def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            for piece in [" " + word[:3]] + [word[i:i + 3] for i in range(3, len(word), 3)]:
                ids.append(self.pieces.setdefault(piece, len(self.pieces)))
        return ids

    async def decode(self, ids: list[int]) -> str:
        names = {v: k for k, v in self.pieces.items()}
        return "".join(names[i] for i in ids)


def test_random_lengths_cover_vllm_range_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    lengths = random_lengths(rng, 5000, 100, 0.5)
    assert lengths.min() == 50 and lengths.max() == 150


def test_random_workload_is_seeded_and_has_asked_lengths() -> None:
    bench = BenchmarkConfig(input_len=64, output_len=16, range_ratio=0.0, seed=7)
    a, b = firsts(bench, 10), firsts(bench, 10)
    c = firsts(BenchmarkConfig(input_len=64, output_len=16, seed=8), 10)
    assert a == b and a != c
    assert all(len(p.text.split()) == 64 and p.output_tokens == 16 for p in a)
    assert len({p.text for p in a}) == 10  # distinct prompts: no accidental prefix-cache hits
    assert any("approximate" in note for note in build(bench, 1).notes)  # no tokenizer: said so


def test_prompts_fitted_to_a_tokenizer_that_splits_words() -> None:
    """One token per word would be wrong here: the fit must reach the exact token count."""
    tokens = SplitTokens()
    bench = BenchmarkConfig(input_len=33, output_len=4, seed=1)
    workload = build(bench, 6, tokens)
    for conversation in workload.conversations:
        prompt = conversation.turns[0]
        assert prompt.prompt_tokens == 33 == len(asyncio.run(tokens.encode(prompt.text)))
    assert workload.token_source == "tokenizer" and workload.notes == []


def test_shared_prefixes_group_prompts() -> None:
    bench = BenchmarkConfig(input_len=8, output_len=4, prefix_len=24, num_prefixes=3, seed=2)
    prompts = firsts(bench, 12)
    heads = [" ".join(p.text.split()[:24]) for p in prompts]
    assert len(set(heads)) == 3 and sorted(heads.count(h) for h in set(heads)) == [4, 4, 4]
    assert all(p.prompt_tokens == 32 and p.shared_prefix_tokens == 24 for p in prompts)
    assert len({" ".join(p.text.split()[24:]) for p in prompts}) == 12  # the rest is each prompt's own


def test_random_turns_make_conversations() -> None:
    conversations = build(BenchmarkConfig(input_len=5, output_len=3, turns=3), 4).conversations
    assert [len(c.turns) for c in conversations] == [3, 3, 3, 3]
    assert all(t.history == () for c in conversations for t in c.turns)  # history is added live


def sharegpt_file(tmp_path: Path) -> Path:
    path = tmp_path / "sg.json"
    data = [
        {"conversations": [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi, how are you today"},
                           {"from": "human", "value": "fine thanks"}, {"from": "gpt", "value": "good"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
        {"conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "what is 2+2"},
                           {"from": "gpt", "value": "4"}]},
    ]
    path.write_bytes(orjson.dumps(data))
    return path


def test_sharegpt_first_turn_reply_lengths_estimated_and_warned(tmp_path: Path) -> None:
    bench = BenchmarkConfig(dataset="sharegpt", dataset_path=str(sharegpt_file(tmp_path)))
    workload = build(bench, 5)
    prompts = [c.turns[0] for c in workload.conversations]
    assert {p.text for p in prompts} == {"hello there", "what is 2+2"}
    # 1 token per 4 characters of the reply, not benchmark.output_len
    assert {p.text: p.output_tokens for p in prompts} == {"hello there": 5, "what is 2+2": 1}
    assert any("reply lengths" in n and "estimated" in n for n in workload.notes)
    fixed = build(BenchmarkConfig(dataset="sharegpt", dataset_path=bench.dataset_path, sharegpt_output_len=9), 3)
    assert all(c.turns[0].output_tokens == 9 for c in fixed.conversations) and fixed.notes == []


def test_sharegpt_all_turns_in_order(tmp_path: Path) -> None:
    bench = BenchmarkConfig(dataset="sharegpt", dataset_path=str(sharegpt_file(tmp_path)), turns=0)
    conversations = build(bench, 2, SplitTokens()).conversations
    by_first = {c.turns[0].text: c for c in conversations}
    assert [t.text for t in by_first["hello there"].turns] == ["hello there", "fine thanks"]
    assert [t.output_tokens for t in by_first["hello there"].turns] == [6, 2]  # counted (3-char pieces), not estimated
    assert [t.text for t in by_first["what is 2+2"].turns] == ["what is 2+2"]


def test_custom_jsonl_prompts_and_a_bad_line_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b c", "output_tokens": 3}\n\n{"prompt": "d"}\n')
    bench = BenchmarkConfig(dataset="custom", dataset_path=str(path), output_len=5)
    prompts = sorted(firsts(bench, 2), key=lambda p: p.text)
    assert [(p.text, p.output_tokens) for p in prompts] == [("a b c", 3), ("d", 5)]
    path.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl:2: expected an object"):
        build(bench, 2)


def test_mooncake_trace_blocks_share_text_and_times_replayed(tmp_path: Path) -> None:
    path = tmp_path / "mooncake.jsonl"
    rows = [
        {"timestamp": 1000, "input_length": 20, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 1250, "input_length": 18, "output_length": 7, "hash_ids": [1, 2, 4]},
        {"timestamp": 3000, "input_length": 4, "output_length": 2, "hash_ids": [9]},
    ]
    path.write_text("".join(orjson.dumps(r).decode() + "\n" for r in rows))
    bench = BenchmarkConfig(dataset="mooncake", dataset_path=str(path), trace_block_size=8, trace_speedup=2.0)
    conversations = build(bench, 10).conversations
    assert [c.at_s for c in conversations] == [0.0, 0.125, 1.0]
    a, b, c = (conv.turns[0] for conv in conversations)
    assert (a.prompt_tokens, a.output_tokens, b.prompt_tokens, c.prompt_tokens) == (20, 5, 18, 4)
    assert a.text.split()[:16] == b.text.split()[:16] and a.text.split()[16:] != b.text.split()[16:]
    path.write_text('{"timestamp": "soon", "input_length": 3, "output_length": 1}\n')
    with pytest.raises(ConfigError, match=r"mooncake\.jsonl:1: timestamp must be a number"):
        build(bench, 1)


def test_burstgpt_csv_skips_failures_and_keeps_times(tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    path.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                    "5,ChatGPT,10,4,14,Conversation log\n6,GPT-4,7,0,7,Conversation log\n"
                    "7.5,GPT-4,3,2,5,API log\n")
    conversations = build(BenchmarkConfig(dataset="burstgpt", dataset_path=str(path)), 10).conversations
    assert [(c.at_s, c.turns[0].prompt_tokens, c.turns[0].output_tokens) for c in conversations] == [
        (0.0, 10, 4), (2.5, 3, 2)]
    path.write_text("time,tokens\n1,2\n")
    with pytest.raises(ConfigError, match=r"not a BurstGPT CSV \(missing column"):
        build(BenchmarkConfig(dataset="burstgpt", dataset_path=str(path)), 1)


def test_rate_schedule_is_rescaled_to_n_over_rate() -> None:
    times = send_times(1000, 50.0, 1.0, seed=1)
    assert times[-1] == pytest.approx(1000 / 50.0)
    assert np.all(np.diff(times) >= 0)
    gaps = np.diff(times)
    # Poisson: exponential gaps, coefficient of variation ~1; gamma(0.25) is much burstier.
    assert 0.85 < gaps.std() / gaps.mean() < 1.15
    bursty = np.diff(send_times(1000, 50.0, 0.25, seed=1))
    assert bursty.std() / bursty.mean() > 1.6
    even = np.diff(send_times(10, 5.0, math.inf, seed=1))
    assert np.allclose(even, 0.2)


def test_ramps_rise_linearly_and_exponentially() -> None:
    linear = send_times(101, None, math.inf, 0, Ramp("linear", 1.0, 101.0))
    gaps = np.diff(linear)
    assert gaps[0] == pytest.approx(1 / 2.0) and gaps[-1] == pytest.approx(1 / 101.0)
    exponential = np.diff(send_times(3, None, math.inf, 0, Ramp("exponential", 1.0, 100.0)))
    assert exponential == pytest.approx([1 / 10.0, 1 / 100.0])


def test_sweeps_of_caps_and_rates_inf_ramp_replay() -> None:
    assert not send_times(5, None, 1.0, 0).any()
    bench = BenchmarkConfig(concurrency=[1, 4], request_rate=2.5)
    assert sweep_points(bench) == [LoadPoint(1, 2.5), LoadPoint(4, 2.5)]
    assert [p.label for p in sweep_points(bench, [8], None)] == ["c8-rate2.5"]
    swept = sweep_points(BenchmarkConfig(concurrency=None, request_rate=[1.0, 4.0, math.inf], duration_s=3))
    assert [p.label for p in swept] == ["rate1", "rate4", "rate-inf"] and swept[2].rate is None
    assert all(p.duration_s == 3 for p in swept)
    ramp = sweep_points(BenchmarkConfig(concurrency=[8], ramp_up_strategy="linear", ramp_up_start_rps=1,
                                        ramp_up_end_rps=20))
    assert [p.label for p in ramp] == ["c8-ramp-linear-1-20"]
    trace = sweep_points(BenchmarkConfig(dataset="mooncake", dataset_path="t", concurrency=[4]))
    assert trace == [LoadPoint(4, replay=True)] and trace[0].label == "c4-replay"


def test_profile_point_defaults_to_the_largest_cap_before_the_sweep() -> None:
    config = Config(benchmark=BenchmarkConfig(concurrency=[2, 16, 4]), profile=ProfileConfig(enabled=True))
    point = profile_point(config)
    assert point.concurrency == 16 and point.profiled and point.label == "profile-c16"
    config.benchmark.concurrency, config.benchmark.num_prompts = None, 50
    assert profile_point(config).concurrency == 50  # uncapped and unpaced: num_prompts in flight


def test_rates_accept_inf_spelled_as_vllm_does_and_bad_keys_are_named() -> None:
    base = {"scheduler": {"nodes": ["127.0.0.1"]}, "server": {"model": "m"}}
    config = config_from_dict({**base, "benchmark": {"request_rate": [1, "inf"], "concurrency": None}})
    assert config.benchmark.rates == [1.0, math.inf]
    for bad, key in (({"request_rate": 0}, "request_rate"), ({"ramp_up_strategy": "linear"}, "ramp_up_strategy"),
                     ({"prefix_len": 8, "dataset": "sharegpt", "dataset_path": "x"}, "prefix_len"),
                     ({"duration_s": -1}, "duration_s"), ({"turns": 0}, "turns")):
        with pytest.raises(ConfigError, match=rf"benchmark\.{key}:"):
            config_from_dict({**base, "benchmark": bad})
