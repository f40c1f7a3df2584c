"""Per-request numbers and their aggregates, with `vllm bench serve`'s definitions and key names.

- TTFT: send -> first SSE chunk that has `choices` (its text may be empty). "Send" is when the
  request body is written to the socket (vLLM stamps just before `session.post`; on Python < 3.12
  aiohttp writes the body from a task that runs after every other ready callback, so that stamp
  would count the client's own backlog as server latency). The backlog is reported on its own as
  `send_lag` (issue -> written), the client's self-check.
- TPOT: (E2EL - TTFT) / (output_tokens - 1), per request with more than one output token.
- ITL: every gap between consecutive chunks with `choices`, pooled over requests.
- E2EL: send -> last chunk with `choices` (the trailing usage chunk and [DONE] do not count).
- duration: first scheduled send -> all requests finished. Throughputs divide by it.
Aggregates cover completed requests; every other sent request is `failed` (as in vLLM), of which
`incomplete` were cut short mid-stream; none is dropped. As in vLLM, a latency with no sample
reads 0.0 (and `request_goodput` is null without goodput SLOs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

MS = 1e-6  # ns -> ms
LATENCIES = ("ttft", "tpot", "itl", "e2el")


@dataclass
class RequestRecord:
    """One request. Times are ns on the client's perf_counter, relative to the run's start."""

    index: int
    point: str
    prompt_tokens_expected: int
    max_tokens: int
    conversation: int = 0
    turn: int = 0
    shared_prefix_tokens: int = 0
    scheduled_ns: int = 0
    sent_ns: int | None = None
    wire_ns: int | None = None
    first_chunk_ns: int | None = None
    chunk_ns: list[int] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokenizer_tokens: int | None = None
    output_chars: int = 0
    nonempty_chunks: int = 0
    finish_reason: str | None = None
    status: str = "pending"  # ok | failed | incomplete | pending (never sent)
    http_status: int | None = None
    error: str | None = None
    queued_ns: int | None = None
    endpoint: str | None = None  # the API server it went to (several without a router)
    text: str = ""  # the generated text (the next turn's history; vLLM's generated_texts)

    @property
    def last_chunk_ns(self) -> int | None:
        return self.chunk_ns[-1] if self.chunk_ns else None

    @property
    def output_tokens(self) -> int:
        """Server usage first, then the tokenizer's count, then the number of non-empty chunks."""
        if self.completion_tokens is not None:
            return self.completion_tokens
        if self.tokenizer_tokens is not None:
            return self.tokenizer_tokens
        return self.nonempty_chunks

    @property
    def output_tokens_source(self) -> str:
        if self.completion_tokens is not None:
            return "usage"
        return "tokenizer" if self.tokenizer_tokens is not None else "chunks"

    @property
    def input_tokens(self) -> int:
        return self.prompt_tokens if self.prompt_tokens is not None else self.prompt_tokens_expected

    @property
    def start_ns(self) -> int | None:
        """When the request left: body written (wire_ns), else issued (sent_ns)."""
        return self.wire_ns if self.wire_ns is not None else self.sent_ns

    def ttft_ms(self) -> float | None:
        if self.start_ns is None or self.first_chunk_ns is None:
            return None
        return (self.first_chunk_ns - self.start_ns) * MS

    def e2el_ms(self) -> float | None:
        if self.start_ns is None or not self.chunk_ns:
            return None
        return (self.chunk_ns[-1] - self.start_ns) * MS

    def client_queue_ms(self) -> float | None:
        """Due -> sent: the wait for a concurrency slot (vLLM's client_queue_time)."""
        if self.sent_ns is None or self.queued_ns is None:
            return None
        return (self.sent_ns - self.queued_ns) * MS

    def send_lag_ms(self) -> float | None:
        if self.sent_ns is None or self.wire_ns is None:
            return None
        return (self.wire_ns - self.sent_ns) * MS

    def tpot_ms(self) -> float | None:
        ttft, e2el, out = self.ttft_ms(), self.e2el_ms(), self.output_tokens
        if ttft is None or e2el is None or out <= 1:
            return None
        return (e2el - ttft) / (out - 1)

    def itls_ms(self) -> list[float]:
        return [(b - a) * MS for a, b in zip(self.chunk_ns, self.chunk_ns[1:])]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "point": self.point,
            "endpoint": self.endpoint,
            "conversation": self.conversation,
            "turn": self.turn,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error,
            "scheduled_ns": self.scheduled_ns,
            "queued_ns": self.queued_ns,
            "sent_ns": self.sent_ns,
            "wire_ns": self.wire_ns,
            "first_chunk_ns": self.first_chunk_ns,
            "last_chunk_ns": self.last_chunk_ns,
            "chunk_ns": self.chunk_ns,
            "prompt_tokens": self.prompt_tokens,
            "prompt_tokens_expected": self.prompt_tokens_expected,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "max_tokens": self.max_tokens,
            "completion_tokens": self.completion_tokens,
            "tokenizer_tokens": self.tokenizer_tokens,
            "output_tokens": self.output_tokens,
            "output_tokens_source": self.output_tokens_source,
            "output_chars": self.output_chars,
            "finish_reason": self.finish_reason,
            "ttft_ms": self.ttft_ms(),
            "tpot_ms": self.tpot_ms(),
            "e2el_ms": self.e2el_ms(),
        }


def percentile_key(p: float) -> str:
    """vLLM's spelling: p99, p99.9."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


def distribution(
    values: list[float], percentiles: list[float], name: str, empty: float | None = 0.0
) -> dict[str, float | None]:
    """mean_/median_/std_/pNN_<name>_ms; `empty` where there are no samples (vLLM writes 0.0)."""
    arr = np.asarray(values, dtype=float)
    has = arr.size > 0
    out: dict[str, float | None] = {
        f"mean_{name}_ms": float(arr.mean()) if has else empty,
        f"median_{name}_ms": float(np.median(arr)) if has else empty,
        f"std_{name}_ms": float(arr.std()) if has else empty,
    }
    for p in percentiles:
        out[f"{percentile_key(p)}_{name}_ms"] = float(np.percentile(arr, p)) if has else empty
    return out


def aggregate(
    records: list[RequestRecord],
    duration_s: float,
    percentiles: list[float],
    goodput: dict[str, float] | None = None,
    not_sent: int = 0,
    queued: bool = False,
    paced: bool = False,
) -> dict[str, Any]:
    """The summary of one load point, keyed like `vllm bench serve --save-result`.

    queued: a concurrency cap was set (adds vLLM's client_queue_time); paced: and a rate, so
    the queue wait is part of what a user would see (adds e2el_including_client_queue).
    """
    done = [r for r in records if r.status == "ok"]
    sent = [r for r in records if r.status != "pending"]
    incomplete = sum(1 for r in records if r.status == "incomplete")
    total_in = sum(r.input_tokens for r in done)
    total_out = sum(r.output_tokens for r in done)
    dur = duration_s if duration_s > 0 else math.nan
    out: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(done),
        "failed": len(sent) - len(done),
        "incomplete": incomplete,
        "not_sent": not_sent + len(records) - len(sent),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": _finite(len(done) / dur),
        "request_goodput": None,
        "output_throughput": _finite(total_out / dur),
        "total_token_throughput": _finite((total_in + total_out) / dur),
        "input_throughput": _finite(total_in / dur),
    }
    if goodput:
        good = sum(1 for r in done if _meets(r, goodput))
        out["request_goodput"] = _finite(good / dur)
        out["good_requests"] = good
    out.update(peaks(done))
    out["rtfx"] = 0.0  # vLLM's inverse real-time factor: audio input only
    ttfts = [r.ttft_ms() for r in done]
    tpots = [r.tpot_ms() for r in done]
    e2els = [r.e2el_ms() for r in done]
    out.update(distribution([v for v in ttfts if v is not None], percentiles, "ttft"))
    out.update(distribution([v for v in tpots if v is not None], percentiles, "tpot"))
    out.update(distribution([v for r in done for v in r.itls_ms()], percentiles, "itl"))
    out.update(distribution([v for v in e2els if v is not None], percentiles, "e2el"))
    if queued:
        waits = [r.client_queue_ms() or 0.0 for r in done]
        out.update(distribution(waits, percentiles, "client_queue_time"))
        if paced:
            out.update(distribution(
                [(r.e2el_ms() or 0.0) + w for r, w in zip(done, waits)], percentiles,
                "e2el_including_client_queue",
            ))
    lags = [r.send_lag_ms() for r in done]
    out.update(distribution([v for v in lags if v is not None], percentiles, "send_lag", empty=None))
    first = [r for r in done if r.turn == 0]
    out["shared_prefix_tokens"] = sum(r.shared_prefix_tokens for r in first)
    out.update(_prompt_check(first))
    out.update(_token_check(done))
    return out


def _prompt_check(first_turns: list[RequestRecord]) -> dict[str, Any]:
    """Server-counted vs requested prompt tokens over first turns (later turns carry replies)."""
    pairs = [(r.prompt_tokens, r.prompt_tokens_expected) for r in first_turns if r.prompt_tokens is not None]
    expected = sum(e for _, e in pairs)
    if not pairs or not expected:
        return {"prompt_tokens_requested": expected, "prompt_tokens_diff_pct": None}
    return {
        "prompt_tokens_requested": expected,
        "prompt_tokens_diff_pct": (sum(u for u, _ in pairs) - expected) / expected * 100,
    }


def _meets(record: RequestRecord, slo: dict[str, float]) -> bool:
    """DistServe goodput: every given SLO met (TPOT counts 0 for one-token outputs, as in vLLM)."""
    values = {
        "ttft": record.ttft_ms(),
        "tpot": record.tpot_ms() or 0.0,
        "e2el": record.e2el_ms(),
    }
    return all(values[k] is not None and values[k] <= limit for k, limit in slo.items())


def peaks(done: list[RequestRecord]) -> dict[str, float]:
    """max_output_tokens_per_s (1 s buckets of chunk arrivals) and max_concurrent_requests."""
    if not done:
        return {"max_output_tokens_per_s": 0.0, "max_concurrent_requests": 0}
    start = min(r.start_ns for r in done if r.start_ns is not None)
    end = max(r.chunk_ns[-1] for r in done)
    seconds = int((end - start) // 1_000_000_000) + 1
    tokens = np.zeros(seconds)
    busy = np.zeros(seconds)
    for r in done:
        for t in r.chunk_ns:
            tokens[(t - start) // 1_000_000_000] += 1
        first = (r.start_ns - start) // 1_000_000_000
        last = (r.chunk_ns[-1] - start) // 1_000_000_000
        busy[first : last + 1] += 1
    return {"max_output_tokens_per_s": float(tokens.max()), "max_concurrent_requests": int(busy.max())}


def _token_check(done: list[RequestRecord]) -> dict[str, Any]:
    """Tokenizer vs usage: how far the client's count is from the server's (when both exist)."""
    pairs = [
        (r.completion_tokens, r.tokenizer_tokens)
        for r in done
        if r.completion_tokens is not None and r.tokenizer_tokens is not None
    ]
    if not pairs:
        return {"token_count_checked": 0}
    diffs = [abs(t - u) / max(u, 1) * 100 for u, t in pairs]
    return {
        "token_count_checked": len(pairs),
        "token_count_mean_diff_pct": float(np.mean(diffs)),
        "token_count_over_10pct": sum(1 for d in diffs if d > 10),
    }


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value
