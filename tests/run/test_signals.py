"""SIGTERM, SIGHUP, or the reader of the tool's output going away (`... 2>&1 | head`) end a run the
way Ctrl-C does: every node torn down, what was measured kept, run.json and the report written,
exit 128 + the signal's number. Over ssh and Ray, where each was seen to leave engines running."""

from __future__ import annotations

import signal
import time

import pytest

from magpie_trace.bench import read_result

from tests.launch.simcluster import local_scheduler
from tests.launch.test_launch_ray import agents_alive, ray_scheduler
from tests.run.ending import (
    check_torn_down,
    error_lines,
    long_run_config,
    only_run_dir,
    read_until,
    run_json,
    stages,
    start_cli,
    stop_leftovers,
    write_config,
)


def scheduler_for(backend: str, tmp_path, request):
    if backend == "ssh":
        return request.getfixturevalue("ssh_scheduler")(2)
    if backend == "local":
        scheduler = local_scheduler(tmp_path, 2)
        for i, node in enumerate(scheduler.nodes):
            node.name = f"node{i}"
        return scheduler
    return ray_scheduler(request.getfixturevalue("ray_cluster"), tmp_path, 2)


def check_no_agents(config) -> None:
    """Ray: the run's detached per-node agents are gone too."""
    import ray

    ray.init(address=config.scheduler.ray.address, namespace="check", log_to_driver=False,
             ignore_reinit_error=True)
    try:
        assert not agents_alive()
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    "backend, signum",
    [("ssh", signal.SIGTERM), ("ssh", signal.SIGHUP), ("ray", signal.SIGTERM), ("ray", signal.SIGHUP),
     ("local", signal.SIGTERM)],
)
def test_a_signal_tears_down_and_records_like_ctrl_c(backend, signum, tmp_path, request):
    config = long_run_config(scheduler_for(backend, tmp_path, request), tmp_path)
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    try:
        read_until(proc, "magpie-trace: c2:")
        time.sleep(1.0)  # the measured load is under way
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        request.addfinalizer(lambda: stop_leftovers(config))
    name = signal.Signals(signum).name
    assert proc.returncode == 128 + signum, err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith(f"error: terminated by {name}"), err
    assert "Traceback" not in err
    run_dir = only_run_dir(config)
    check_torn_down(run_dir)
    data = run_json(run_dir)
    assert data["ok"] is False and data["error"].startswith(f"terminated by {name}")
    assert stages(run_dir)["bench"] == "failed" and stages(run_dir)["report"] == "ok"
    result = read_result(run_dir.bench)  # what was measured is kept
    assert result["valid"] is False and result["points"][0]["point"] == "c2"
    assert "INVALID RUN" in run_dir.report_md.read_text()
    if backend == "ray":
        check_no_agents(config)


@pytest.mark.parametrize("backend", ["ssh", "ray", "local"])
def test_closed_output_tears_down_like_a_broken_pipe(backend, tmp_path, request):
    """`magpie-trace run ... 2>&1 | head`: once head has gone, the next progress line fails."""
    config = long_run_config(scheduler_for(backend, tmp_path, request), tmp_path)
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    try:
        read_until(proc, "magpie-trace: c2:")
        time.sleep(1.5)  # the measured load is under way (a request takes 1 s)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        request.addfinalizer(lambda: stop_leftovers(config))
    assert proc.returncode == 128 + signal.SIGPIPE
    run_dir = only_run_dir(config)
    check_torn_down(run_dir)
    data = run_json(run_dir)
    assert data["ok"] is False and data["error"].startswith("terminated: the output was closed")
    assert stages(run_dir)["bench"] == "failed" and stages(run_dir)["report"] == "ok"
    result = read_result(run_dir.bench)  # what was measured is kept
    assert result["valid"] is False and result["points"][0]["point"] == "c2"
    if backend == "ray":
        check_no_agents(config)


def test_a_signal_during_launch_stops_what_started(tmp_path, request):
    """SIGTERM while the nodes come up (startup 4 s): no run.json stage is left 'ok' by mistake."""
    from magpie_trace.config import SimConfig

    config = long_run_config(scheduler_for("ssh", tmp_path, request), tmp_path)
    config.server.sim = SimConfig(startup_s=4.0)
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    try:
        read_until(proc, "magpie-trace: started ")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        request.addfinalizer(lambda: stop_leftovers(config))
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert error_lines(err) == ["error: terminated by SIGTERM"], err
    run_dir = only_run_dir(config)
    check_torn_down(run_dir)
    assert stages(run_dir)["launch"] == "failed"
