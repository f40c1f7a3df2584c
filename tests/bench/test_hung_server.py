"""A server that hangs while every process of every node runs on (a TP peer stuck in a collective:
no process exits, none is stopped) is a stall, not a lost node (issue 11 findings 12 and 15: a
stall was reported as "node0: no token progress" with node0 marked lost, whichever node hung).

The run stops after stall_timeout_s naming the head, where the symptom is seen, and says that
every node's engine is running; no node is marked lost (result.json, the report's per-node
table); teardown, run.json and the report as for any failed run. Over ssh.
"""

from __future__ import annotations

from magpie_trace.bench.results import read_result
from magpie_trace.config import SimConfig
from tests.run.ending import (
    check_torn_down,
    error_lines,
    long_run_config,
    only_run_dir,
    run_json,
    stages,
    start_cli,
    stop_leftovers,
    write_config,
)
from tests.run.report_statements import check_statements


def test_a_hung_server_is_a_stall_that_marks_no_node_lost(ssh_scheduler, tmp_path, request):
    config = long_run_config(ssh_scheduler(2), tmp_path)
    config.server.sim = SimConfig(startup_s=0.2, ttft_ms=10, itl_ms=5, hang_after_s=0.0)
    config.benchmark.stall_timeout_s = 3.0
    request.addfinalizer(lambda: stop_leftovers(config))
    proc = start_cli(["run", str(write_config(config, tmp_path))])
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 3, err
    errors = error_lines(err)
    assert len(errors) == 1, err
    assert errors[0].startswith("error: node0: no token progress for "), errors
    assert "every node's engine is running (no process exited or stopped)" in errors[0], errors
    run_dir = only_run_dir(config)
    check_torn_down(run_dir)
    assert run_json(run_dir)["error"].startswith("node0: no token progress")
    assert stages(run_dir)["bench"] == "failed" and stages(run_dir)["report"] == "ok"
    data = read_result(run_dir.bench)
    assert data["valid"] is False and data["abort"]["node"] == "node0"
    assert {name: node["lost"] for name, node in data["per_node"].items()} == {"node0": False, "node1": False}
    assert "LOST" not in run_dir.report_md.read_text()
    check_statements(run_dir)
