"""Multi-turn conversations as the server sees them: each turn arrives after the reply to the one
before, carrying the whole history (the user turns and the replies the server actually sent) in
order, on both endpoints. A small aiohttp server on 127.0.0.1 records every request body and
answers each with text of its own."""

from __future__ import annotations

import asyncio
import itertools
import time

import orjson
import pytest
from aiohttp import web

from magpie_trace.bench.arrivals import LoadPoint
from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.load import PointRun, run_point
from magpie_trace.bench.workload import Conversation, Prompt
from tests.bench.local_app import serving

TURNS, CONVERSATIONS = 3, 4


class Recorder:
    """Answers every request with `reply<N> done` in two chunks; `fail` user texts get HTTP 500."""

    def __init__(self, chat: bool, fail: str | None = None) -> None:
        self.chat, self.fail = chat, fail
        self.seen: list[dict] = []
        self.numbers = itertools.count()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.perf_counter_ns()
        body = orjson.loads(await request.read())
        number = next(self.numbers)
        user = body["messages"][-1]["content"] if self.chat else body["prompt"].split("\n")[-1]
        entry = {"body": body, "user": user, "arrived": arrived, "reply": f"reply{number} done", "ended": None}
        self.seen.append(entry)
        if user == self.fail:
            return web.json_response({"error": "boom"}, status=500)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for piece in (f"reply{number}", " done"):
            choice = {"index": 0, "delta": {"content": piece}} if self.chat else {"index": 0, "text": piece}
            await response.write(b"data: " + orjson.dumps({"choices": [choice]}) + b"\n\n")
            await asyncio.sleep(0.01)
        await response.write(b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n')
        await response.write(b"data: [DONE]\n\n")
        entry["ended"] = time.perf_counter_ns()
        return response


def conversations() -> list[Conversation]:
    return [Conversation(tuple(Prompt(f"c{c}t{t}", 1, 2) for t in range(TURNS))) for c in range(CONVERSATIONS)]


async def converse(chat: bool, fail: str | None = None) -> tuple[Recorder, PointRun]:
    recorder = Recorder(chat, fail)
    app = web.Application()
    app.router.add_post("/v1/chat/completions" if chat else "/v1/completions", recorder.handle)
    async with serving(app) as url, StreamClient(url, "m", "chat" if chat else "completions", concurrency=2) as client:
        run = PointRun(LoadPoint(2))
        await run_point(client, conversations(), run.point, 1.0, 0, run)
    return recorder, run


@pytest.mark.parametrize("chat", [True, False], ids=["chat", "completions"])
def test_each_turn_follows_the_reply_and_carries_the_real_history_in_order(chat: bool) -> None:
    recorder, run = asyncio.run(converse(chat))
    assert len(recorder.seen) == TURNS * CONVERSATIONS and all(r.status == "ok" for r in run.records)
    for c in range(CONVERSATIONS):
        turns = [e for e in recorder.seen if e["user"].startswith(f"c{c}t")]
        assert [e["user"] for e in turns] == [f"c{c}t{t}" for t in range(TURNS)]  # in order
        history: list[tuple[str, str]] = []
        for before, after in zip(turns, turns[1:]):
            assert after["arrived"] > before["ended"]  # the next turn only once the reply is complete
        for entry in turns:
            if chat:
                sent = [(m["role"], m["content"]) for m in entry["body"]["messages"]]
                assert sent == [*history, ("user", entry["user"])]
            else:
                assert entry["body"]["prompt"] == "\n".join([*(text for _, text in history), entry["user"]])
            history += [("user", entry["user"]), ("assistant", entry["reply"])]  # what this server replied
    replies = {(r.conversation, r.turn): r.text for r in run.records}
    assert replies[(1, 2)] == next(e["reply"] for e in recorder.seen if e["user"] == "c1t2")


def test_a_failed_turn_ends_its_conversation_and_the_rest_count_as_not_sent() -> None:
    recorder, run = asyncio.run(converse(chat=True, fail="c2t1"))
    assert [e["user"] for e in recorder.seen if e["user"].startswith("c2t")] == ["c2t0", "c2t1"]
    assert sum(1 for r in run.records if r.status == "failed") == 1
    assert len(recorder.seen) == TURNS * CONVERSATIONS - 1 and run.not_sent == 1
