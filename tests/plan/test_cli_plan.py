"""`magpie-trace plan` on every example, and bad input through the real command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from magpie_trace.cli import main

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples():
    assert len(EXAMPLES) >= 6


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_plans(example):
    scheduler = yaml.safe_load(example.read_text())["scheduler"]
    extra = []
    if not scheduler.get("nodes") and "head_node" not in scheduler:  # slurm: the allocation's
        count = scheduler["slurm"]["nodes"]
        hosts = ", ".join(f"{{host: gpu-{i:03d}}}" for i in range(count))
        extra = ["--set", f"scheduler.nodes=[{hosts}]"]
    result = CliRunner().invoke(main, ["plan", str(example), "--json", *extra])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["schema"] == "magpie-trace/plan/1"
    assert plan["nodes"][0]["role"] == "head"
    for group in plan.get("groups") or [{"name": None, "layout": plan["layout"]}]:
        ranks = [r["global_rank"] for node in plan["nodes"] if node.get("group") == group["name"]
                 for r in node["ranks"]]  # ranks are numbered per group
        assert sorted(ranks) == list(range(group["layout"]["world_size"]))


def test_plan_prints_per_node_host_role_ranks_command_env():
    result = CliRunner().invoke(main, ["plan", str(EXAMPLES[0].parent / "vllm-tp16-2node.yaml")])
    assert result.exit_code == 0
    assert "[node1] host=gpu-node-1 address=10.0.0.2 role=worker" in result.output
    assert "--headless" in result.output and "env: VLLM_HOST_IP=10.0.0.2" in result.output


def test_plan_shows_groups_router_and_every_node_with_secrets_masked():
    """A deployment of groups: one line per group (layout, nodes, API, KV port), the router (node,
    URL, its exact command, its env masked), then every node with its group."""
    result = CliRunner().invoke(main, ["plan", str(EXAMPLES[0].parent / "sglang-pd-2p2d.yaml"),
                                       "--set", "router.env.ROUTER_TOKEN=s3cret-router-value"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == [
        "sglang on 4 node(s) via ssh, 2 group(s); endpoint(s) http://10.0.0.1:8000",
        "  group prefill (prefill): TP16 PP1 DP1 EP16 on node0, node1; API http://10.0.0.1:30000; KV port 8998",
    ]
    assert lines[2].startswith("  group decode (decode): TP16 PP1 DP1 EP16 on node2, node3; API "
                               "http://10.0.0.3:30000")
    assert lines[4] == "[router] sglang-router on node0 at http://10.0.0.1:8000"
    assert lines[5].startswith("  command: sglang-router launch --host 0.0.0.0 --port 8000 "
                               "--pd-disaggregation --prefill http://10.0.0.1:30000 8998 "
                               "--decode http://10.0.0.3:30000 ")
    assert "  env: ROUTER_TOKEN=***" in lines and "s3cret-router-value" not in result.output
    heads = [line for line in lines if line.startswith("[node")]
    assert heads == [
        "[node0] host=gpu-node-0 address=10.0.0.1 role=head group=prefill",
        "[node1] host=gpu-node-1 address=10.0.0.2 role=worker group=prefill",
        "[node2] host=gpu-node-2 address=10.0.0.3 role=worker group=decode",
        "[node3] host=gpu-node-3 address=10.0.0.4 role=worker group=decode",
    ]
    assert result.output.count("--disaggregation-mode prefill") == 2
    assert result.output.count("--disaggregation-mode decode") == 2


def test_cli_error_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("scheduler: {nodes: [a]}\nserver: {model: m, tp: 12, xyz: 1}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "magpie_trace.cli", "plan", str(bad)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {bad}: server.xyz: unknown key"
    assert "Traceback" not in proc.stderr


def test_set_override_from_the_command_line():
    example = str(EXAMPLES[0].parent / "vllm-tp16-2node.yaml")
    result = CliRunner().invoke(main, ["plan", example, "--json", "--set", "server.tp=8", "--set", "server.pp=2"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["layout"]["pp"] == 2


leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6), st.lists(st.integers(0, 9), max_size=3),
)
keys = st.sampled_from(
    ["scheduler", "server", "profile", "benchmark", "output", "nodes", "tp", "pp", "dp", "ep", "model",
     "engine", "backend", "head_node", "worker_nodes", "gpus_per_node", "host", "port", "env", "x"]
)
tree = st.recursive(leaf, lambda children: st.dictionaries(keys, children, max_size=5), max_leaves=20)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=tree)
def test_random_configs_never_traceback(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(main, ["plan", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        error = json.loads(result.stdout)["error"]  # --json: the same failure as an object
        assert error["exit_code"] == 2 and lines[0] == f"error: {error['message']}"
