"""The command line's progress view on stderr (stdout stays for results and --json).

In a terminal: one live area at the bottom (rich) with the current stage and a bar per count in
progress (done/total, rate, ETA), redrawn in place; lines scroll above it and never land inside it,
from any thread. Elsewhere (a log file, CI): plain lines, a count as a line when it finishes and at
most every HEARTBEAT_S while it runs. `-q` shows nothing but errors; `-v` adds the time since start
to every line and a line for every change of a count.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, SpinnerColumn, Task, TaskID, TextColumn
from rich.text import Text

from magpie_trace import interrupts

QUIET, NORMAL, VERBOSE = -1, 0, 1
HEARTBEAT_S = 10.0


class _Count(ProgressColumn):
    """done/total; nothing for the stage row, which has no total."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}")


class _Eta(ProgressColumn):
    """Elapsed time, and for a count under way the time left at its recent rate."""

    max_refresh = 0.5

    def render(self, task: Task) -> Text:
        elapsed = _clock(task.elapsed or 0.0)
        if task.total is None or task.finished:
            return Text(elapsed)
        left = task.time_remaining
        return Text(f"{elapsed}  ETA {_clock(left) if left is not None else '-:--'}")


class _Stderr(Console):
    """rich's Console on stderr; when nobody reads it any more the run stops as on SIGPIPE (teardown
    first), where rich itself would exit at once."""

    def __init__(self) -> None:
        super().__init__(stderr=True, highlight=False)

    def on_broken_pipe(self) -> None:
        self.quiet = True
        interrupts.output_closed()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


class Display:
    """A reporter for the library (callable with a line; `stage` and `count`, see
    magpie_trace.progress). Use as a context manager around the work it reports on."""

    def __init__(self, verbosity: int = NORMAL, console: Console | None = None) -> None:
        self.console = console or _Stderr()
        self.verbosity = verbosity
        self.live = self.console.is_terminal and verbosity > QUIET
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._stage: TaskID | None = None
        self._counts: dict[str, tuple[TaskID | None, float]] = {}  # label -> (bar, last line's time)
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30), _Count(),
            TextColumn("{task.fields[detail]}"), _Eta(),
            console=self.console, transient=True, refresh_per_second=4, disable=not self.live,
        )

    def __enter__(self) -> "Display":
        if self.live:
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self._lock:
            self._clear()
        if self.live:
            self._progress.stop()

    # -- the reporter interface ------------------------------------------------------------

    def __call__(self, message: str) -> None:
        if self.verbosity > QUIET:
            self._line(message)

    def stage(self, name: str) -> None:
        with self._lock:
            self._clear()
            if self.live:
                self._stage = self._progress.add_task(f"stage {name}", total=None, detail="")
        if not self.live:
            self(f"stage {name}")

    def stage_ended(self, name: str, seconds: float, failed: bool = False) -> None:
        with self._lock:
            self._clear()
        self(f"stage {name} {'failed after' if failed else 'done in'} {seconds:.1f} s")

    def count(self, label: str, done: int, total: int, detail: str = "") -> None:
        if self.verbosity == QUIET:
            return
        now = time.monotonic()
        with self._lock:
            first = label not in self._counts
            task, last_line = self._counts.get(label, (None, now))
            if first and self.live:
                task = self._progress.add_task(label, total=total, detail=detail)
            if task is not None:
                self._progress.update(task, completed=done, total=total, detail=detail)
            finished = total > 0 and done >= total
            say = finished or self.verbosity == VERBOSE or (not self.live and now - last_line >= HEARTBEAT_S)
            if finished:
                self._counts.pop(label, None)
                if task is not None:
                    self._progress.remove_task(task)
            else:
                self._counts[label] = (task, now if say and not first else last_line)
        if say:
            self._line(f"{label}: {done}/{total}" + (f" ({detail})" if detail else ""))

    # -- drawing ---------------------------------------------------------------------------

    def _clear(self) -> None:
        """Called with the lock held: the stage row and its unfinished counts leave the live area."""
        for task, _ in self._counts.values():
            if task is not None:
                self._progress.remove_task(task)
        self._counts.clear()
        if self._stage is not None:
            self._progress.remove_task(self._stage)
            self._stage = None

    def _line(self, message: str) -> None:
        prefix = f"[{time.monotonic() - self.started:6.1f}s] " if self.verbosity == VERBOSE else ""
        try:
            self.console.print(f"magpie-trace: {prefix}{message}", markup=False, highlight=False,
                               soft_wrap=True, emoji=False)
        except OSError:  # stderr gone another way than a broken pipe: stop as on SIGPIPE too
            interrupts.output_closed()
