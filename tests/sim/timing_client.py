"""A small streaming client, run as its own process by the timing test.

Usage: python timing_client.py URL CONCURRENCY REQUESTS MIN_TOKENS MAX_TOKENS
Closed loop at CONCURRENCY; each request asks for a random length in [MIN_TOKENS, MAX_TOKENS]
(seeded), so completions, and so new arrivals, spread out as in a real benchmark. The first
CONCURRENCY requests are warmup (they open the connections and start as one burst) and are left
out. Prints one JSON object: TTFT and TPOT percentiles in ms, with vLLM's definitions (TTFT from
just before the request is sent to the first content chunk read off the socket; TPOT = (E2E -
TTFT) / (tokens - 1)), and how many requests got a wrong number of chunks.

"Sent" is stamped by an aiohttp trace hook as the body is written: on Python < 3.12 aiohttp
writes the body from a separate task that runs only after every other ready callback, so a
timestamp taken before `session.post` would count the client's own backlog as server latency.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time

import aiohttp
import orjson


async def _body_sent(session: aiohttp.ClientSession, context: object, params: object) -> None:
    context.trace_request_ctx["sent"] = time.perf_counter()  # type: ignore[attr-defined]


async def one(session: aiohttp.ClientSession, url: str, tokens: int) -> tuple[float, float, int]:
    body = orjson.dumps({"model": "sim-model", "prompt": "one two three four", "max_tokens": tokens,
                         "stream": True, "ignore_eos": True,
                         "stream_options": {"include_usage": True}})
    chunks = 0
    ttft = 0.0
    stamps: dict[str, float] = {}
    async with session.post(url, data=body, headers={"Content-Type": "application/json"},
                            trace_request_ctx=stamps) as response:
        async for data in response.content.iter_any():
            now = time.perf_counter()
            if not chunks and b'"text":' in data:
                ttft = now - stamps["sent"]
            chunks += data.count(b'"text":')
    start = stamps["sent"]
    e2e = time.perf_counter() - start
    return ttft, (e2e - ttft) / (tokens - 1), chunks - tokens


async def run(url: str, concurrency: int, requests: int, low: int, high: int) -> dict:
    rng = random.Random(1)
    lengths = [rng.randint(low, high) for _ in range(concurrency + requests)]
    queue = list(enumerate(lengths))
    queue.reverse()
    results: list[tuple[float, float, int]] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    tracing = aiohttp.TraceConfig()
    tracing.on_request_chunk_sent.append(_body_sent)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 20,
                                     trace_configs=[tracing]) as session:

        async def worker() -> None:
            while queue:
                index, tokens = queue.pop()
                result = await one(session, url, tokens)
                if index >= concurrency:
                    results.append(result)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000

    ttfts = [r[0] for r in results]
    tpots = [r[1] for r in results]
    return {
        "n": len(results),
        "ttft_p50": pct(ttfts, 0.5), "ttft_p99": pct(ttfts, 0.99),
        "tpot_p50": pct(tpots, 0.5), "tpot_p99": pct(tpots, 0.99),
        "bad_counts": sum(r[2] != 0 for r in results),
    }


if __name__ == "__main__":
    url, concurrency, requests, low, high = sys.argv[1], *map(int, sys.argv[2:6])
    print(orjson.dumps(asyncio.run(run(url, concurrency, requests, low, high))).decode())
