"""Every argv the planner writes is accepted by the engine's own parser, and what the engine reads
from it is the layout the plan intends (sizes, node rank, head address, which replica ranks the
node holds by vLLM's own placement rule). See tests/engine/parse_engine_args.py for what each engine
checks here without GPUs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from magpie_trace.config import Config, config_from_dict, load_config
from magpie_trace.plan import NodePlan, Plan, make_plan
from tests.slurm.configs import as_if_allocated

pytestmark = pytest.mark.engine

ENGINES = ("vllm", "sglang")
# The examples that run a real engine (the sim has no parser of its own to check against).
EXAMPLES = [
    path for path in sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    if yaml.safe_load(path.read_text())["server"]["engine"] in ENGINES
]
# name: (nodes of 8 GPUs, server settings)
TOPOLOGIES: dict[str, tuple[int, dict[str, Any]]] = {
    "tp16-2x8": (2, {"tp": 16}),
    "tp8-pp2-2x8": (2, {"tp": 8, "pp": 2}),
    "dp4-tp4-2x8": (2, {"tp": 4, "dp": 4}),
    "tp32-4x8": (4, {"tp": 32}),
    "tp16-ep16-2x8": (2, {"tp": 16, "ep": 16}),
}
CASES = [
    *(f"example:{path.name}" for path in EXAMPLES),
    *(f"{engine}:{name}" for engine in ("vllm", "sglang") for name in TOPOLOGIES),
    "vllm:tp16-2x8-ray-executor",
    "vllm:pd-2p2d", "sglang:pd-2p2d",
]


def _pd_config(engine: str) -> Config:
    """Two prefill servers (TP8, one node each) and one decode server (TP16 x EP16 over two
    nodes) behind the engine's router, as the SGLang multi-node guide deploys DeepSeek-R1."""
    return config_from_dict(
        {
            "scheduler": {
                "backend": "ssh",
                "nodes": [{"host": f"gpu{i}", "address": f"127.0.0.{i + 2}"} for i in range(4)],
                "gpus_per_node": 8,
            },
            "server": {"engine": engine, "model": "org/some-model", "groups": [
                {"name": "prefill0", "role": "prefill", "nodes": [0], "tp": 8},
                {"name": "prefill1", "role": "prefill", "nodes": [1], "tp": 8},
                {"name": "decode", "role": "decode", "nodes": [2, 3], "tp": 16, "ep": 16},
            ]},
            "router": {"kind": "vllm-router" if engine == "vllm" else "sglang-router"},
            "profile": {"enabled": True},
        },
        source=f"{engine}:pd-2p2d",
    )


def _topology_config(engine: str, name: str) -> Config:
    if name == "pd-2p2d":
        return _pd_config(engine)
    executor = {}
    if name.endswith("-ray-executor"):
        name, executor = name.removesuffix("-ray-executor"), {"executor": "ray"}
    nnodes, server = TOPOLOGIES[name]
    return config_from_dict(
        {
            "scheduler": {
                "backend": "ssh",
                "nodes": [{"host": f"gpu{i}", "address": f"127.0.0.{i + 2}"} for i in range(nnodes)],
                "gpus_per_node": 8,
            },
            "server": {"engine": engine, "model": "org/some-model", **server, **executor},
            "profile": {"enabled": True},
        },
        source=f"{engine}:{name}",
    )


def _plan(case: str) -> Plan:
    kind, name = case.split(":", 1)
    if kind == "example":
        return make_plan(as_if_allocated(load_config(Path(__file__).resolve().parents[2] / "examples" / name)))
    return make_plan(_topology_config(kind, name))


@pytest.fixture(scope="module")
def parsed_plans(parse_engine_args) -> dict[str, tuple[Plan, list[dict | None]]]:
    """{case: (plan, one harness result per node, None where the node runs nothing)}, from one
    harness run per engine over every node of every case."""
    plans = {case: _plan(case) for case in CASES}
    results: dict[str, list[dict | None]] = {case: [None] * len(plan.nodes) for case, plan in plans.items()}
    for engine in ENGINES:
        where = [
            (case, node.index)
            for case, plan in plans.items()
            if plan.engine == engine
            for node in plan.nodes
            if node.args is not None
        ]
        answers = parse_engine_args(engine, [plans[case].nodes[index].args for case, index in where])
        for (case, index), answer in zip(where, answers, strict=True):
            results[case][index] = answer
    return {case: (plans[case], results[case]) for case in CASES}


def _in_group(plan: Plan, node: NodePlan) -> tuple[int, int, NodePlan]:
    """(node rank in its group, nodes in its group, its group's head)."""
    group = plan.group_of(node)
    head = next(n for n in plan.nodes if n.index == group.nodes[0])
    return group.nodes.index(node.index), len(group.nodes), head


def _check_vllm_node(plan: Plan, node: NodePlan, p: dict[str, Any]) -> None:
    layout = node.layout
    node_rank, nnodes, head = _in_group(plan, node)
    assert (p["tensor_parallel_size"], p["pipeline_parallel_size"], p["data_parallel_size"]) == (
        layout.tp, layout.pp, layout.dp,
    )  # fmt: skip
    assert p["model"] == plan.config.server.model
    assert p["enable_expert_parallel"] == (layout.ep > 1)
    assert p["headless"] == (node_rank > 0)
    if node_rank == 0:
        assert p["port"] == node.port
    if node.group_role == "serve":
        assert p["kv_transfer_config"] is None
    else:
        roles = {"prefill": "kv_producer", "decode": "kv_consumer"}
        assert p["kv_transfer_config"]["kv_connector"] == "NixlConnector"
        assert p["kv_transfer_config"]["kv_role"] == roles[node.group_role]
    if node.trace_dir is not None:
        assert p["profiler_config"]["profiler"] == "torch"
        assert p["profiler_config"]["torch_profiler_dir"] == node.trace_dir
    if p["distributed_executor_backend"] == "ray":
        # One driver on the head places every rank through Ray.
        assert plan.config.server.executor == "ray" and node.index == 0
        assert p["world_size"] * p["data_parallel_size"] == layout.world_size
        return
    if p["nnodes"] > 1:
        assert (p["nnodes"], p["node_rank"], p["master_addr"]) == (nnodes, node_rank, head.address)
    # vLLM's placement of this node's ranks must be the plan's: its first DP rank, how many DP
    # replicas it hosts, and which ranks of each replica (pp * tp_size + tp) it holds.
    replicas = sorted({r.dp for r in node.ranks})
    assert p["data_parallel_rank"] == replicas[0]
    assert p["data_parallel_size_local"] == len(replicas)
    first, count = p["node_rank_within_dp"] * p["local_world_size"], p["local_world_size"]
    for dp in replicas:
        held = sorted(r.pp * layout.tp + r.tp for r in node.ranks if r.dp == dp)
        assert held == list(range(first, first + count)), f"DP replica {dp}"


def _check_sglang_node(plan: Plan, node: NodePlan, p: dict[str, Any]) -> None:
    layout = node.layout
    node_rank, nnodes, head = _in_group(plan, node)
    group = plan.group_of(node)
    assert (p["tp_size"], p["pp_size"], p["dp_size"], p["ep_size"]) == (layout.tp, layout.pp, layout.dp, layout.ep)
    assert (p["nnodes"], p["node_rank"]) == (nnodes, node_rank)
    if nnodes > 1:
        assert p["dist_init_addr"] == f"{head.address}:{group.rendezvous_port}"
    assert (p["model_path"], p["port"]) == (plan.config.server.model, node.port)
    assert p["disaggregation_mode"] == ("null" if node.group_role == "serve" else node.group_role)
    if node.group_role == "prefill":
        assert p["disaggregation_bootstrap_port"] == group.bootstrap_port


@pytest.mark.parametrize("case", CASES)
def test_every_node_argv_is_accepted_and_read_as_planned(parsed_plans, case):
    plan, results = parsed_plans[case]
    assert results[0] is not None, "the head must run a command"
    for node, result in zip(plan.nodes, results, strict=True):
        if result is None:
            assert plan.config.server.executor == "ray"
            continue
        assert result["ok"], f"{node.name}: {result['error']}\nargv: {node.args}"
        check = _check_vllm_node if plan.engine == "vllm" else _check_sglang_node
        check(plan, node, result["parsed"])
