"""Issue 11 finding 3: runs never share a folder, and a folder in use is not written by another.

Found with two runs started in the same second into the same output dir: one run folder and one
set of node dirs for both, results silently mixed, both exit 0. Run ids now carry a random part,
a run folder is made exclusively, and a command working in a run folder holds its lock.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import yaml

from magpie_trace.bench.results import latest_attempt
from magpie_trace.config import SimConfig
from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from magpie_trace.ports import free_port
from tests.launch.simcluster import sim_config
from tests.procs import leftover_processes, wait_for
from tests.security.runs import running

# Loads the config first, then starts the run at an agreed instant: both runs take their run id
# in the same second.
DRIVER = r"""
import json, sys, time
from magpie_trace.config import load_config
from magpie_trace.run import run
config = load_config(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
result = run(config)
print(json.dumps({"run_dir": str(result.run_dir), "ok": result.ok}))
"""


def write_config(config, path: Path, **changes) -> Path:
    raw = config.to_dict()
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        raw[section][key] = value
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "magpie_trace.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def small(config, prompts: int = 12):
    bench = config.benchmark
    bench.input_len, bench.output_len, bench.num_prompts = 16, 8, prompts
    bench.concurrency, bench.warmup_requests = [4], 1
    return config


def test_two_runs_started_in_the_same_second_get_folders_and_node_dirs_of_their_own(ssh_scheduler, tmp_path):
    config = small(sim_config(ssh_scheduler(2), tmp_path, sim=SimConfig(startup_s=0.2, ttft_ms=5, itl_ms=2)))
    paths = [write_config(config, tmp_path / f"run{i}.yaml", server__port=free_port(),
                          server__rendezvous_port=free_port()) for i in range(2)]
    start_at = math.ceil(time.time()) + 6.05  # both loaded by then, even on a busy machine
    procs = [subprocess.Popen([sys.executable, "-c", DRIVER, str(path), str(start_at)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for path in paths]
    outs = [proc.communicate(timeout=300) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], [err[-2000:] for _, err in outs]
    dirs = [Path(json.loads(out.strip().splitlines()[-1])["run_dir"]) for out, _ in outs]
    assert dirs[0] != dirs[1], "both runs wrote into one run folder"
    assert dirs[0].name[:15] == dirs[1].name[:15], "not started in the same second: no test"
    log_paths = set()
    for run_dir in map(RunDir, dirs):
        run_json = json.loads((run_dir.root / "run.json").read_text())
        assert run_json["ok"] is True and run_json["run_id"] == run_dir.run_id
        result = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
        assert result["valid"] is True
        # Its own requests only: the warmup and 12 measured, not the other run's as well.
        assert len((latest_attempt(run_dir.bench) / "requests.jsonl").read_text().splitlines()) == 12
        state = load_state(run_dir)
        assert state.run_id == run_dir.run_id and state.stopped_at is not None
        log_paths |= {h.log_path for h in state.handles.values()}
        assert all(f"/{run_dir.run_id}/" in h.log_path for h in state.handles.values())
        assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
    assert len(log_paths) == 4, "two runs shared a node dir"
    # A run id given twice is refused, and the first run's files are left as they were.
    before = (dirs[0] / "run.json").read_bytes()
    proc = cli("run", str(paths[0]), "--set", f"output.run_id={dirs[0].name}")
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: run {dirs[0].name}: {dirs[0]} already exists (another run's folder); give another "
        "output.run_id, or resume it with `run --from STAGE --run RUN`"]
    assert (dirs[0] / "run.json").read_bytes() == before


def test_a_run_folder_in_use_is_refused_to_a_second_command(ssh_scheduler, tmp_path):
    config = small(sim_config(ssh_scheduler(2), tmp_path, sim=SimConfig(startup_s=0.2, ttft_ms=5, itl_ms=5)),
                   prompts=300)
    config.benchmark.output_len = 40
    path = write_config(config, tmp_path / "run.yaml")
    with running(path, config.output.dir) as (first, run_dir):
        second = cli("run", str(path), "--from", "bench", "--run", run_dir.run_id)
        still_running = first.poll() is None
        out, err = first.communicate(timeout=300)
    assert still_running, "the first run ended before the second command: no test"
    assert second.returncode == 1, second.stderr
    assert second.stderr.splitlines() == [
        f"error: run {run_dir.run_id}: {run_dir.root} is in use by magpie-trace run (pid {first.pid}); "
        "wait for it to end, or stop it with `magpie-trace stop`"]
    assert first.returncode == 0, err
    run_json = json.loads((run_dir.root / "run.json").read_text())
    assert run_json["ok"] is True and run_json["bench_valid"] is True
    result = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
    assert result["valid"] is True and result["points"][0]["completed"] == 300
    state = load_state(run_dir)
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 10)
    # Once it is free, the folder is usable again.
    proc = cli("report", str(path), "--run", run_dir.run_id)
    assert proc.returncode == 0, proc.stderr


def test_an_output_dir_that_is_a_file_is_refused_before_any_node_starts(tmp_path):
    from tests.launch.simcluster import local_scheduler

    config = sim_config(local_scheduler(tmp_path, 2), tmp_path)
    not_a_dir = tmp_path / "runs-file"
    not_a_dir.write_text("mine\n")
    path = write_config(config, tmp_path / "c.yaml", output__dir=str(not_a_dir))
    started = time.monotonic()
    proc = cli("run", str(path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"error: output.dir: {not_a_dir} is a file, not a folder"]
    assert time.monotonic() - started < 30  # no launch was attempted (a Python start on a busy box)
    assert not (tmp_path / "nodes").exists()
    assert not_a_dir.read_text() == "mine\n"
