"""Rank placement and per-node command lines for the layouts users run."""

from __future__ import annotations

import pytest

from magpie_trace.config import config_from_dict
from magpie_trace.errors import ConfigError
from magpie_trace.plan import make_plan


def make_config(engine: str, nnodes: int, gpus: int = 8, **server: object):
    return config_from_dict(
        {
            "scheduler": {
                "backend": "ssh",
                "nodes": [{"host": f"gpu{i}", "address": f"10.0.0.{i + 1}"} for i in range(nnodes)],
                "gpus_per_node": gpus,
            },
            "server": {"engine": engine, "model": "/models/m", **server},
        },
        source="test.yaml",
    )


def flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tp16_on_two_nodes_splits_tp_ranks_in_halves(engine):
    plan = make_plan(make_config(engine, 2, tp=16))
    assert [r.tp for r in plan.nodes[0].ranks] == list(range(8))
    assert [r.tp for r in plan.nodes[1].ranks] == list(range(8, 16))
    assert [r.global_rank for r in plan.ranks] == list(range(16))
    for node in plan.nodes:
        assert flag(node.args, "--nnodes") == "2"
        assert flag(node.args, "--node-rank") == str(node.index)
    if engine == "vllm":
        assert "--headless" not in plan.nodes[0].args and "--headless" in plan.nodes[1].args
        assert flag(plan.nodes[1].args, "--master-addr") == "10.0.0.1"
        assert flag(plan.nodes[1].args, "--tensor-parallel-size") == "16"
        assert plan.nodes[1].env["VLLM_HOST_IP"] == "10.0.0.2"
        assert flag(plan.nodes[0].args, "--port") == "8000"
        assert flag(plan.nodes[1].args, "--port") is None
    else:
        # SGLang: the same command on every node, only --node-rank differs.
        a0, a1 = plan.nodes[0].args, plan.nodes[1].args
        assert [x for x in a0 if x != "0"] == [x for x in a1 if x != "1"]
        assert flag(a0, "--dist-init-addr") == "10.0.0.1:20000"
        assert flag(a0, "--host") == "0.0.0.0"
        assert plan.nodes[1].env["SGLANG_HOST_IP"] == "10.0.0.2"
        assert plan.health_path == "/health_generate"
    assert plan.head_url.startswith("http://10.0.0.1:")
    assert [n.serves_http for n in plan.nodes] == [True, False]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tp8_pp2_puts_one_stage_per_node(engine):
    plan = make_plan(make_config(engine, 2, tp=8, pp=2))
    assert {(r.pp, r.tp) for r in plan.nodes[0].ranks} == {(0, t) for t in range(8)}
    assert {(r.pp, r.tp) for r in plan.nodes[1].ranks} == {(1, t) for t in range(8)}
    assert [r.global_rank for r in plan.nodes[1].ranks] == list(range(8, 16))
    pp_flag = "--pipeline-parallel-size" if engine == "vllm" else "--pp-size"
    assert flag(plan.nodes[1].args, pp_flag) == "2"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_dp4_tp4_puts_two_replicas_per_node(engine):
    plan = make_plan(make_config(engine, 2, tp=4, dp=4))
    assert {r.dp for r in plan.nodes[0].ranks} == {0, 1}
    assert {r.dp for r in plan.nodes[1].ranks} == {2, 3}
    assert [r.tp for r in plan.nodes[1].ranks] == [0, 1, 2, 3, 0, 1, 2, 3]
    if engine == "vllm":
        a1 = plan.nodes[1].args
        assert flag(a1, "--data-parallel-size") == "4"
        assert flag(a1, "--data-parallel-size-local") == "2"
        assert flag(a1, "--data-parallel-start-rank") == "2"
        assert flag(a1, "--data-parallel-address") == "10.0.0.1"
        assert "--headless" in a1
        assert flag(plan.nodes[0].args, "--data-parallel-start-rank") is None
    else:
        assert flag(plan.nodes[1].args, "--dp-size") == "4"


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tp32_on_four_nodes(engine):
    plan = make_plan(make_config(engine, 4, tp=32))
    assert [len(n.ranks) for n in plan.nodes] == [8, 8, 8, 8]
    assert [n.ranks[0].tp for n in plan.nodes] == [0, 8, 16, 24]
    assert [n.role for n in plan.nodes] == ["head", "worker", "worker", "worker"]


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_tp16_ep16(engine):
    ep = 16
    plan = make_plan(make_config(engine, 2, tp=16, ep=ep))
    assert [r.ep for r in plan.ranks] == list(range(16))
    if engine == "vllm":
        assert "--enable-expert-parallel" in plan.nodes[1].args
    else:
        assert flag(plan.nodes[1].args, "--ep-size") == "16"


def test_vllm_ray_executor_runs_one_driver_on_the_head():
    plan = make_plan(make_config("vllm", 2, tp=16, executor="ray"))
    assert flag(plan.nodes[0].args, "--distributed-executor-backend") == "ray"
    assert "--nnodes" not in plan.nodes[0].args
    assert plan.nodes[1].args is None and plan.nodes[1].argv is None


@pytest.mark.parametrize(
    "server, message",
    [
        ({"tp": 12}, "TP x PP = 12 spans nodes"),
        ({"tp": 32}, "needs 32 GPUs but the 2 node(s) have 16"),
        ({"tp": 4, "dp": 3}, "cannot be split evenly"),
        ({"tp": 2, "dp": 3}, "DP3 replicas of TP x PP = 2 GPUs cannot be split evenly"),
        ({"tp": 16, "ep": 8, "engine": "vllm"}, "vLLM's expert-parallel size is TP x DP = 16"),
    ],
)
def test_impossible_layouts_are_refused_with_one_line(server, message):
    server = dict(server)
    engine = server.pop("engine", "sglang" if "ep" not in server else "vllm")
    with pytest.raises(ConfigError) as info:
        make_plan(make_config(engine, 2, **server))
    text = str(info.value)
    assert message in text and "\n" not in text and text.startswith("test.yaml")


def test_profiling_arms_each_engine_at_launch():
    vllm = make_config("vllm", 2, tp=16)
    vllm.profile.enabled = True
    vllm.profile.record_shapes = True
    plan = make_plan(vllm, run_id="r1")
    import json

    cfg = json.loads(flag(plan.nodes[1].args, "--profiler-config"))
    assert cfg["profiler"] == "torch" and cfg["torch_profiler_record_shapes"] is True
    assert cfg["torch_profiler_dir"] == plan.nodes[1].trace_dir
    assert "r1" in plan.nodes[1].trace_dir
    sgl = make_config("sglang", 2, tp=16)
    sgl.profile.enabled = True
    plan = make_plan(sgl, run_id="r1")
    assert plan.nodes[1].env["SGLANG_TORCH_PROFILER_DIR"] == plan.nodes[1].trace_dir


def test_env_precedence_node_over_server_over_scheduler_and_secrets_masked():
    config = make_config("vllm", 2, tp=16, env={"A": "server", "HF_TOKEN": "hf_secret"})
    config.scheduler.env = {"A": "sched", "B": "sched"}
    config.scheduler.nodes[1].env = {"A": "node"}
    plan = make_plan(config)
    assert plan.nodes[0].env["A"] == "server" and plan.nodes[1].env["A"] == "node"
    assert plan.nodes[0].env["B"] == "sched"
    assert plan.nodes[0].env["HF_TOKEN"] == "hf_secret"
    assert plan.to_dict()["nodes"][0]["env"]["HF_TOKEN"] == "***"
