"""The README's first command: `magpie-trace demo` runs the whole flow here, in under a minute."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from magpie_trace.cli import main


def test_demo_runs_to_completion_and_says_where_everything_is(tmp_path):
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "magpie_trace.cli", "demo", "--output", str(tmp_path / "runs")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, umask=0o027,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    run_dir = Path(re.search(r"^run \S+: (\S+)$", out, re.M).group(1))
    assert (run_dir / "report.html").is_file() and (run_dir / "report.md").is_file()
    perfetto = re.search(r"^Perfetto: .* load (\S+)$", out, re.M).group(1)
    assert Path(perfetto).is_file()
    tracelens = re.search(r"^TraceLens: (.+)$", out, re.M).group(1)
    assert "--world_size 4" in tracelens and str(run_dir) in tracelens
    report = (run_dir / "report.md").read_text()
    # The demo's node 1 clock is 3.2 ms ahead; the report shows the alignment taking it out.
    alignment = report.split("## Clock alignment", 1)[1]
    offset_us = float(re.search(r"^\| node1 \| (-?[\d,.]+) \|", alignment, re.M).group(1).replace(",", ""))
    assert abs(offset_us - 3200) < 50, offset_us
    print(f"demo: {elapsed:.1f} s")
    assert elapsed < 60
    # Every output follows the umask (027 here, so 0640 files and 0750 folders), none is 0600.
    modes = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*")}
    assert len(modes) > 20
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o750 if (run_dir / name).is_dir() else 0o640)}
    assert wrong == {}

    # `magpie-trace report` re-makes the report of that run from its files alone.
    (run_dir / "report.md").unlink()
    config = str(run_dir / "config.yaml")
    result = CliRunner().invoke(main, ["report", config, "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").is_file()
