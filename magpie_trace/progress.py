"""What the library tells whoever watches it: lines, stage changes, and counts that update in place.

Library functions take `progress` as any callable of one line (`print` will do). A richer reporter
(the command line's live display, magpie_trace.console) also has `stage(name)`,
`stage_ended(name, seconds, failed)` and `count(label, done, total, detail)`; these helpers use them where present and fall back to lines,
so the library never depends on how, or whether, anything is drawn.
"""

from __future__ import annotations

import threading
from typing import Callable

Say = Callable[[str], None]


def silent(_message: str) -> None:
    """The reporter used when none is given."""


def stage(say: Say, name: str) -> None:
    """A stage of `run` begins (the previous one, if any, has ended)."""
    begin = getattr(say, "stage", None)
    if begin is not None:
        begin(name)
    else:
        say(f"stage {name}")


def stage_ended(say: Say, name: str, seconds: float, failed: bool = False) -> None:
    """The stage begun by stage() has ended; a plain reporter hears of it through the next line."""
    end = getattr(say, "stage_ended", None)
    if end is not None:
        end(name, seconds, failed)


def count(say: Say, label: str, done: int, total: int, detail: str = "", *, line: bool = True) -> None:
    """done of total so far. A live display redraws its bar for label (rate, ETA); a plain reporter
    gets one line, unless line is False (for callers that poll several times a second)."""
    update = getattr(say, "count", None)
    if update is not None:
        update(label, done, total, detail)
    elif line:
        say(f"{done}/{total} {label}" + (f" ({detail})" if detail else ""))


class Tally:
    """A count that worker threads (one per node) add to; each addition reports done of total, and
    a plain reporter gets one line when the last is in."""

    def __init__(self, say: Say, label: str, total: int, total_bytes: int = 0) -> None:
        self.say, self.label, self.total, self.total_bytes = say, label, total, total_bytes
        self.done = self.bytes = 0
        self._lock = threading.Lock()

    def add(self, nbytes: int = 0) -> None:
        with self._lock:
            self.done += 1
            self.bytes += nbytes
            detail = f"{self.bytes / 1e6:.1f} of {self.total_bytes / 1e6:.1f} MB" if self.total_bytes else ""
            count(self.say, self.label, self.done, self.total, detail, line=self.done == self.total)
