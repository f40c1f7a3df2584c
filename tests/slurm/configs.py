"""Config files for runs on the Slurm test cluster: the sim engine, 2 ranks per Slurm node."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from magpie_trace.config import Config, NodeConfig
from magpie_trace.ports import free_port
from tests.fixtures.slurm_cluster import SlurmCluster

OFFSET_MS = 2.5  # node 1's clock lead in the sim


def as_if_allocated(config: Config) -> Config:
    """A Slurm config that lists no nodes, with the nodes an allocation of scheduler.slurm.nodes
    would give it (the slurm backend fills them so once Slurm grants one), to plan it anywhere."""
    if config.scheduler.backend == "slurm" and not config.scheduler.nodes:
        config.scheduler.nodes = [
            NodeConfig(host=f"gpu-node-{i}", name=f"node{i}", address=f"10.0.0.{i + 1}")
            for i in range(config.scheduler.slurm.nodes or 2)
        ]
    return config


def sim_run_config(cluster: SlurmCluster, tmp_path: Path, nodes: int, **sections: Any) -> Path:
    """A YAML config: the sim with TP = 2 x nodes on `nodes` Slurm nodes (n1 is the head: Slurm
    hands out an idle cluster's nodes lowest first), a short benchmark and a profile window.
    Each section's keys in `sections` are merged over these."""
    head = cluster.address("n1")
    data: dict[str, Any] = {
        "scheduler": {
            "backend": "slurm", "gpus_per_node": 2, "workdir": str(tmp_path / "nodes"),
            "slurm": {"nodes": nodes, "partition": cluster.partition, "wait_s": 60, "time": "10"},
        },
        "server": {
            "engine": "sim", "model": "sim-model", "tp": 2 * nodes, "host": head,
            "port": free_port(head), "rendezvous_port": free_port(head), "ready_timeout_s": 60,
            "sim": {"startup_s": 0.2, "ttft_ms": 10, "itl_ms": 5, "clock_offset_ms": {1: OFFSET_MS}},
            # The engine's first log line says which Slurm node its step runs on.
            "command": ["sh", "-c", 'echo "SLURMD_NODENAME=$SLURMD_NODENAME"; exec "$@"', "sh",
                        sys.executable, "-m", "magpie_trace.engines.sim"],
        },
        "profile": {"enabled": True, "start_after_s": 0.2, "duration_s": 0.8},
        "benchmark": {"input_len": 32, "output_len": 24, "num_prompts": 24, "concurrency": [2, 8],
                      "warmup_requests": 2},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for name, keys in sections.items():
        for key, value in keys.items():
            if isinstance(value, dict) and isinstance(data[name].get(key), dict):
                data[name][key].update(value)
            else:
                data[name][key] = value
    path = tmp_path / f"slurm-{nodes}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def outside_env(cluster: SlurmCluster) -> dict[str, str]:
    """This process's environment for the cluster, without any allocation of ours."""
    return {k: v for k, v in cluster.env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def processes_under(path: Path) -> list[str]:
    """Command lines that mention path (every process a run under path started names it)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if str(path).encode() in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found
