"""`magpie-trace run` and `submit` on a real Slurm cluster (tests/fixtures/slurm_cluster.py): the
sim engine on 1, 2 and 3 Slurm nodes, inside an allocation (salloc) and asking for one."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from magpie_trace.launch import load_state
from magpie_trace.rundir import RunDir, find_run_dir
from tests.fixtures.slurm_cluster import SlurmCluster
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
