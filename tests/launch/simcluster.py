"""Sim-engine configs over any backend, for launch/profile/bench tests."""

from __future__ import annotations

from pathlib import Path

from magpie_trace.config import (
    Config,
    OutputConfig,
    ProfileConfig,
    SchedulerConfig,
    ServerConfig,
    SimConfig,
    validate,
)
from magpie_trace.ports import free_port  # noqa: F401  (re-exported for tests)


def sim_config(
    scheduler: SchedulerConfig,
    tmp_path: Path,
    ranks_per_node: int = 1,
    profile: bool = False,
    **server: object,
) -> Config:
    """A validated Config: the sim engine with TP = nodes x ranks_per_node on the given nodes."""
    scheduler.gpus_per_node = ranks_per_node
    sim = server.pop("sim", None) or SimConfig(startup_s=0.2)
    server.setdefault("ready_timeout_s", 30.0)
    config = Config(
        scheduler=scheduler,
        server=ServerConfig(
            engine="sim",
            model="sim-model",
            tp=len(scheduler.nodes) * ranks_per_node,
            host=scheduler.nodes[0].address or scheduler.nodes[0].host,
            port=free_port(),
            rendezvous_port=free_port(),
            sim=sim,
            **server,
        ),
        profile=ProfileConfig(enabled=profile),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="test-config",
    )
    validate(config)
    return config


def local_scheduler(tmp_path: Path, nodes: int) -> SchedulerConfig:
    from magpie_trace.config import NodeConfig

    return SchedulerConfig(
        backend="local",
        nodes=[NodeConfig(host="127.0.0.1") for _ in range(nodes)],
        workdir=str(tmp_path / "nodes"),
    )
