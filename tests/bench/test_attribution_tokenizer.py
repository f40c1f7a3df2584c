"""What per-node numbers mean for each topology, and the tokenizer cross-check."""

from __future__ import annotations

import asyncio

from pathlib import Path

import pytest

from magpie_trace.bench.attribution import attribution, engine_nodes
from magpie_trace.bench.metrics import RequestRecord, aggregate
from magpie_trace.bench.prometheus import metrics_targets
from magpie_trace.bench.workload import LocalTokens, build_workload, load_tokenizer
from magpie_trace.config import BenchmarkConfig, load_config
from magpie_trace.plan import make_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("example", "kind"),
    [
        ("vllm-tp16-2node.yaml", "telemetry_only"),
        ("vllm-tp8-pp2-2node.yaml", "telemetry_only"),
        ("vllm-dp4-tp4-2node.yaml", "engine_label"),
        ("local-sim.yaml", "telemetry_only"),
    ],
)
def test_attribution_follows_the_layout(example: str, kind: str) -> None:
    plan = make_plan(load_config(EXAMPLES / example))
    assert attribution(plan)[0] == kind
    if kind == "engine_label":
        # DP ranks 0,1 on the head and 2,3 on the worker: the engine label names its node.
        assert engine_nodes(plan) == {"0": "node0", "1": "node0", "2": "node1", "3": "node1"}
    assert attribution(None)[0] == "endpoint_only"


def test_single_node_and_metrics_targets() -> None:
    config = load_config(EXAMPLES / "local-sim.yaml", ["scheduler.nodes=[{host: 127.0.0.1}]", "server.tp=2"])
    plan = make_plan(config)
    assert attribution(plan)[0] == "single_node"
    assert metrics_targets(plan, plan.head_url) == {"node0": "http://127.0.0.1:18000/metrics"}
    sglang = make_plan(load_config(
        EXAMPLES / "sglang-tp16-ep16-2node.yaml",
        ["server.extra_args=[--enable-metrics, --enable-metrics-for-all-schedulers]"],
    ))
    assert len(metrics_targets(sglang, sglang.head_url)) == 2  # every SGLang node serves /metrics


def test_tokenizer_fits_prompts_and_cross_checks_usage(tmp_path: Path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from magpie_trace.bench.workload import WORDS

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(WORDS))}}
    model = tokenizers.models.WordLevel(vocab, unk_token="[UNK]")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "tokenizer.json"))
    tokenizer, note = load_tokenizer(str(tmp_path))
    assert tokenizer is not None and note is None
    bench = BenchmarkConfig(input_len=40, output_len=8, range_ratio=0.5, seed=3)
    workload = asyncio.run(build_workload(bench, 20, LocalTokens(tokenizer)))
    prompts = [c.turns[0] for c in workload.conversations]
    assert workload.token_source == "tokenizer" and workload.notes == []
    assert all(len(tokenizer.encode(p.text)) == p.prompt_tokens for p in prompts)

    good, off = (RequestRecord(index=i, point="c1", prompt_tokens_expected=4, max_tokens=10) for i in range(2))
    for record, counted in ((good, 10), (off, 13)):
        record.sent_ns, record.first_chunk_ns, record.chunk_ns = 0, 1, [1, 2]
        record.status, record.completion_tokens, record.tokenizer_tokens = "ok", 10, counted
    out = aggregate([good, off], 1.0, [50])
    assert out["token_count_checked"] == 2 and out["token_count_over_10pct"] == 1
    assert out["token_count_mean_diff_pct"] == pytest.approx(15.0)


def test_tokenizer_unavailable_is_said_plainly() -> None:
    assert load_tokenizer(None) == (None, None)
    tokenizer, note = load_tokenizer("/nonexistent/tokenizer-dir")
    assert tokenizer is None and "could not be loaded" in note


def test_spec_decode_keys_as_vllm_writes_them() -> None:
    from magpie_trace.bench.prometheus import parse_prometheus, spec_decode

    def page(drafts: int, proposed: int, accepted: int, per_pos: tuple[int, int]) -> str:
        return (
            f'vllm:spec_decode_num_drafts_total{{engine="0"}} {drafts}\n'
            f'vllm:spec_decode_num_draft_tokens_total{{engine="0"}} {proposed}\n'
            f'vllm:spec_decode_num_accepted_tokens_total{{engine="0"}} {accepted}\n'
            f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",position="0"}} {per_pos[0]}\n'
            f'vllm:spec_decode_num_accepted_tokens_per_pos_total{{engine="0",position="1"}} {per_pos[1]}\n'
        )

    before, after = parse_prometheus(page(10, 20, 12, (8, 4))), parse_prometheus(page(110, 220, 162, (98, 64)))
    assert spec_decode(before, after) == {
        "spec_decode_acceptance_rate": 75.0, "spec_decode_acceptance_length": 2.5,
        "spec_decode_num_drafts": 100, "spec_decode_draft_tokens": 200, "spec_decode_accepted_tokens": 150,
        "spec_decode_per_position_acceptance_rates": [0.9, 0.6],
    }
    assert spec_decode(before, before) == {} and spec_decode(parse_prometheus(""), parse_prometheus("")) == {}
