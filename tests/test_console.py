"""The command line's progress view (magpie_trace.console): in a terminal one live area whose counts
update in place while lines from any thread scroll above it, never inside it; plain lines elsewhere;
-q and -v."""

from __future__ import annotations

import io
import re
import threading
import time

from rich.console import Console

from magpie_trace.console import NORMAL, QUIET, VERBOSE, Display
from magpie_trace.progress import Tally, count, stage, stage_ended

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def segments(raw: str) -> list[str]:
    """What a terminal shows line by line: escape codes gone, split at every carriage return/newline."""
    return [s for s in re.split(r"[\r\n]", ANSI.sub("", raw)) if s.strip()]


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120, color_system=None), out


def test_in_a_terminal_counts_update_in_place_and_lines_never_land_in_the_bar():
    console, out = terminal()
    messages = [f"node{i}: something happened" for i in range(20)]
    with Display(NORMAL, console) as display:
        stage(display, "bench")
        talker = threading.Thread(target=lambda: [(display(m), time.sleep(0.03)) for m in messages])
        talker.start()
        for done in range(0, 9):
            count(display, "c4 requests", done, 8, f"{done} done")
            time.sleep(0.3)  # the display redraws 4 times a second
        talker.join()
        stage_ended(display, "bench", 2.72)
    shown = segments(out.getvalue())
    for message in messages:  # each line whole, on its own, never glued to the bar
        assert f"magpie-trace: {message}" in shown
    assert all("━" not in s for s in shown if "something happened" in s)
    bars = [s for s in shown if s.lstrip(" ⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏").startswith("c4 requests")]
    drawn = {re.search(r" (\d)/8 ", s).group(1) for s in bars}
    assert len(drawn) >= 4, drawn  # the same bar, redrawn with new counts
    assert any(re.search(r"ETA \d:\d\d", s) for s in bars)  # a time left at the current rate
    assert "magpie-trace: c4 requests: 8/8 (8 done)" in shown
    assert "magpie-trace: stage bench done in 2.7 s" in shown


def test_elsewhere_plain_lines_and_a_count_when_it_ends():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=80)
    long = "x" * 200  # never wrapped into two lines
    with Display(NORMAL, console) as display:
        stage(display, "collect")
        display(long)
        tally = Tally(display, "traces brought home", 3, 3_000_000)
        for _ in range(3):
            tally.add(1_000_000)
        stage_ended(display, "collect", 0.5, failed=True)
    assert out.getvalue().splitlines() == [
        "magpie-trace: stage collect",
        f"magpie-trace: {long}",
        "magpie-trace: traces brought home: 3/3 (3.0 of 3.0 MB)",
        "magpie-trace: stage collect failed after 0.5 s",
    ]


def test_quiet_shows_nothing_and_verbose_times_every_line_and_count():
    for level, terminal_like in ((QUIET, True), (QUIET, False), (VERBOSE, False)):
        out = io.StringIO()
        console = Console(file=out, force_terminal=terminal_like, width=100, color_system=None)
        with Display(level, console) as display:
            stage(display, "merge")
            display("hello")
            for done in range(3):
                count(display, "files", done, 2)
        text = ANSI.sub("", out.getvalue())
        if level == QUIET:
            assert text == ""
        else:
            lines = text.splitlines()
            assert all(re.match(r"magpie-trace: \[ +\d+\.\ds\] ", line) for line in lines), lines
            assert [line.split("] ", 1)[1] for line in lines] == [
                "stage merge", "hello", "files: 0/2", "files: 1/2", "files: 2/2"]


def test_a_plain_callable_still_gets_lines():
    lines: list[str] = []
    stage(lines.append, "launch")
    stage_ended(lines.append, "launch", 1.0)
    count(lines.append, "rank traces complete", 1, 4)
    count(lines.append, "rank traces complete", 2, 4, line=False)
    assert lines == ["stage launch", "1/4 rank traces complete"]
