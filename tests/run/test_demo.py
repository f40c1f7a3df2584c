"""The README's first command: `magpie-trace demo` runs the whole flow here, in under a minute."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from click.testing import CliRunner

from magpie_trace.cli import main
from tests.test_console import segments


def on_a_terminal(argv: list[str], **kwargs) -> tuple[subprocess.CompletedProcess[str], str]:
    """Run argv with stderr on a pseudo-terminal, 120 columns wide, as a user in a terminal sees it
    (stdout captured apart); returns the process and everything written to the terminal."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=slave, text=True,
                              env={**os.environ, "COLUMNS": "120", "TERM": "xterm"}, **kwargs)
    finally:
        os.close(slave)
        reader.join(10)
        os.close(master)
    return proc, b"".join(chunks).decode(errors="replace")


def test_demo_runs_to_completion_and_says_where_everything_is(tmp_path):
    started = time.monotonic()
    proc, terminal = on_a_terminal(
        [sys.executable, "-m", "magpie_trace.cli", "demo", "--output", str(tmp_path / "runs")],
        timeout=120, stdin=subprocess.DEVNULL, umask=0o027,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, terminal[-3000:]
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
    exposed = report.split("## Where communication is exposed", 1)[1].split("\n## ", 1)[0]
    assert "| node0 |" in exposed and "| node1 |" in exposed and "node_breakdown.png" in exposed
    print(f"demo: {elapsed:.1f} s")
    assert elapsed < 60
    # Every output follows the umask (027 here, so 0640 files and 0750 folders), none is 0600.
    modes = {p.relative_to(run_dir).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*")}
    assert len(modes) > 20
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (0o750 if (run_dir / name).is_dir() else 0o640)}
    assert wrong == {}

    # The live display: each line whole above the live area, counts redrawn as they move, an ETA
    # per benchmark point, a line for every finished count and stage.
    shown = segments(terminal)
    for line in ("magpie-trace: ready after ", "magpie-trace: c4 requests: 64/64 ",
                 "magpie-trace: c16 requests: 64/64 ", "magpie-trace: rank traces complete: 4/4",
                 "magpie-trace: traces brought home: 5/5 "):
        assert any(s.startswith(line) for s in shown), line
    assert all(s.startswith("magpie-trace: ") for s in shown if "magpie-trace:" in s)  # never glued
    c4 = {m.group(1) for s in shown if (m := re.search(r"c4 requests +━.* (\d+)/64 ", s))}
    assert len(c4) >= 3, c4
    assert any(re.search(r"c(4|16) requests .* ETA \d+:\d\d", s) for s in shown)
    for name in ("launch", "bench", "collect", "merge", "analyze", "report"):
        assert any(re.fullmatch(rf"magpie-trace: stage {name} done in \d+\.\d s", s) for s in shown), name

    # `magpie-trace report` re-makes the report of that run from its files alone.
    (run_dir / "report.md").unlink()
    config = str(run_dir / "config.yaml")
    result = CliRunner().invoke(main, ["report", config, "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").is_file()
    # ...and from the run folder alone, no config (a colleague given only the folder).
    (run_dir / "report.md").unlink()
    result = CliRunner().invoke(main, ["report", "--run", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.md").read_text() == report
