"""Sim-engine configs over any backend, for launch/profile/bench tests."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
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
from magpie_trace.launch import LaunchState, launch, load_state, stop
from magpie_trace.plan import Plan, make_plan
from magpie_trace.ports import free_port  # noqa: F401  (re-exported for tests)
from magpie_trace.rundir import RunDir, new_run_dir
from tests.procs import leftover_processes, wait_for


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


def complete(url: str, prompt: str = "hello world") -> dict:
    body = json.dumps({"model": "sim-model", "prompt": prompt, "max_tokens": 3}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@contextmanager
def launched(config: Config) -> Iterator[tuple[Plan, RunDir, LaunchState]]:
    """Launch `config`'s plan and check it serves (every node ready, a completion through the head,
    state, plan and preflight written); on leaving, stop it and check that no process of it is left
    and each node wrote its log."""
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    state = launch(plan, run_dir)
    pgids = [h.pgid for h in state.handles.values()]
    try:
        assert set(state.handles) == {n.name for n in plan.nodes}
        assert state.ready_at is not None
        assert complete(plan.head_url)["choices"][0]["text"] is not None
        assert load_state(run_dir).handles.keys() == state.handles.keys()
        assert json.loads(run_dir.plan.read_text())["layout"]["nnodes"] == len(plan.nodes)
        assert json.loads(run_dir.preflight.read_text())["nodes"][0]["engine_version"]
        yield plan, run_dir, state
    finally:
        stop(plan, run_dir)
    assert wait_for(lambda: not leftover_processes(pgids), 10), leftover_processes(pgids)
    assert sorted(p.name for p in run_dir.logs.iterdir()) == sorted(f"{n.name}.log" for n in plan.nodes)
