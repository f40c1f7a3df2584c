"""examples/local-sim-pd.yaml runs as its comment says (`magpie-trace run`, the real router from
PATH), its fixed ports swapped for free ones: every stage ok, every rank of both groups collected,
and the example's node clocks recovered within the stated uncertainty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from magpie_trace.launch import load_state
from magpie_trace.ports import free_port
from magpie_trace.rundir import find_run_dir
from tests.procs import leftover_processes, wait_for
from tests.router.conftest import router_command

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "local-sim-pd.yaml"


def test_the_local_sim_pd_example_runs_end_to_end(tmp_path):
    router_command("sglang-router")  # skips (fails under CI) without the router installed
    config = yaml.safe_load(EXAMPLE.read_text())
    for group in config["server"]["groups"]:
        group.update(port=free_port(), rendezvous_port=free_port())
        if "bootstrap_port" in group:
            group["bootstrap_port"] = free_port()
    config["router"].update(port=free_port(), metrics_port=free_port())
    config["output"] = {"dir": str(tmp_path / "runs")}
    path = tmp_path / "local-sim-pd.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "run", str(path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = find_run_dir(tmp_path / "runs")
    assert json.loads((run_dir.root / "run.json").read_text())["ok"] is True
    names = sorted(p.name for p in run_dir.traces.glob("node*-TP*.trace.json.gz"))
    assert names == ["node0-TP0-prefill.trace.json.gz", "node1-TP1-prefill.trace.json.gz",
                     "node2-TP0-decode.trace.json.gz", "node3-TP1-decode.trace.json.gz"]
    offsets_ms = {0: 0.0, **config["server"]["sim"]["clock_offset_ms"]}
    alignment = json.loads((run_dir.merged / "alignment.json").read_text())
    for name, fit in alignment["nodes"].items():
        true_ns = offsets_ms[int(name.removeprefix("node"))] * 1e6
        assert abs(fit["offset_ns"] - true_ns) / 1e3 <= fit["uncertainty_us"] + 0.01, (name, fit)
    state = load_state(run_dir)
    assert "router" in state.handles
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
