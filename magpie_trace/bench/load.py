"""Drive one load point: start each conversation at its due time, at most `concurrency` requests
in flight, each later turn after the reply to the one before.

Like `vllm bench serve --max-concurrency`, a request that is due waits for a slot; the wait is
recorded (due -> sent, vLLM's `client_queue_time`) rather than hidden. The point ends when every
planned request was sent and answered, or, when bounded by time (`duration_s`, or `until` for
the profiled point), when the time is up: nothing new is sent after that and what is in flight
finishes. Records are made as requests go out, so an open-ended point costs memory only for what
it sent.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from magpie_trace.bench.arrivals import LoadPoint, send_times
from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.bench.workload import Conversation, Prompt


@dataclass
class PointRun:
    point: LoadPoint
    records: list[RequestRecord] = field(default_factory=list)
    start_ns: int = 0
    end_ns: int | None = None
    started_unix: float = 0.0
    ended_unix: float = 0.0
    planned: int = 0  # requests of the conversations the point was to send (count bound)
    stopped_by: str = "count"  # count | duration | until | cancelled

    @property
    def duration_s(self) -> float:
        end = self.end_ns if self.end_ns is not None else max(
            (r.chunk_ns[-1] for r in self.records if r.chunk_ns), default=self.start_ns
        )
        return (end - self.start_ns) / 1e9

    @property
    def not_sent(self) -> int:
        """Requests planned but never sent because the point was cut short (not by its own time bound)."""
        return self.planned - len(self.records) if self.stopped_by in ("count", "cancelled") else 0


def due_times(conversations: Sequence[Conversation], point: LoadPoint, burstiness: float, seed: int) -> np.ndarray:
    if point.replay:
        return np.array([c.at_s or 0.0 for c in conversations])
    return send_times(len(conversations), point.rate, burstiness, seed, point.ramp)


async def run_point(
    client: StreamClient,
    conversations: Sequence[Conversation],
    point: LoadPoint,
    burstiness: float,
    seed: int,
    run: PointRun,
    until: Callable[[], bool] | None = None,
) -> None:
    """Fill run.records as the point proceeds (so a cancelled run still has every record)."""
    due = due_times(conversations, point, burstiness, seed)
    slots = asyncio.Semaphore(point.concurrency) if point.concurrency else None
    index = itertools.count()
    run.planned = sum(len(c.turns) for c in conversations)
    run.start_ns = client.now()
    run.started_unix = time.time()
    deadline = run.start_ns + int(point.duration_s * 1e9) if point.duration_s else None

    def time_up() -> str | None:
        if until is not None and until():
            return "until"
        if deadline is not None and client.now() >= deadline:
            return "duration"
        return None

    async def send(number: int, turn: int, prompt: Prompt, due_ns: int, holding: bool) -> RequestRecord | None:
        """One request; holding: the caller already has its slot. None when time ran out first."""
        if slots is not None and not holding:
            await slots.acquire()
        try:
            if turn > 0 and time_up():
                return None
            record = RequestRecord(
                index=next(index), point=point.label, conversation=number, turn=turn,
                prompt_tokens_expected=prompt.prompt_tokens, max_tokens=prompt.output_tokens,
                shared_prefix_tokens=prompt.shared_prefix_tokens, scheduled_ns=due_ns, queued_ns=due_ns,
            )
            run.records.append(record)
            await client.send(prompt, record)
            return record
        finally:
            if slots is not None:
                slots.release()

    async def converse(number: int, conversation: Conversation, due_ns: int) -> None:
        history: tuple[tuple[str, str], ...] = ()
        for turn, prompt in enumerate(conversation.turns):
            if history:
                prompt = replace(prompt, history=history)
            record = await send(number, turn, prompt, due_ns if turn == 0 else client.now(), turn == 0)
            if record is None or record.status != "ok":
                return
            history = (*history, ("user", prompt.text), ("assistant", record.text))

    tasks: set[asyncio.Task[None]] = set()
    try:
        for number, (conversation, at) in enumerate(zip(conversations, due)):
            due_ns = run.start_ns + int(at * 1e9)
            delay = (due_ns - client.now()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            if slots is not None:
                await slots.acquire()  # a closed loop waits here, not in thousands of tasks
            reason = time_up()
            if reason is not None:
                if slots is not None:
                    slots.release()
                run.stopped_by = reason
                break
            task = asyncio.create_task(converse(number, conversation, due_ns))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))
    except asyncio.CancelledError:
        run.stopped_by = "cancelled"
        raise
    finally:
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*list(tasks), return_exceptions=True)
        run.end_ns = client.now()
        run.ended_unix = time.time()


def cycled(conversations: Sequence[Conversation], count: int) -> list[Conversation]:
    """The workload repeated to `count` conversations (an open-ended point's supply)."""
    return list(itertools.islice(itertools.cycle(conversations), count))


def first_turns(conversations: Iterable[Conversation], max_tokens: int) -> list[Conversation]:
    """Single short requests (warmup): each conversation's first turn, output capped."""
    return [
        Conversation((replace(c.turns[0], output_tokens=min(c.turns[0].output_tokens, max_tokens)),))
        for c in conversations
    ]
