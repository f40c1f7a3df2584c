"""A load point's progress for the display: done of total requests, in flight, failures and rate,
four times a second (a live bar with the point's ETA in a terminal; one line when it ends elsewhere)."""

from __future__ import annotations

import asyncio
import time

from magpie_trace.bench.client import Progress
from magpie_trace.progress import Say, count

INTERVAL_S = 0.25


async def report_progress(say: Say, label: str, total: int, progress: Progress) -> None:
    """Report until cancelled (when the point ends), then once more with the final numbers."""
    base_done, base_failed = progress.done, progress.failed
    start = time.monotonic()

    def report(final: bool) -> None:
        done = progress.done - base_done
        failed = progress.failed - base_failed
        elapsed = time.monotonic() - start
        rate = done / elapsed if elapsed > 0 else 0.0
        detail = f"{progress.in_flight} in flight, {failed} failed, {rate:.1f} req/s"
        count(say, f"{label} requests", done + failed, total, detail, line=final)

    try:
        while True:
            report(final=False)
            await asyncio.sleep(INTERVAL_S)
    except asyncio.CancelledError:
        report(final=True)
        raise
