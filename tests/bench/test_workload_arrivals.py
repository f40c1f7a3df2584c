"""Workloads and arrival schedules: vLLM's definitions, seeded, bad input named."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson
import pytest

from magpie_trace.bench.arrivals import LoadPoint, send_times, sweep_points
from magpie_trace.bench.workload import build_workload, random_lengths
from magpie_trace.config import BenchmarkConfig
from magpie_trace.errors import ConfigError


def test_random_lengths_cover_vllm_range_and_nothing_else() -> None:
    rng = np.random.default_rng(0)
    lengths = random_lengths(rng, 5000, 100, 0.5)
    assert lengths.min() == 50 and lengths.max() == 150


def test_random_workload_is_seeded_and_has_asked_lengths() -> None:
    bench = BenchmarkConfig(input_len=64, output_len=16, range_ratio=0.0, seed=7)
    a = build_workload(bench, 10)
    b = build_workload(bench, 10)
    c = build_workload(BenchmarkConfig(input_len=64, output_len=16, seed=8), 10)
    assert a == b and a != c
    assert all(len(p.text.split()) == 64 and p.output_tokens == 16 for p in a)
    assert len({p.text for p in a}) == 10  # distinct prompts: no accidental prefix-cache hits


def test_sharegpt_takes_first_turn_and_cycles(tmp_path: Path) -> None:
    path = tmp_path / "sg.json"
    data = [
        {"conversations": [{"from": "human", "value": "hello there"}, {"from": "gpt", "value": "hi"}]},
        {"conversations": [{"from": "human", "value": "only one turn"}]},
        {"conversations": [{"from": "human", "value": "what is 2+2"}, {"from": "gpt", "value": "4"}]},
    ]
    path.write_bytes(orjson.dumps(data))
    bench = BenchmarkConfig(dataset="sharegpt", dataset_path=str(path), output_len=9)
    prompts = build_workload(bench, 5)
    assert {p.text for p in prompts} == {"hello there", "what is 2+2"}
    assert all(p.output_tokens == 9 for p in prompts)


def test_jsonl_prompts_and_a_bad_line_named(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a b c", "output_len": 3}\n\n{"prompt": "d"}\n')
    bench = BenchmarkConfig(dataset="jsonl", dataset_path=str(path), output_len=5)
    prompts = sorted(build_workload(bench, 2), key=lambda p: p.text)
    assert [(p.text, p.output_tokens) for p in prompts] == [("a b c", 3), ("d", 5)]
    path.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(ConfigError, match=r"p\.jsonl:2: expected an object"):
        build_workload(bench, 2)


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


def test_no_rate_sends_everything_at_once_and_sweep_points() -> None:
    assert not send_times(5, None, 1.0, 0).any()
    bench = BenchmarkConfig(concurrency=[1, 4], request_rate=2.5)
    assert sweep_points(bench) == [LoadPoint(1, 2.5), LoadPoint(4, 2.5)]
    assert [p.label for p in sweep_points(bench, [8], None)] == ["c8-rate2.5"]
