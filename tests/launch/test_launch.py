"""Launch, readiness and teardown with the sim engine through real backends (local, ssh)."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from magpie_trace.config import SimConfig
from magpie_trace.errors import NodeError
from magpie_trace.launch import launch, load_state
from magpie_trace.plan import make_plan
from magpie_trace.rundir import new_run_dir
from tests.launch.simcluster import (
    free_port,
    launched,
    local_scheduler,
    sim_config,
)
from tests.procs import leftover_processes, wait_for


@pytest.fixture(params=["local", "ssh"])
def scheduler_for(request, tmp_path, ssh_scheduler):
    def make(nodes: int):
        if request.param == "local":
            return local_scheduler(tmp_path, nodes)
        return ssh_scheduler(nodes)

    return make


@pytest.mark.parametrize("nodes", [1, 2, 8])
def test_launch_ready_serve_stop_leaves_nothing(scheduler_for, tmp_path, nodes):
    with launched(sim_config(scheduler_for(nodes), tmp_path)) as (plan, _, _):
        assert len(plan.nodes) == nodes


def test_worker_exiting_during_startup_is_named_and_everything_stops(tmp_path):
    # The head waits for every node to join; node2 exits before its startup delay is over.
    config = sim_config(
        local_scheduler(tmp_path, 3), tmp_path, sim=SimConfig(startup_s=1.0, die_after_s={2: 0.1})
    )
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    with pytest.raises(NodeError) as info:
        launch(plan, run_dir)
    message = str(info.value)
    assert message.startswith("node2: process exited with code 1 during startup")
    assert "\n" not in message
    state = load_state(run_dir)
    assert state.stopped_at is not None
    assert not leftover_processes(h.pgid for h in state.handles.values())


def test_head_that_never_becomes_healthy_times_out(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path, ready_timeout_s=2.0)
    config.server.command = [sys.executable, "-c", "import time; print('loading'); time.sleep(600)"]
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    started = time.monotonic()
    with pytest.raises(NodeError) as info:
        launch(plan, run_dir, preflight=False)
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert message.startswith("node0: not healthy after 2 s") and "loading" in message
    state = load_state(run_dir)
    assert not leftover_processes(h.pgid for h in state.handles.values())


def test_busy_port_is_refused_before_launch_naming_the_node(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", config.server.port))
        busy.listen()
        plan = make_plan(config)
        run_dir = new_run_dir(config.output.dir, plan.run_id)
        with pytest.raises(NodeError, match=rf"^node0: preflight: port {config.server.port} already in use"):
            launch(plan, run_dir)
        assert not run_dir.state.exists()  # nothing was started


def test_busy_port_without_preflight_still_names_the_head(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path)
    with socket.socket() as busy:
        busy.bind((config.server.host, config.server.port))
        busy.listen()
        plan = make_plan(config)
        run_dir = new_run_dir(config.output.dir, plan.run_id)
        with pytest.raises(NodeError, match=r"^node0: process exited with code \d+ during startup"):
            launch(plan, run_dir, preflight=False)
    assert not leftover_processes(h.pgid for h in load_state(run_dir).handles.values())


def test_unreachable_ssh_host_is_named(tmp_path, ssh_scheduler):
    scheduler = ssh_scheduler(2)
    scheduler.nodes[1].ssh_port = free_port()  # nothing listens there
    config = sim_config(scheduler, tmp_path)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    with pytest.raises(NodeError) as info:
        launch(plan, run_dir)
    assert str(info.value).startswith("node1: ")
    assert not run_dir.state.exists()


@pytest.mark.parametrize("problem", ["missing", "different"])
def test_model_copies_are_checked_on_every_node(tmp_path, problem):
    config = sim_config(local_scheduler(tmp_path, 3), tmp_path)
    config.server.model = "./model"
    plan = make_plan(config)
    for node in plan.nodes:
        model = Path(node.workdir) / "model"
        if problem == "missing" and node.index == 1:
            continue
        model.mkdir(parents=True)
        text = '{"hidden": 4}' if not (problem == "different" and node.index == 1) else '{"hidden": 5}'
        (model / "config.json").write_text(text)
        (model / "model.safetensors.index.json").write_text("{}")
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    expected = "does not exist" if problem == "missing" else "config.json differs from the head's copy"
    with pytest.raises(NodeError, match=rf"^node1: preflight: .*{expected}"):
        launch(plan, run_dir)


def test_stop_from_a_fresh_process_ends_exactly_what_launch_started(tmp_path):
    config = sim_config(local_scheduler(tmp_path, 2), tmp_path)
    plan = make_plan(config)
    run_dir = new_run_dir(config.output.dir, plan.run_id)
    state = launch(plan, run_dir)
    pgids = [h.pgid for h in state.handles.values()]
    import subprocess

    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys; from magpie_trace.launch import plan_for_run, stop; from magpie_trace.rundir import RunDir;"
         "from pathlib import Path; r = RunDir(Path(sys.argv[1])); stop(plan_for_run(r), r)",
         str(run_dir.root)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert wait_for(lambda: not leftover_processes(pgids), 10)
