"""benchmarks/launch_fanout.py runs as docs/performance.md shows (smallest case: 1 local node)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.fixtures.missing import missing

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "launch_fanout.py"


def test_fanout_benchmark_prints_its_table():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "1", "--backends", "local", "--repeat", "1"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    header, row = result.stdout.splitlines()
    assert header.split() == ["backend", "nodes", "preflight", "s", "start->ready", "s", "launch", "s", "stop", "s"]
    fields = row.split()
    assert fields[:2] == ["local", "1"]
    preflight, ready, total, stop = map(float, fields[2:])
    assert 0 < ready <= total and abs(preflight + ready - total) < 0.02 and stop > 0


def test_fanout_benchmark_on_slurm_starts_and_stops_its_own_cluster():
    if os.geteuid() != 0:  # the script starts the Slurm test cluster, whose daemons run as root
        missing("the Slurm test cluster runs its daemons as root: run these tests as root")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--nodes", "1", "--backends", "slurm", "--slurm-nodes", "1",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=180, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    row = result.stdout.splitlines()[1].split()
    assert row[:2] == ["slurm", "1"] and 0 < float(row[3]) <= float(row[4])
    assert "slurm: 1-node cluster up in" in result.stderr
