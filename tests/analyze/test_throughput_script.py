"""benchmarks/analyze_throughput.py runs as docs/performance.md shows (small: 2 ranks of >= 3 MB,
merge and analyze twice each) and prints every step with figures, the analyze/merge ratio and the
events table it measured against."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "analyze_throughput.py"
STEPS = ("merge", "analyze (events + SQL)", "SQL + plots only", "merge with events")


def test_analyze_benchmark_prints_every_step_and_the_ratio():
    result = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "2", "--mb", "3", "--repeat", "2"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    events = re.search(r"input: 2 files, \d+ MB uncompressed \(largest \d+ MB\); ([\d,]+) events in the table", out)
    assert events and int(events.group(1).replace(",", "")) > 10_000
    rows = {name: line[len(name):].split() for line in out.splitlines() for name in STEPS
            if line.startswith(name) and len(line[len(name):].split()) == 5}
    assert set(rows) == set(STEPS), out
    for fields in rows.values():
        assert all(float(x) > 0 for x in fields)
    assert re.search(r"each run, merge / analyze CPU s: [\d.]+/[\d.]+, [\d.]+/[\d.]+$", out, re.MULTILINE)
    assert re.search(r"analyze / merge CPU time: [\d.]+ \(wall [\d.]+\); peak / largest trace: [\d.]+", out)
