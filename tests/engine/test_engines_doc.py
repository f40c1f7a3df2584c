"""docs/engines.md's "A real vLLM on CPU, step by step", run as written after .ci/setup-engines:
the config it writes, `plan` and `run` on a real vLLM TP=2 across two local "nodes"."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from magpie_trace.bench import read_result
from magpie_trace.ports import free_port
from tests.fixtures.engine_env import cache_root
from tests.fixtures.missing import missing

pytestmark = pytest.mark.engine

ROOT = Path(__file__).resolve().parents[2]


def steps() -> list[str]:
    """The section's bash blocks, as a shell gets them (the list's indentation taken off)."""
    section = (ROOT / "docs" / "engines.md").read_text().split("## A real vLLM on CPU, step by step", 1)[1]
    return [textwrap.dedent(body) for body in re.findall(r"\n *```bash\n(.*?\n) *```", section, re.S)]


def test_the_documented_steps_run(engine_python: Path, tiny_model: Path, tmp_path: Path):
    if cache_root() != Path.home() / ".cache" / "magpie-trace":
        missing("MAGPIE_CACHE_DIR moves the engine venv away from where docs/engines.md looks")
    setup, write_config, plan_and_run = steps()
    assert setup.strip() == "bash .ci/setup-engines"  # done already: engine_python needs it
    port, rendezvous = free_port(), free_port()
    run_line = "magpie-trace run vllm-cpu.yaml"
    assert run_line in plan_and_run
    script = "set -euo pipefail\n" + write_config + plan_and_run.replace(
        run_line, f"{run_line} --set server.port={port} --set server.rendezvous_port={rendezvous} "
                  f"--set output.dir={tmp_path / 'runs'}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1500, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # The plan, as the doc says: node 1 runs the same command with --node-rank 1 and --headless.
    node1 = proc.stdout.split("[node1]", 1)[1].split("\n[", 1)[0]
    assert "--node-rank 1 " in node1 and "--headless" in node1, proc.stdout
    run_dir = (tmp_path / "runs" / "latest").resolve()
    bench = read_result(run_dir / "bench")  # the latest attempt's
    # The capture runs in a load point of its own first; the measured point is the config's.
    assert [p["profiled"] for p in bench["points"]] == [True, False], bench["points"]
    assert bench["valid"] is True and bench["points"][1]["completed"] == 24
    alignment = json.loads((run_dir / "merged" / "alignment.json").read_text())
    assert abs(alignment["nodes"]["node1"]["offset_ns"]) < 2_000_000  # one clock: near zero
    assert (run_dir / "report.html").is_file()
