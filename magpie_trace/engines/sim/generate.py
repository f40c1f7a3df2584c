"""Token generation on exact deadlines, and the engine steps that drive every rank.

Request i arriving at A gets its first token at A + TTFT and token k at A + TTFT + k * ITL:
absolute deadlines, so lateness never accumulates. One scheduler task serves every stream from
a heap of deadlines with one timer, writing each due chunk straight to its socket (no task switch
and no timer per chunk), which keeps a 2-core machine on time at hundreds of streams.

Independently, while any request is active, the engine runs one step per ITL tick; each step is
handed to `on_step` (the profiler broadcasts it to every rank as a collective).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Protocol

from magpie_trace.engines.sim.metrics import Metrics

# Chunks due within BATCH_S go out in the same pass (one wake-up serves them all, sending some
# up to that early), and the scheduler wakes half of that before the earliest deadline, which
# about cancels the wake-up latency of a busy 2-core machine (~0.1-0.2 ms).
BATCH_S = 0.0002
WAKE_LEAD_S = BATCH_S / 2
_WORDS = ("the", "sim", "engine", "writes", "one", "token", "per", "chunk", "on", "time")


def token_text(index: int) -> str:
    """The deterministic text of output token `index`: one whitespace-separated word."""
    return " " + _WORDS[index % len(_WORDS)]


class Output(Protocol):
    """Where a stream's tokens go (an SSE response, or nothing until the end)."""

    async def token(self, index: int, final: bool) -> None:
        """Deliver token `index`; `final` also ends the response. May raise ConnectionError."""


class Stream:
    """One request in generation."""

    __slots__ = (
        "arrival",
        "arrival_ns",
        "done",
        "first",
        "max_tokens",
        "output",
        "prompt_tokens",
        "request_id",
        "sent",
    )

    def __init__(self, request_id: str, prompt_tokens: int, max_tokens: int, output: Output,
                 arrival: float, arrival_ns: int, done: asyncio.Future[bool]) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.output = output
        self.arrival = arrival  # loop.time() when the request arrived
        self.arrival_ns = arrival_ns  # the same instant on the wall clock (for traces)
        self.first = 0.0  # deadline of the first token
        self.sent = 0
        self.done = done  # True when complete, False when the client went away


class TokenEngine:
    def __init__(self, ttft_s: float, itl_s: float, metrics: Metrics,
                 on_step: Callable[[dict[str, Any]], None],
                 on_finish: Callable[[Stream, int], None]) -> None:
        self.ttft = ttft_s
        self.itl = itl_s
        self.metrics = metrics
        self.hung = False
        self._on_step = on_step
        self._on_finish = on_finish  # (stream, finish wall ns)
        self._heap: list[tuple[float, int, Stream]] = []
        self._seq = itertools.count()
        self._wake: asyncio.Future[None] | None = None
        self._active = asyncio.Event()
        self._ctx_reqs = self._ctx_tokens = self._gen_reqs = 0

    def submit(self, request_id: str, prompt_tokens: int, max_tokens: int, output: Output,
               arrival: float, arrival_ns: int, first: float | None = None) -> asyncio.Future[bool]:
        """Schedule a request; the future resolves when its last token has been written.

        `first` (loop time) overrides arrival + TTFT: a decode server's first token is due when
        the prompt's KV cache has arrived from its prefill server.
        """
        loop = asyncio.get_running_loop()
        stream = Stream(request_id, prompt_tokens, max_tokens, output, arrival, arrival_ns,
                        loop.create_future())
        stream.first = arrival + self.ttft if first is None else first
        self.metrics.running += 1
        self.metrics.prompt_tokens += prompt_tokens
        self._active.set()
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (stream.first, next(self._seq), stream))
        if (earliest is None or stream.first < earliest) and self._wake and not self._wake.done():
            self._wake.set_result(None)
        return stream.done

    def hang(self) -> None:
        """Stop producing tokens and steps for good, as a TP engine does when a rank is lost."""
        self.hung = True

    async def run(self) -> None:
        """The scheduler: sleep until the earliest deadline, then serve every stream that is due."""
        loop = asyncio.get_running_loop()
        heap = self._heap
        while True:
            if self.hung or not heap:
                self._wake = loop.create_future()
                await self._wake
                continue
            when = heap[0][0] - WAKE_LEAD_S
            if when > loop.time():
                self._wake = loop.create_future()
                timer = loop.call_at(when, _resolve, self._wake)
                await self._wake
                timer.cancel()
                continue
            now = loop.time()
            horizon = now + BATCH_S
            while heap and heap[0][0] <= horizon and not self.hung:
                await self._advance(heapq.heappop(heap)[2], now)

    async def _advance(self, stream: Stream, now: float) -> None:
        index = stream.sent
        final = index + 1 == stream.max_tokens
        try:
            await stream.output.token(index, final)
        except ConnectionError:
            self._end(stream, "abort")
            return
        stream.sent += 1
        self.metrics.generation_tokens += 1
        if index == 0:
            self.metrics.ttft.observe(now - stream.arrival)
            self._ctx_reqs += 1
            self._ctx_tokens += stream.prompt_tokens
        else:
            self._gen_reqs += 1
        if final:
            self.metrics.e2e.observe(now - stream.arrival)
            self._end(stream, "length")
        else:
            heapq.heappush(self._heap, (stream.first + stream.sent * self.itl, next(self._seq), stream))

    def _end(self, stream: Stream, reason: str) -> None:
        self.metrics.running -= 1
        self.metrics.finished[reason] += 1
        if self.metrics.running == 0:
            self._active.clear()
        self._on_finish(stream, time.time_ns())
        if not stream.done.done():
            stream.done.set_result(reason != "abort")

    async def run_steps(self) -> None:
        """One engine step per ITL tick while requests are active, ending with the first tick
        that finds none (it carries the last tokens); no steps at all once hung."""
        loop = asyncio.get_running_loop()
        n = 0
        while not self.hung:
            await self._active.wait()
            end = loop.time()
            while not self.hung:
                end += self.itl
                await asyncio.sleep(end - loop.time())
                if self.hung:
                    break
                n += 1
                end_ns = time.time_ns() - int((loop.time() - end) * 1e9)
                self._on_step({
                    "op": "step", "n": n, "end_ns": end_ns, "period_ns": int(self.itl * 1e9),
                    "ctx_reqs": self._ctx_reqs, "ctx_tokens": self._ctx_tokens,
                    "gen_reqs": self._gen_reqs,
                })
                self._ctx_reqs = self._ctx_tokens = self._gen_reqs = 0
                if not self.metrics.running:
                    break
        await loop.create_future()  # hung: no more steps, ever


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
