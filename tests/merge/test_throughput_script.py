"""benchmarks/merge_throughput.py runs as docs/performance.md shows (small: 4 ranks of >= 3 MB), and
its merge recovers the clock offsets it injected."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "merge_throughput.py"


def test_merge_benchmark_prints_both_contenders_and_the_recovered_offsets():
    result = subprocess.run([sys.executable, str(SCRIPT), "--ranks", "4", "--mb", "3"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert re.search(r"input: 4 files, \d+ MB uncompressed", out)
    rows = {name: line.split()[-6:] for line in out.splitlines()
            for name in ("magpie-trace merge", "naive gzip+json") if line.startswith(name)}
    assert set(rows) == {"magpie-trace merge", "naive gzip+json"}
    for fields in rows.values():
        wall, cpu, per_core, per_wall, peak, ratio = map(float, fields)
        assert wall > 0 and cpu > 0 and per_core > 0 and peak > 0 and ratio > 0
    assert "speed-up per core:" in out
    offsets = re.findall(r"offset\s+(-?[\d.]+) us \(injected\s+(-?[\d.]+)\)", out)
    assert len(offsets) == 2 and all(abs(float(got) - float(want)) < 50 for got, want in offsets)
    assert "unaligned" not in out  # every node placed (the printed method), none left on its own clock
