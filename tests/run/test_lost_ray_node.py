"""A Ray node lost mid-run counts as stopped: teardown goes on for the other nodes, the benchmark's
error is the one reported (exit 3), run.json and the report are written, `stop` works after."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from magpie_trace.bench.results import read_result
from magpie_trace.config import NodeConfig
from magpie_trace.launch import load_state
from tests.fixtures.ray_cluster import LABEL
from tests.run.ending import (
    REPO,
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

LOST = "lost-node"


def test_a_lost_ray_node_counts_as_stopped_and_the_first_error_is_reported(ray_cluster, tmp_path, request):
    ray_cluster.add_node(LOST)
    lost_pgids: list[int] = []

    def cleanup() -> None:
        for pgid in lost_pgids:  # the lost "machine"'s processes: on loopback they outlive its raylet
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if LOST in ray_cluster.node_ids:
            ray_cluster.remove_node(LOST)

    request.addfinalizer(cleanup)
    nodes = [
        NodeConfig(host="127.0.0.1", name="node0", ray_labels={LABEL: "n0"},
                   workdir=str(tmp_path / "nodes" / "node0")),
        NodeConfig(host="127.0.0.1", name="node1", ray_labels={LABEL: LOST},
                   workdir=str(tmp_path / "nodes" / "node1")),
    ]
    config = long_run_config(ray_cluster.scheduler(str(tmp_path / "nodes"), nodes), tmp_path)
    config.benchmark.stall_timeout_s = 60  # the loss must be seen as a loss, not as a stall
    request.addfinalizer(lambda: stop_leftovers(config))
    path = write_config(config, tmp_path)
    proc = start_cli(["run", str(path)])
    try:
        seen = read_until(proc, "magpie-trace: c2:")
        run_dir = only_run_dir(config)
        lost_pgids.append(load_state(run_dir).handles["node1"].pgid)
        time.sleep(1.0)
        ray_cluster.remove_node(LOST)  # the machine is gone: its raylet, agent and workers
        os.killpg(lost_pgids[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(seen) + err
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1 and errors[0].startswith("error: node1: "), err
    assert "Traceback" not in err
    check_torn_down(run_dir)
    data = run_json(run_dir)
    assert data["ok"] is False and data["error"].startswith("node1: ")
    assert data["teardown"]["lost"] == ["node1"] and data["teardown"]["error"] is None
    assert stages(run_dir)["bench"] == "failed" and stages(run_dir)["report"] == "ok"
    result = read_result(run_dir.bench)
    assert result["valid"] is False and result["abort"]["node"] == "node1"
    assert result["points"][0]["point"] == "c2"  # what was measured before the loss is kept
    assert "node1" in load_state(run_dir).lost
    again = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "stop", str(path)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "node1" in again.stdout and "lost" in again.stdout
