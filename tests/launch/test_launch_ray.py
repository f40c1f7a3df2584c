"""Launch, readiness and teardown with the sim engine through the Ray backend, on a real Ray cluster.

The cluster (tests/fixtures/ray_cluster.py) has 3 Ray nodes, all at 127.0.0.1, so config nodes map
to Ray nodes by label. Config node i goes to Ray node i mod 3: 8 config nodes share the 3 Ray nodes
(up to three sim processes on one Ray node; cheaper on 2 cores than 5 more raylets). Each config
node has its own workdir, as two "nodes" on one machine must. Every Ray node's processes inherit
MAGPIE_TEST_NODE=<its label>, so /proc tells where each node's command really ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from magpie_trace.cli import main
from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.launch import launch
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.fixtures.ray_cluster import ENV, LABEL, RayCluster
from tests.launch.simcluster import complete, launched, sim_config
from tests.procs import leftover_processes, wait_for


def ray_scheduler(cluster: RayCluster, tmp_path: Path, nodes: int) -> SchedulerConfig:
    """`nodes` config nodes named node<i>, node i on the cluster's Ray node i mod its size."""
    labels = cluster.labels
    configs = [
        NodeConfig(
            host="127.0.0.1",
            name=f"node{i}",
            ray_labels={LABEL: labels[i % len(labels)]},
            workdir=str(tmp_path / "nodes" / f"node{i}"),
        )
        for i in range(nodes)
    ]
    return cluster.scheduler(str(tmp_path / "nodes"), configs)


def node_label_of(pid: int) -> str | None:
    """The MAGPIE_TEST_NODE a process inherited from its Ray node (None once it is gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    prefix = f"{ENV}=".encode()
    return next((item[len(prefix) :].decode() for item in environ if item.startswith(prefix)), None)


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_launch_ready_serve_stop_over_ray_leaves_nothing(ray_cluster: RayCluster, tmp_path, nodes):
    with launched(sim_config(ray_scheduler(ray_cluster, tmp_path, nodes), tmp_path)) as (plan, run_dir, state):
        for node in plan.nodes:
            handle = state.handles[node.name]
            label = ray_cluster.labels[node.index % len(ray_cluster.labels)]
            assert handle.backend == "ray"
            assert handle.extra["ray_node_id"] == ray_cluster.node_ids[label]
            assert node_label_of(handle.pid) == label  # it really runs on that Ray node
    assert all((run_dir.logs / f"{n.name}.log").stat().st_size > 0 for n in plan.nodes)


def test_cli_launch_and_stop_over_ray(ray_cluster: RayCluster, tmp_path):
    """What docs/backends.md shows: `magpie-trace launch CONFIG`, `magpie-trace stop CONFIG`."""
    config = sim_config(ray_scheduler(ray_cluster, tmp_path, 2), tmp_path)
    path = tmp_path / "ray-sim.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    runner = CliRunner()
    result = runner.invoke(main, ["launch", str(path), "--json"])
    assert result.exit_code == 0, result.output
    started = json.loads(result.output[result.output.index("{") :])
    pgids = [h["pgid"] for h in started["handles"].values()]
    try:
        assert complete(started["url"])["choices"][0]["text"] is not None
    finally:
        result = runner.invoke(main, ["stop", str(path)])
    assert result.exit_code == 0 and result.output.startswith("stopped 2 node(s)")
    assert wait_for(lambda: not leftover_processes(pgids), 10), leftover_processes(pgids)


@pytest.mark.parametrize("problem", ["no-such-label", "unreachable-cluster"])
def test_ray_mapping_and_address_failures_are_one_line(ray_cluster: RayCluster, tmp_path, problem):
    scheduler = ray_scheduler(ray_cluster, tmp_path, 2)
    if problem == "no-such-label":
        scheduler.nodes[1].ray_labels = {LABEL: "nope"}
        expected = "error: node1: no alive Ray node has ray_labels {magpie-node=nope}; alive Ray nodes: "
    else:
        scheduler.ray.address = "127.0.0.1:1"  # nothing listens there
        expected = "error: scheduler.ray.address: cannot reach the Ray cluster at 127.0.0.1:1: "
    config = sim_config(scheduler, tmp_path)
    path = tmp_path / "ray-sim.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    result = CliRunner().invoke(main, ["launch", str(path)])
    lines = [line for line in result.output.splitlines() if not line.startswith("magpie-trace:")]
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith(expected), result.output
    runs = tmp_path / "runs"  # refused before anything started (the run folder may not exist yet)
    started = [d for d in runs.iterdir() if (d / "state.json").exists()] if runs.exists() else []
    assert started == []


def agents_alive() -> list[str]:
    """Names of magpie-trace's Ray agents that exist now, in any namespace."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith("magpie-trace-agent")]


def test_agents_booted_by_preflight_are_released_when_launch_fails(ray_cluster: RayCluster, tmp_path):
    import socket

    from magpie_trace.errors import NodeError

    config = sim_config(ray_scheduler(ray_cluster, tmp_path, 3), tmp_path)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", config.server.port))
        busy.listen()
        with pytest.raises(NodeError, match=r"^node0: preflight: port \d+ already in use"):
            launch(plan, run_dir)
    assert not run_dir.state.exists()
    # Preflight booted an agent on each Ray node for the coming starts; none is left behind.
    assert wait_for(lambda: not agents_alive(), 10), agents_alive()
