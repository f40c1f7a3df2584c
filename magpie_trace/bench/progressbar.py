"""A one-line live progress bar on stderr, drawn only when stderr is a terminal."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from magpie_trace.bench.client import Progress


class ProgressBar:
    def __init__(self, label: str, total: int, progress: Progress, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.progress = progress
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.start = time.monotonic()
        self.base_done = progress.done
        self.base_failed = progress.failed

    def line(self) -> str:
        done = self.progress.done - self.base_done
        failed = self.progress.failed - self.base_failed
        frac = min(1.0, (done + failed) / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        elapsed = time.monotonic() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        return (
            f"\r{self.label} [{bar:<30}] {done + failed}/{self.total} "
            f"in flight {self.progress.in_flight}, failed {failed}, {rate:.1f} req/s "
        )

    async def run(self) -> None:
        """Redraw 4 times a second until cancelled."""
        if not self.enabled:
            return
        try:
            while True:
                self.stream.write(self.line())
                self.stream.flush()
                await asyncio.sleep(0.25)
        except asyncio.CancelledError:
            self.stream.write(self.line() + "\n")
            self.stream.flush()
            raise
