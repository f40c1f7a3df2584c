"""The streaming client: one aiohttp session, OpenAI completions/chat with SSE, timed at the socket.

Choices that keep the client from being the bottleneck (see the research notes): the connector
allows at least `concurrency` connections, any number without a cap (aiohttp's default of 100
caps throughput silently), a
10 MiB read buffer (the 64 KiB default collapses long outputs), keep-alive connections reused
across requests, and each chunk timestamped with perf_counter_ns right where its bytes are read.
A request's start is stamped when its body is written (aiohttp's trace hook), so the client's own
backlog is not counted as server latency; it is kept as send lag. `stream_options.include_usage`
makes the server report token counts; a tokenizer, when given, counts the text too.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import orjson

from magpie_trace.bench.endpoints import Endpoints
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.bench.workload import Prompt, Tokenizer

READ_BUFSIZE = 10 * 1024 * 1024


class Progress:
    """What the watchdog and the progress bar read: in-flight count and the last token's time."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.done = 0
        self.failed = 0
        self.last_progress_ns = time.perf_counter_ns()

    def touch(self) -> None:
        self.last_progress_ns = time.perf_counter_ns()


class StreamClient:
    """Sends prompts to one endpoint, or spreads them over several (`spread`: endpoints.py); use
    as `async with StreamClient(...) as client`."""

    def __init__(
        self,
        base_url: str | list[str],
        model: str,
        endpoint: str = "completions",
        concurrency: int | None = 1,
        request_timeout_s: float = 600.0,
        ignore_eos: bool = True,
        tokenizer: Tokenizer | None = None,
        spread: str = "round_robin",
    ) -> None:
        self.endpoints = Endpoints([base_url] if isinstance(base_url, str) else base_url, spread)
        self.base_url = self.endpoints.urls[0]
        self.path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
        self.url = ", ".join(url + self.path for url in self.endpoints.urls)
        self.chat = endpoint == "chat"
        self.model = model
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self.ignore_eos = ignore_eos
        self.tokenizer = tokenizer
        self.progress = Progress()
        self.t0_ns = time.perf_counter_ns()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "StreamClient":
        # 0: no limit; else the concurrency on each endpoint (several without a router)
        limit = 0 if self.concurrency is None else max(self.concurrency, 1) * len(self.endpoints.urls) + 8
        connector = aiohttp.TCPConnector(
            limit=limit, limit_per_host=0, keepalive_timeout=60, ttl_dns_cache=300
        )
        tracing = aiohttp.TraceConfig()
        tracing.on_request_chunk_sent.append(self._body_written)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self.timeout, read_bufsize=READ_BUFSIZE, trust_env=False,
            trace_configs=[tracing],
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session (for side requests: /metrics, /version)."""
        assert self._session is not None, "use StreamClient as an async context manager"
        return self._session

    async def _body_written(self, session: Any, context: Any, params: Any) -> None:
        record = context.trace_request_ctx
        if isinstance(record, RequestRecord) and record.wire_ns is None:
            record.wire_ns = self.now()

    async def open_connections(self, count: int) -> None:
        """Open `count` keep-alive connections before a load point starts.

        A burst of new TCP connections at t=0 would be charged to the first requests' TTFT; a
        serving system's clients are connected already, so the connections are made here.
        """
        assert self._session is not None
        session = self._session

        async def one(base_url: str) -> None:
            async with session.get(base_url + "/v1/models") as response:
                await response.read()

        urls = self.endpoints.urls
        await asyncio.gather(*(one(url) for url in urls for _ in range(count)),
                             return_exceptions=True)

    def body(self, prompt: Prompt) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": prompt.output_tokens,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.chat:
            body["messages"] = prompt.messages()
        else:
            body["prompt"] = prompt.completion_text()
        return body

    def now(self) -> int:
        return time.perf_counter_ns() - self.t0_ns

    async def send(self, prompt: Prompt, record: RequestRecord) -> RequestRecord:
        """Stream one request into record. Cancellation marks it incomplete and re-raises."""
        assert self._session is not None, "use StreamClient as an async context manager"
        progress = self.progress
        data = orjson.dumps(self.body(prompt))
        text_parts: list[str] = []
        progress.in_flight += 1
        target = self.endpoints.acquire()
        record.endpoint = self.endpoints.urls[target]
        record.sent_ns = self.now()
        try:
            async with self._session.post(
                record.endpoint + self.path, data=data, headers={"Content-Type": "application/json"},
                trace_request_ctx=record,
            ) as response:
                record.http_status = response.status
                if response.status != 200:
                    body = (await response.text())[:300].replace("\n", " ")
                    record.status, record.error = "failed", f"HTTP {response.status}: {body}"
                    return record
                done = await self._read_stream(response, record, text_parts)
            if not record.chunk_ns:
                record.status = "failed"
                record.error = record.error or "no chunk with choices in the response"
            elif not done or record.error:  # an error event mid-stream cuts the output short
                record.status = "incomplete"
                record.error = record.error or "stream ended before [DONE]"
            else:
                record.status = "ok"
        except asyncio.CancelledError:
            record.status, record.error = "incomplete", "cancelled (run stopped)"
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
            record.status = "incomplete" if record.chunk_ns else "failed"
            record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        finally:
            progress.in_flight -= 1
            self.endpoints.release(target)
            if record.status == "ok":
                progress.done += 1
                progress.touch()
            else:
                progress.failed += 1
            text = "".join(text_parts)
            record.text = text
            record.output_chars = len(text)
            if self.tokenizer is not None and record.status == "ok":
                record.tokenizer_tokens = len(self.tokenizer.encode(text))
        return record

    async def _read_stream(
        self, response: aiohttp.ClientResponse, record: RequestRecord, text_parts: list[str]
    ) -> bool:
        """Parse SSE `data:` lines as bytes arrive; True once [DONE] was read."""
        pending = b""
        done = False
        async for block in response.content.iter_any():
            now = self.now()
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for line in lines:
                line = line.strip()
                if not line.startswith(b"data:"):
                    continue
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                self._on_event(orjson.loads(payload), now, record, text_parts)
        return done

    def _on_event(
        self, event: Any, now: int, record: RequestRecord, text_parts: list[str]
    ) -> None:
        if not isinstance(event, dict):
            return
        if "error" in event:
            error = event["error"]
            record.error = str(error.get("message", error) if isinstance(error, dict) else error)
        choices = event.get("choices")
        if choices:
            choice = choices[0]
            if self.chat:
                delta = choice.get("delta") or {}
                text = delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or ""
            else:
                text = choice.get("text") or ""
            if record.first_chunk_ns is None:
                record.first_chunk_ns = now
            record.chunk_ns.append(now)
            if text:
                text_parts.append(text)
                record.nonempty_chunks += 1
            if choice.get("finish_reason"):
                record.finish_reason = choice["finish_reason"]
            self.progress.touch()
        usage = event.get("usage")
        if isinstance(usage, dict):
            if usage.get("prompt_tokens") is not None:
                record.prompt_tokens = int(usage["prompt_tokens"])
            if usage.get("completion_tokens") is not None:
                record.completion_tokens = int(usage["completion_tokens"])
