"""Ctrl-C while a node's start is in flight must not orphan that node's engine.

Over ssh, Ctrl-C reaches the ssh client too (the terminal signals the whole foreground group), so
a start can have launched the engine on the node while its reply (pid, process group) never
arrives. The reply is lost here on purpose, after the real start on the real node: the backend's
start runs, then the interrupt comes. Launch must still find the engine, from what it recorded
before the start and what the node-side launcher wrote first, and stop it.
"""

from __future__ import annotations

import json

import pytest

from magpie_trace.backends import make_backend
from magpie_trace.launch import launch, load_state
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import local_scheduler, sim_config
from tests.launch.test_launch_ray import ray_scheduler
from tests.procs import leftover_processes, wait_for


def lose_the_reply_of(backend, node_name: str, run_dir, started: list) -> None:
    """node_name's start runs for real on its node, then Ctrl-C arrives before its reply."""
    real_start = backend.start

    def start(node, argv, env, log_path, cwd=None):
        if node.name == node_name:
            state = json.loads(run_dir.state.read_text())
            assert node_name in state["starting"], state  # recorded before the start
        handle = real_start(node, argv, env, log_path, cwd=cwd)
        started.append(handle)
        if node.name == node_name:
            raise KeyboardInterrupt
        return handle

    backend.start = start


@pytest.mark.parametrize("backend_name", ["local", "ssh", "ray", "slurm"])
def test_ctrl_c_during_a_start_leaves_no_engine(backend_name, tmp_path, request):
    if backend_name == "local":
        scheduler = local_scheduler(tmp_path, 2)
    elif backend_name == "ssh":
        scheduler = request.getfixturevalue("ssh_scheduler")(2)
    elif backend_name == "slurm":
        job = request.getfixturevalue("slurm_job")
        scheduler = request.getfixturevalue("slurm_cluster").scheduler(tmp_path / "nodes", 2, job)
    else:
        scheduler = ray_scheduler(request.getfixturevalue("ray_cluster"), tmp_path, 2)
    for i, node in enumerate(scheduler.nodes):
        node.name = f"node{i}"
    config = sim_config(scheduler, tmp_path)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    backend = make_backend(config.scheduler)
    started: list = []
    lose_the_reply_of(backend, "node1", run_dir, started)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch(plan, run_dir, backend, preflight=False)
        assert {h.node for h in started} == {"node0", "node1"}  # both engines really started
        pgids = [h.pgid for h in started]
        assert wait_for(lambda: not leftover_processes(pgids), 15), leftover_processes(pgids)
        state = load_state(run_dir)
        assert state.stopped_at is not None and not state.starting
        assert set(state.handles) == {"node0", "node1"}  # node1's found from its node's record
        assert state.handles["node1"].pid == next(h.pid for h in started if h.node == "node1")
    finally:
        nodes = {n.name: n for n in config.scheduler.nodes}
        for handle in started:  # whatever the outcome, the test leaves nothing behind
            backend.stop(nodes[handle.node], handle, grace_s=2)
        backend.close()
