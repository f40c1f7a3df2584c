"""Issue 11 finding 13: an operator's `magpie-trace stop` during a run is named as such.

Found over ssh: the run then failed with whichever node's engine the watchdog saw end first,
as if that node had died.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import yaml

from magpie_trace.bench.results import latest_attempt
from magpie_trace.config import SimConfig
from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from tests.launch.simcluster import sim_config
from tests.procs import leftover_processes, wait_for
from tests.security.runs import running


def test_a_stop_during_a_run_is_reported_as_the_operators_not_a_nodes(ssh_scheduler, tmp_path):
    config = sim_config(ssh_scheduler(2), tmp_path, sim=SimConfig(startup_s=0.2, ttft_ms=5, itl_ms=5))
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 20, 200
    bench.concurrency, bench.warmup_requests = [2, 4], 1  # stopped during c4, once c2 is measured
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    with running(path, config.output.dir) as (proc, run_dir):
        def first_point_measured() -> bool:
            attempt = latest_attempt(run_dir.bench)
            return attempt is not None and (attempt / "points" / "c2.json").is_file()

        assert wait_for(first_point_measured, 120), "the first load point never ended"
        stopper = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "stop", str(path)],
                                 capture_output=True, text=True, timeout=120)
        _, err = proc.communicate(timeout=120)
    assert stopper.returncode == 0 and stopper.stdout.startswith("stopped 2 node(s)"), stopper.stderr
    assert proc.returncode == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert re.fullmatch(
        rf"error: stopped by magpie-trace stop \(pid {stopper_pid(run_dir)}\) at \d\d:\d\d:\d\d during bench; "
        r"every node was stopped as asked \(what was measured before is kept, marked invalid\)", errors[0]), errors
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is False and run_json["error"] == errors[0].removeprefix("error: ")
    assert not run_json["error"].startswith(("node0", "node1"))
    assert run_dir.report_md.is_file()
    result = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
    assert result["valid"] is False  # the partial benchmark is kept, marked invalid
    assert result["points"][0]["point"] == "c2" and result["points"][0]["completed"] == 200
    state = load_state(run_dir)
    assert state.stop_requested and state.stopped_at is not None
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)


def stopper_pid(run_dir: RunDir) -> int:
    by = load_state(run_dir).stop_requested["by"]
    return int(re.search(r"pid (\d+)", by).group(1))
