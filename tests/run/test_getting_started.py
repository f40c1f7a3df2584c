"""docs/getting-started.md's stage-by-stage block, run as written (on the simulator): the capture
falls inside the load, so the merge finds collectives and aligns the clocks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import yaml

from magpie_trace.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "getting-started.md"
DOC_CONFIG = "examples/vllm-tp16-2node.yaml"


def stage_by_stage_block() -> str:
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    (block,) = [b for b in blocks if "magpie-trace launch" in b and "magpie-trace profile" in b]
    return block


def test_the_documented_stage_sequence_profiles_a_busy_server_and_merges(tmp_path):
    config = yaml.safe_load((ROOT / "examples" / "local-sim.yaml").read_text())
    config["server"].update(port=free_port(), rendezvous_port=free_port())
    # One load point long enough to cover the block's sleep and capture (~21 req/s at concurrency 4).
    config["benchmark"].update(concurrency=[4], num_prompts=420)
    config["output"] = {"dir": "magpie-runs"}
    (tmp_path / "examples").mkdir()
    (tmp_path / DOC_CONFIG).write_text(yaml.safe_dump(config))
    script = "set -euo pipefail\n" + stage_by_stage_block()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL)
    run_dir = (tmp_path / "magpie-runs" / "latest").resolve()
    try:
        assert proc.returncode == 0, proc.stderr[-3000:]
        alignment = orjson.loads((run_dir / "merged" / "alignment.json").read_bytes())
        node1 = alignment["nodes"]["node1"]
        assert abs(node1["offset_ns"] / 1e6 - 3.2) < 0.1, node1  # the sim's 3.2 ms, found
        assert (run_dir / "report.md").is_file()
    finally:
        subprocess.run([sys.executable, "-m", "magpie_trace.cli", "stop", DOC_CONFIG], cwd=tmp_path,
                       env=env, capture_output=True, timeout=120)
