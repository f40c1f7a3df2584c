"""Drive one load point: send each prompt at its due time, at most `concurrency` at once.

Requests are created at their scheduled send time and then wait for a slot, like `vllm bench
serve --max-concurrency`; the wait is recorded (`queued_ns` -> `sent_ns`) rather than hidden.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from magpie_trace.bench.arrivals import LoadPoint, send_times
from magpie_trace.bench.client import StreamClient
from magpie_trace.bench.metrics import RequestRecord
from magpie_trace.bench.workload import Prompt


@dataclass
class PointRun:
    point: LoadPoint
    records: list[RequestRecord]
    start_ns: int
    end_ns: int | None = None
    started_unix: float = 0.0
    ended_unix: float = 0.0

    @property
    def duration_s(self) -> float:
        end = self.end_ns if self.end_ns is not None else max(
            (r.chunk_ns[-1] for r in self.records if r.chunk_ns), default=self.start_ns
        )
        return (end - self.start_ns) / 1e9


async def run_point(
    client: StreamClient,
    prompts: list[Prompt],
    point: LoadPoint,
    burstiness: float,
    seed: int,
    run: PointRun,
) -> None:
    """Fill run.records as the point proceeds (so a cancelled run still has every record)."""
    due = send_times(len(prompts), point.rate, burstiness, seed)
    slots = asyncio.Semaphore(point.concurrency)
    run.records.extend(
        RequestRecord(
            index=i,
            point=point.label,
            prompt_tokens_expected=p.prompt_tokens,
            max_tokens=p.output_tokens,
            scheduled_ns=int(due[i] * 1e9),
        )
        for i, p in enumerate(prompts)
    )

    async def one(prompt: Prompt, record: RequestRecord) -> None:
        record.queued_ns = client.now()
        async with slots:
            await client.send(prompt, record)

    run.start_ns = client.now()
    run.started_unix = time.time()
    for record in run.records:
        record.scheduled_ns += run.start_ns
    tasks: list[asyncio.Task[None]] = []
    try:
        for prompt, record in zip(prompts, run.records):
            delay = (record.scheduled_ns - client.now()) / 1e9
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(prompt, record)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        run.end_ns = client.now()
        run.ended_unix = time.time()
