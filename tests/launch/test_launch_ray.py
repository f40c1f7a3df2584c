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

from magpie_trace.config import NodeConfig, SchedulerConfig
from magpie_trace.launch import launch, load_state, stop
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.fixtures.ray_cluster import ENV, LABEL, RayCluster
from tests.launch.simcluster import sim_config
from tests.launch.test_launch import complete
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
    config = sim_config(ray_scheduler(ray_cluster, tmp_path, nodes), tmp_path)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    state = launch(plan, run_dir)
    pgids = [h.pgid for h in state.handles.values()]
    try:
        assert set(state.handles) == {n.name for n in plan.nodes}
        assert state.ready_at is not None
        for node in plan.nodes:
            handle = state.handles[node.name]
            label = ray_cluster.labels[node.index % len(ray_cluster.labels)]
            assert handle.backend == "ray"
            assert handle.extra["ray_node_id"] == ray_cluster.node_ids[label]
            assert node_label_of(handle.pid) == label  # it really runs on that Ray node
        reply = complete(plan.head_url)
        assert reply["choices"][0]["text"] is not None
        assert load_state(run_dir).handles.keys() == state.handles.keys()
        assert json.loads(run_dir.plan.read_text())["layout"]["nnodes"] == nodes
        assert json.loads(run_dir.preflight.read_text())["nodes"][0]["engine_version"]
    finally:
        stop(plan, run_dir)
    assert wait_for(lambda: not leftover_processes(pgids), 10), leftover_processes(pgids)
    assert sorted(p.name for p in run_dir.logs.iterdir()) == sorted(f"{n.name}.log" for n in plan.nodes)
    assert all((run_dir.logs / f"{n.name}.log").stat().st_size > 0 for n in plan.nodes)
