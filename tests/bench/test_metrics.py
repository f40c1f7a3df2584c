"""Aggregates on hand-made timestamps: the vLLM formulas, failures counted."""

from __future__ import annotations

import pytest

from magpie_trace.bench.metrics import RequestRecord, aggregate, percentile_key

MS = 1_000_000


def record(i: int, sent_ms: float, ttft_ms: float, itl_ms: float, tokens: int, status: str = "ok") -> RequestRecord:
    r = RequestRecord(index=i, point="c1", prompt_tokens_expected=10, max_tokens=tokens)
    r.sent_ns = int(sent_ms * MS)
    first = r.sent_ns + int(ttft_ms * MS)
    r.first_chunk_ns = first
    r.chunk_ns = [first + int(k * itl_ms * MS) for k in range(tokens)]
    r.completion_tokens = tokens
    r.prompt_tokens = 10
    r.nonempty_chunks = tokens
    r.status = status
    return r


def test_ttft_tpot_itl_e2el_follow_vllm() -> None:
    records = [record(0, 0, 20, 5, 11), record(1, 0, 40, 10, 11)]
    out = aggregate(records, duration_s=1.0, percentiles=[50, 99])
    assert out["mean_ttft_ms"] == pytest.approx(30)
    assert out["median_tpot_ms"] == pytest.approx(7.5)  # (e2el - ttft)/(out - 1)
    assert out["mean_itl_ms"] == pytest.approx(7.5)  # 10 gaps of 5 and 10 gaps of 10, pooled
    assert out["mean_e2el_ms"] == pytest.approx((20 + 50 + 40 + 100) / 2)
    assert out["p99_ttft_ms"] == pytest.approx(39.8)
    assert out["request_throughput"] == 2.0
    assert out["output_throughput"] == 22.0
    assert out["total_token_throughput"] == 42.0


def test_failed_and_incomplete_are_counted_not_averaged() -> None:
    bad = record(1, 0, 500, 5, 3, status="incomplete")
    failed = RequestRecord(index=2, point="c1", prompt_tokens_expected=10, max_tokens=5, status="failed")
    out = aggregate([record(0, 0, 20, 5, 4), bad, failed], 1.0, [50])
    # vLLM's failed: every request that did not complete; incomplete: those cut mid-stream.
    assert (out["completed"], out["failed"], out["incomplete"]) == (1, 2, 1)
    assert out["mean_ttft_ms"] == pytest.approx(20)
    assert out["request_goodput"] is None  # null without SLOs, as vLLM writes it


def test_goodput_needs_every_slo() -> None:
    records = [record(0, 0, 20, 5, 5), record(1, 0, 200, 5, 5), record(2, 0, 20, 50, 5)]
    out = aggregate(records, 2.0, [50], goodput={"ttft": 100, "tpot": 10})
    assert out["good_requests"] == 1 and out["request_goodput"] == 0.5


def test_output_token_source_order_and_one_token_tpot() -> None:
    r = record(0, 0, 10, 5, 1)
    assert r.tpot_ms() is None
    r.completion_tokens = None
    r.tokenizer_tokens = 3
    assert (r.output_tokens, r.output_tokens_source) == (3, "tokenizer")
    r.tokenizer_tokens = None
    assert (r.output_tokens, r.output_tokens_source) == (1, "chunks")


def test_peaks_and_empty_run() -> None:
    records = [record(i, 0, 10, 100, 5) for i in range(3)]
    out = aggregate(records, 1.0, [90])
    assert out["max_concurrent_requests"] == 3
    assert out["max_output_tokens_per_s"] == 15
    empty = aggregate([], 0.0, [99.9])
    # vLLM writes 0.0 for a latency with no sample (np.mean(x or 0)); send lag (ours) stays null.
    assert empty["completed"] == 0 and empty["p99.9_ttft_ms"] == 0.0 and empty["mean_send_lag_ms"] is None
    assert percentile_key(99.9) == "p99.9" and percentile_key(50.0) == "p50"
