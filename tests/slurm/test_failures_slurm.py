"""`magpie-trace run` on the Slurm test cluster when something goes wrong: each failure is one
line naming the node (or the request), a non-zero exit, and afterwards squeue shows no job or step
of ours and no process of the run is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from tests.fixtures.slurm_cluster import SlurmCluster
from tests.procs import wait_for
from tests.slurm.configs import outside_env, processes_under, sim_run_config

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "magpie_trace.cli"]
LONG_BENCH = {"num_prompts": 4000, "output_len": 200, "concurrency": [8], "stall_timeout_s": 4.0,
              "max_duration_s": 120}


def run_cli(cluster: SlurmCluster, config: Path) -> subprocess.Popen[str]:
    """`magpie-trace run` outside any allocation (it asks for one)."""
    return subprocess.Popen([*CLI, "run", str(config)], env=outside_env(cluster), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def the_error(proc: subprocess.Popen[str], timeout_s: float = 180) -> tuple[int, str]:
    """(exit code, the one `error:` line); every error is exactly one line."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    return proc.returncode, errors[0]


def benchmarking(tmp_path: Path) -> RunDir:
    """The run folder once every node is ready and the load has begun."""
    runs = tmp_path / "runs"
    state = wait_for(lambda: next(runs.glob("*/state.json"), None), 90)
    assert state, "launch never wrote state.json"
    run_dir = RunDir(state.parent)
    assert wait_for(lambda: load_state(run_dir).ready_at is not None, 90)
    time.sleep(3.0)  # telemetry started, warmup done, the measured load under way
    return run_dir


def check_nothing_left(cluster: SlurmCluster, tmp_path: Path) -> None:
    assert cluster.wait_idle(), cluster.squeue()
    assert wait_for(lambda: not processes_under(tmp_path), 10), processes_under(tmp_path)


def engine_pid(handle_pid: int) -> int:
    """The engine: the step wrapper's child."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == handle_pid:
                return int(entry)
    raise AssertionError(f"no child of {handle_pid}")


def test_a_step_that_exits_during_startup(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2, server={"sim": {"die_after_s": {1: 0.05}}})
    code, error = the_error(run_cli(slurm_cluster, config))
    assert code == 1
    assert error.startswith("error: node1: process exited with code 1 during startup"), error
    check_nothing_left(slurm_cluster, tmp_path)


def test_an_engine_killed_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    proc = run_cli(slurm_cluster, config)
    run_dir = benchmarking(tmp_path)
    os.kill(engine_pid(load_state(run_dir).handles["node1"].pid), signal.SIGKILL)
    code, error = the_error(proc)
    assert code == 3, error
    assert error.startswith("error: node1: engine process "), error
    assert "exited with code 137 during the benchmark" in error
    check_nothing_left(slurm_cluster, tmp_path)


def test_a_step_cancelled_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    proc = run_cli(slurm_cluster, config)
    run_dir = benchmarking(tmp_path)
    step = load_state(run_dir).handles["node1"].extra["step_id"]
    assert slurm_cluster.run("scancel", step).returncode == 0
    code, error = the_error(proc)
    assert code == 3, error
    assert error.startswith("error: node1: engine process "), error
    check_nothing_left(slurm_cluster, tmp_path)


def test_a_step_stopped_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """SIGSTOP on the head's step: the server hangs; the run ends on the stall, naming it, and the
    stopped step is still ended at teardown (SIGTERM, then SIGCONT)."""
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    proc = run_cli(slurm_cluster, config)
    run_dir = benchmarking(tmp_path)
    step = load_state(run_dir).handles["node0"].extra["step_id"]
    slurm_cluster.run("scancel", "--signal=STOP", step)
    started = time.monotonic()
    code, error = the_error(proc)
    assert code == 3, error
    assert time.monotonic() - started < 40
    assert error.startswith("error: node0: no token progress for "), error
    check_nothing_left(slurm_cluster, tmp_path)


def test_an_allocation_that_never_comes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """More nodes than the partition has: Slurm keeps the request pending; it is given up."""
    config = sim_run_config(slurm_cluster, tmp_path, 4, scheduler={"slurm": {"wait_s": 3}})
    started = time.monotonic()
    code, error = the_error(run_cli(slurm_cluster, config))
    assert time.monotonic() - started < 30
    assert code == 1
    assert error.startswith("error: scheduler.slurm: allocation (4 nodes, partition debug) not "
                            "granted within 3 s (scheduler.slurm.wait_s); it was pending"), error
    assert error.endswith("; cancelled")
    check_nothing_left(slurm_cluster, tmp_path)
