"""Issue 11 finding 13: `ray.address: auto` on a host where several Ray clusters run is refused.

Found on a shared host: Ray's `auto` joins the cluster started last (a log line says so, which
nobody sees), and the run went to someone else's cluster. Here the session's 3-node cluster and
a second one-node cluster, both on loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from magpie_trace.config import NodeConfig
from tests.fixtures.ray_cluster import RayCluster, _node_args
from tests.launch.simcluster import sim_config


def test_auto_with_two_clusters_on_the_host_is_refused(ray_cluster: RayCluster, tmp_path):
    from ray.cluster_utils import Cluster

    second = Cluster(initialize_head=True, shutdown_at_exit=True, head_node_args={
        **_node_args("other"), "include_dashboard": False, "no_monitor": True, "include_log_monitor": False})
    other = str(second.address)
    try:
        scheduler = ray_cluster.scheduler(str(tmp_path / "nodes"), [NodeConfig(host="127.0.0.1", name="node0")])
        scheduler.ray.address = "auto"
        config = sim_config(scheduler, tmp_path)
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(config.to_dict()))
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        proc = subprocess.run([sys.executable, "-m", "magpie_trace.cli", "launch", str(path)], env=env,
                              capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
        if proc.returncode == 0:  # it joined one of them: leave nothing running
            subprocess.run([sys.executable, "-m", "magpie_trace.cli", "stop", str(path)], env=env,
                           capture_output=True, timeout=120)
    finally:
        second.shutdown()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("magpie-trace: ")]
    assert len(errors) == 1 and errors[0].startswith(
        "error: scheduler.ray.address: auto is ambiguous: "), errors
    assert ray_cluster.address in errors[0] and other in errors[0]
    assert errors[0].endswith("; give the GCS host:port of yours")
    assert not list(Path(config.output.dir).glob("*/state.json")), "something was started"
