"""The parse harness accepts the reference multi-node command lines and rejects broken ones, using the
engines' own parsers (vLLM's `vllm serve` parser and config builder, SGLang's prepare_server_args)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.engine

VLLM_HEAD_TP16 = [
    "serve", "deepseek-ai/DeepSeek-R1", "--tensor-parallel-size", "16", "--nnodes", "2",
    "--node-rank", "0", "--master-addr", "10.0.0.1", "--master-port", "29501",
    "--host", "0.0.0.0", "--port", "8000",
    "--profiler-config", '{"profiler": "torch", "torch_profiler_dir": "/tmp/traces"}',
]  # fmt: skip
VLLM_WORKER_TP16 = [
    "serve", "deepseek-ai/DeepSeek-R1", "--tensor-parallel-size", "16", "--nnodes", "2",
    "--node-rank", "1", "--master-addr", "10.0.0.1", "--master-port", "29501", "--headless",
]  # fmt: skip
SGLANG_WORKER_TP16_EP16 = [
    "--model-path", "deepseek-ai/DeepSeek-V3", "--tp-size", "16", "--ep-size", "16", "--nnodes", "2",
    "--node-rank", "1", "--dist-init-addr", "10.0.0.1:20000", "--host", "0.0.0.0", "--port", "30000",
]  # fmt: skip


VLLM_REJECTED = [
    (["serve", "M", "--tensor-parallel-size", "sixteen"], "invalid int value: 'sixteen'"),
    (["serve", "M", "--tensor-parallel-size", "16", "--nnodes", "2", "--node-rank", "2", "--headless"],
     "`--node-rank` must be between 0 and 1"),
    (["serve", "M", "--tensor-parallel-size", "12", "--nnodes", "2", "--node-rank", "1", "--headless"],
     "must be divisible by tensor parallel size (12)"),
    (["serve", "M", "-tp", "16", "--nnodes", "2", "--distributed-executor-backend", "ray"],
     "nnodes > 1 can only be set when distributed executor backend is mp"),
    (["serve", "M", "--tensor-parallel-size", "16", "--dist-init-addr", "10.0.0.1:20000"],
     "unrecognized arguments: --dist-init-addr"),
    (["M", "--tensor-parallel-size", "2"], "must start with 'serve'"),
]  # fmt: skip


@pytest.fixture(scope="module")
def vllm_results(parse_engine_args) -> list[dict]:
    """All vLLM argvs of this module in one harness run (each run costs seconds of imports)."""
    return parse_engine_args("vllm", [VLLM_HEAD_TP16, VLLM_WORKER_TP16, *(a for a, _ in VLLM_REJECTED)])


def test_vllm_accepts_reference_tp16_nodes_and_reports_the_layout(vllm_results):
    head, worker = vllm_results[:2]
    assert head["ok"] and worker["ok"], (head["error"], worker["error"])
    w = worker["parsed"]
    assert (w["tensor_parallel_size"], w["nnodes"], w["node_rank"], w["headless"]) == (16, 2, 1, True)
    assert (w["master_addr"], w["master_port"], w["model"]) == ("10.0.0.1", 29501, "deepseek-ai/DeepSeek-R1")
    # vLLM's own placement: node 1 holds replica ranks 8..15, with the mp executor.
    assert (w["world_size"], w["local_world_size"], w["node_rank_within_dp"]) == (16, 8, 1)
    assert w["distributed_executor_backend"] == "mp"
    h = head["parsed"]
    assert (h["headless"], h["host"], h["port"], h["node_rank_within_dp"]) == (False, "0.0.0.0", 8000, 0)
    assert h["profiler_config"]["profiler"] == "torch"
    assert h["profiler_config"]["torch_profiler_dir"] == "/tmp/traces"


@pytest.mark.parametrize("case", range(len(VLLM_REJECTED)), ids=[m for _, m in VLLM_REJECTED])
def test_vllm_rejects_broken_command_lines_with_its_own_message(vllm_results, case):
    result, message = vllm_results[2 + case], VLLM_REJECTED[case][1]
    assert not result["ok"] and result["parsed"] is None
    assert message in result["error"] and "\n" not in result["error"]


def test_sglang_accepts_reference_tp16_ep16_worker_and_rejects_broken_ones(parse_engine_args):
    good, bad_type, vllm_flag = parse_engine_args(
        "sglang",
        [
            SGLANG_WORKER_TP16_EP16,
            ["--model-path", "M", "--tp-size", "16", "--nnodes", "two"],
            [*SGLANG_WORKER_TP16_EP16, "--headless"],
        ],
    )
    assert good["ok"], good["error"]
    p = good["parsed"]
    assert (p["tp_size"], p["ep_size"], p["nnodes"], p["node_rank"]) == (16, 16, 2, 1)
    assert (p["dist_init_addr"], p["host"], p["port"]) == ("10.0.0.1:20000", "0.0.0.0", 30000)
    assert p["model_path"] == "deepseek-ai/DeepSeek-V3"
    assert not bad_type["ok"] and "argument --nnodes: invalid int value: 'two'" in bad_type["error"]
    assert not vllm_flag["ok"] and "unrecognized arguments: --headless" in vllm_flag["error"]
