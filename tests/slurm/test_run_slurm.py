"""`magpie-trace run` and `submit` on a real Slurm cluster (tests/fixtures/slurm_cluster.py): the
sim engine on 1, 2 and 3 Slurm nodes, inside an allocation (salloc) and asking for one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir, find_run_dir
from tests.fixtures.slurm_cluster import SlurmCluster
from tests.procs import wait_for
from tests.run.test_run import check_run_layout
from tests.slurm.configs import outside_env, processes_under, sim_run_config

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "magpie_trace.cli"]


def check_ran_on_slurm_nodes(run_dir: RunDir, nodes: int) -> None:
    """Every node's command was its own step on its own Slurm node, as its log says."""
    state = load_state(run_dir)
    hosts = [f"n{i + 1}" for i in range(nodes)]
    assert [state.handles[f"node{i}"].extra["slurm_node"] for i in range(nodes)] == hosts
    assert len({h.extra["step_id"] for h in state.handles.values()}) == nodes
    for i, host in enumerate(hosts):
        first = (run_dir.logs / f"node{i}.log").read_text().splitlines()[0]
        assert first == f"SLURMD_NODENAME={host}", first


def check_nothing_left(cluster: SlurmCluster, tmp_path: Path) -> None:
    assert cluster.wait_idle(), cluster.squeue()
    assert processes_under(tmp_path) == []


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_run_inside_an_allocation(slurm_cluster: SlurmCluster, tmp_path: Path, nodes: int) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, nodes)
    proc = subprocess.run(
        ["salloc", f"--nodes={nodes}", "--job-name=test-inside", *CLI, "run", str(config)],
        env=outside_env(slurm_cluster), cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = find_run_dir(tmp_path / "runs")
    check_run_layout(run_dir, nodes, ranks_per_node=2)
    check_ran_on_slurm_nodes(run_dir, nodes)
    check_nothing_left(slurm_cluster, tmp_path)


@pytest.mark.parametrize("nodes", [1, 2, 3])
def test_run_asks_for_an_allocation(slurm_cluster: SlurmCluster, tmp_path: Path, nodes: int) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, nodes)
    proc = subprocess.run([*CLI, "run", str(config)], env=outside_env(slurm_cluster), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Slurm granted job" in proc.stderr
    run_dir = find_run_dir(tmp_path / "runs")
    check_run_layout(run_dir, nodes, ranks_per_node=2)
    check_ran_on_slurm_nodes(run_dir, nodes)
    check_nothing_left(slurm_cluster, tmp_path)


def test_submit_runs_the_whole_job_as_a_batch_job(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    config = sim_run_config(slurm_cluster, tmp_path, 2)
    dry = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "submit", str(config), "--dry-run"],
                         env=outside_env(slurm_cluster), cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert dry.returncode == 0, dry.stderr
    assert ("#SBATCH --nodes=2\n#SBATCH --signal=B:TERM@120\n#SBATCH --partition=debug\n"
            "#SBATCH --time=10\n") in dry.stdout
    assert f"magpie_trace.cli run {config}" in dry.stdout
    assert slurm_cluster.squeue() == [] and not (tmp_path / "runs").exists()  # nothing submitted

    proc = subprocess.run([*CLI, "submit", str(config), "--", "--job-name=test-submit"],
                          env=outside_env(slurm_cluster), cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    job = lines[0].removeprefix("submitted Slurm job ")
    assert job.isdigit(), proc.stdout
    run_root = Path(lines[1].split()[2])
    assert run_root.parent == tmp_path / "runs"
    assert f"squeue --jobs={job}" in lines[2] and f"tail -f {run_root}.slurm.out" in lines[2]
    assert slurm_cluster.run("squeue", "-h", "-j", job, "-o", "%j").stdout.strip() == "test-submit"
    assert wait_for(lambda: job not in " ".join(slurm_cluster.squeue()), 240), slurm_cluster.squeue()
    out = Path(f"{run_root}.slurm.out").read_text()
    assert f"run {run_root.name}: {run_root}" in out, out[-3000:]
    run_dir = RunDir(run_root)
    assert json.loads((run_dir.root / "run.json").read_text())["ok"] is True
    check_run_layout(run_dir, 2, ranks_per_node=2)
    check_ran_on_slurm_nodes(run_dir, 2)
    assert load_state(run_dir).handles["node0"].extra["job_id"] == job  # inside the batch job
    check_nothing_left(slurm_cluster, tmp_path)


def test_launch_asks_for_an_allocation_that_a_later_stop_finds(slurm_cluster: SlurmCluster,
                                                                tmp_path: Path) -> None:
    """`launch` outside an allocation keeps it (the server runs in it) and records its job id in the
    run's config.yaml; `stop`, another process, ends every step; the allocation is the user's to end."""
    config = sim_run_config(slurm_cluster, tmp_path, 2, profile={"enabled": False})
    env = outside_env(slurm_cluster)
    launched = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "launch", str(config)],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert launched.returncode == 0, launched.stderr[-3000:]
    run_dir = find_run_dir(tmp_path / "runs")
    state = load_state(run_dir)
    job = state.handles["node0"].extra["job_id"]
    assert str(yaml.safe_load(run_dir.config.read_text())["scheduler"]["slurm"]["job_id"]) == job
    steps = {h.extra["step_id"] for h in state.handles.values()}
    assert steps <= set(" ".join(slurm_cluster.squeue()).split())
    try:
        stopped = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "stop", str(config)],
                                 env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert not steps & set(" ".join(slurm_cluster.squeue()).split())
        assert [line.split()[:2] for line in slurm_cluster.squeue()] == [[job, "RUNNING"]]
    finally:
        slurm_cluster.run("scancel", job)
    check_nothing_left(slurm_cluster, tmp_path)
    assert sorted(p.name for p in run_dir.logs.iterdir()) == ["node0.log", "node1.log"]
