"""`magpie-trace run` on the Slurm test cluster when something goes wrong: each failure is one
line naming the node (or the request), a non-zero exit, and afterwards squeue shows no job or step
of ours and no process of the run is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir
from tests.fixtures.slurm_cluster import SlurmCluster
from tests.procs import wait_for
from tests.slurm.configs import outside_env, processes_under, sim_run_config

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "magpie_trace.cli"]
LONG_BENCH = {"num_prompts": 600, "output_len": 200, "concurrency": [8], "stall_timeout_s": 4.0,
              "max_duration_s": 120}


class RunningCli:
    """`magpie-trace run` outside any allocation (it asks for one), its stderr read as it comes."""

    def __init__(self, cluster: SlurmCluster, config: Path) -> None:
        self.proc = subprocess.Popen([*CLI, "run", str(config)], env=outside_env(cluster), cwd=REPO,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def the_error(self, timeout_s: float = 180) -> tuple[int, str]:
        """(exit code, the one `error:` line); every error is exactly one line."""
        try:
            self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        self._reader.join(10)
        errors = [line for line in self.lines if line.startswith("error:")]
        assert len(errors) == 1, "\n".join(self.lines[-40:])
        return self.proc.returncode, errors[0]

    def benchmarking(self, tmp_path: Path) -> RunDir:
        """The run folder once the measured load is under way (its progress line came)."""
        assert wait_for(lambda: any(": c8: 600 " in line for line in self.lines), 180), \
            "\n".join(self.lines[-40:])
        time.sleep(1.0)
        return RunDir(next((tmp_path / "runs").glob("*/state.json")).parent)


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
    code, error = RunningCli(slurm_cluster, config).the_error()
    assert code == 1
    assert error.startswith("error: node1: process exited with code 1 during startup"), error
    check_nothing_left(slurm_cluster, tmp_path)


def test_an_engine_killed_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    run = RunningCli(slurm_cluster, config)
    run_dir = run.benchmarking(tmp_path)
    os.kill(engine_pid(load_state(run_dir).handles["node1"].pid), signal.SIGKILL)
    code, error = run.the_error()
    assert code == 3, error
    assert error.startswith("error: node1: engine process "), error
    assert "exited with code 137 (SIGKILL) during the benchmark" in error
    check_nothing_left(slurm_cluster, tmp_path)


def test_a_step_cancelled_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    run = RunningCli(slurm_cluster, config)
    run_dir = run.benchmarking(tmp_path)
    step = load_state(run_dir).handles["node1"].extra["step_id"]
    assert slurm_cluster.run("scancel", step).returncode == 0
    code, error = run.the_error()
    assert code == 3, error
    assert error.startswith("error: node1: engine process "), error
    check_nothing_left(slurm_cluster, tmp_path)


def test_a_step_stopped_mid_benchmark(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """SIGSTOP on node 1's step (a hang): its monitor, a step of its own on that node, sees the
    engine stopped and names the node; the stopped step is still ended at teardown (SIGTERM, then
    SIGCONT)."""
    config = sim_run_config(slurm_cluster, tmp_path, 2, benchmark=LONG_BENCH, profile={"enabled": False})
    run = RunningCli(slurm_cluster, config)
    run_dir = run.benchmarking(tmp_path)
    step = load_state(run_dir).handles["node1"].extra["step_id"]
    slurm_cluster.run("scancel", "--signal=STOP", step)
    started = time.monotonic()
    code, error = run.the_error()
    assert code == 3, error
    assert time.monotonic() - started < 40
    assert error.startswith("error: node1: "), error
    assert "stopped" in error, error
    check_nothing_left(slurm_cluster, tmp_path)


def test_an_allocation_that_never_comes(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    """More nodes than the partition has: Slurm keeps the request pending; it is given up."""
    config = sim_run_config(slurm_cluster, tmp_path, 4, scheduler={"slurm": {"wait_s": 3}})
    started = time.monotonic()
    code, error = RunningCli(slurm_cluster, config).the_error()
    assert time.monotonic() - started < 30
    assert code == 1
    assert error.startswith("error: scheduler.slurm: allocation (4 nodes, partition debug) not "
                            "granted within 3 s (scheduler.slurm.wait_s); it was pending"), error
    assert error.endswith("; cancelled")
    check_nothing_left(slurm_cluster, tmp_path)
