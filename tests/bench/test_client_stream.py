"""The client's SSE reading on shapes the sim never sends: events split across TCP writes, an error
event mid-stream, a stream cut before [DONE], an HTTP error. A small aiohttp server on 127.0.0.1
writes exactly these bytes."""

from __future__ import annotations

import asyncio

from aiohttp import web

from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.bench.workload import Prompt
from tests.bench.local_app import serving

CHUNK = b'data: {"choices":[{"index":0,"text":" tok","finish_reason":null}]}\n\n'
USAGE = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3}}\n\n'
ERROR = b'data: {"error":{"message":"engine dead","code":500}}\n\n'

SCRIPTS = {
    # three chunks, each split mid-line across writes, then usage and [DONE]
    "split": [CHUNK[:10], CHUNK[10:] + CHUNK[:40], CHUNK[40:], CHUNK, USAGE[:5], USAGE[5:] + b"data: [DONE]\n\n"],
    "error": [CHUNK, ERROR, b"data: [DONE]\n\n"],
    "cut": [CHUNK, CHUNK],
}


async def handler(request: web.Request) -> web.StreamResponse:
    script = SCRIPTS.get(request.headers.get("X-Script", ""))
    if script is None:
        return web.json_response({"error": "no such model"}, status=404)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for part in script:
        await response.write(part)
        await asyncio.sleep(0.01)
    return response


async def exchange(script: str) -> RequestRecord:
    app = web.Application()
    app.router.add_post("/v1/completions", handler)
    record = RequestRecord(index=0, point="c1", prompt_tokens_expected=2, max_tokens=3)
    async with serving(app) as url, StreamClient(url, "m") as client:
        client.session.headers["X-Script"] = script
        await client.send(Prompt("a b", 2, 3), record)
    return record


def test_events_split_across_reads_are_joined() -> None:
    record = asyncio.run(exchange("split"))
    assert record.status == "ok" and len(record.chunk_ns) == 3
    assert (record.prompt_tokens, record.completion_tokens, record.output_chars) == (7, 3, 12)
    assert record.wire_ns is not None and record.sent_ns <= record.wire_ns <= record.first_chunk_ns


def test_error_event_and_cut_stream_are_incomplete_and_http_error_failed() -> None:
    error = asyncio.run(exchange("error"))
    assert error.status == "incomplete" and error.error == "engine dead"
    cut = asyncio.run(exchange("cut"))
    assert cut.status == "incomplete" and cut.error == "stream ended before [DONE]"
    missing = asyncio.run(exchange("404"))
    assert missing.status == "failed" and missing.error.startswith("HTTP 404:")
    assert missing.http_status == 404
