"""A real vLLM (CPU build) prefill/decode pair behind the real vllm-router, through `magpie-trace
run`: the KV cache moves from the prefill to the decode through vLLM's NixlConnector on CPU
(`kv_buffer_device: cpu`, NIXL's UCX backend from the `nixl` wheel), over two ssh "nodes" on
loopback, the decode node's clock 250 ms ahead under libfaketime.

Real vLLM writes no KV-transfer events into its traces, so the decode group is placed by the
clock probe (or, without one, the launch's preflight measurement: half the ssh round trips,
milliseconds here)."""

from __future__ import annotations

import json
import subprocess

import pytest

from magpie_trace.bench import latest_attempt
from magpie_trace.config import (
    BenchmarkConfig,
    Config,
    GroupConfig,
    OutputConfig,
    ProfileConfig,
    RouterConfig,
    ServerConfig,
    validate,
)
from magpie_trace.launch import load_state
from magpie_trace.ports import free_port
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.fixtures.engine_env import FAKETIME_OFFSET_S, offline_env
from tests.procs import leftover_processes, wait_for
from tests.router.conftest import router_command

pytestmark = pytest.mark.engine
_ENGINE_ENV = ("VLLM_TARGET_DEVICE", "VLLM_CPU_KVCACHE_SPACE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
               "VLLM_NO_USAGE_STATS", "DO_NOT_TRACK")


def _kv(role: str) -> list[str]:
    config = {"kv_connector": "NixlConnector", "kv_role": role, "kv_buffer_device": "cpu"}
    return ["--kv-transfer-config", json.dumps(config)]


@pytest.fixture
def nixl(engine_python):
    found = subprocess.run([str(engine_python), "-c", "import nixl._api"], capture_output=True,
                           env=offline_env(), timeout=120)
    if found.returncode != 0:
        pytest.skip("no nixl in the engine venv (.ci/setup-engines installs it)")


@pytest.mark.timeout(2400)  # two vLLMs starting on a busy 2-core machine
def test_real_vllm_pd_pair_behind_vllm_router(nixl, ssh_scheduler, tiny_model, vllm_command,
                                              engine_env, libfaketime, tmp_path):
    scheduler = ssh_scheduler(2, gpus_per_node=1)
    scheduler.env = {key: engine_env[key] for key in _ENGINE_ENV}
    scheduler.nodes[1].env = {"LD_PRELOAD": str(libfaketime), "FAKETIME": f"+{FAKETIME_OFFSET_S}"}
    prefill, decode = (node.address for node in scheduler.nodes)
    config = Config(
        scheduler=scheduler,
        server=ServerConfig(
            engine="vllm", model=str(tiny_model), command=list(vllm_command), ready_timeout_s=900.0,
            extra_args=["--max-model-len", "512"],
            groups=[
                GroupConfig(name="prefill", role="prefill", nodes=["node0"], host=prefill,
                            port=free_port(prefill), bootstrap_port=free_port(prefill),
                            extra_args=_kv("kv_producer")),
                GroupConfig(name="decode", role="decode", nodes=["node1"], host=decode,
                            port=free_port(decode), bootstrap_port=free_port(decode),
                            extra_args=_kv("kv_consumer")),
            ],
        ),
        router=RouterConfig(kind="vllm-router", host=prefill, port=free_port(prefill),
                            metrics_port=free_port(prefill), policy="round_robin",
                            command=router_command("vllm-router"), ready_timeout_s=120.0),
        profile=ProfileConfig(enabled=True, with_stack=False, start_after_s=1.0, duration_s=3.0,
                              timeout_s=300.0),
        # Two vLLMs compiling their kernels on a 2-core machine left the processes beside them
        # (the node monitors among them) without a CPU for 12-23 s at a time: the nodes are
        # watched every 5 s, so a node is called lost after 25 s of silence, not 10.
        benchmark=BenchmarkConfig(input_len=32, output_len=8, num_prompts=8, concurrency=[2],
                                  warmup_requests=1, stall_timeout_s=120.0, telemetry_interval_s=5.0),
        output=OutputConfig(dir=str(tmp_path / "runs")),
        source="real-vllm-pd-test",
    )
    validate(config)
    result = run(config)
    run_dir = RunDir(result.run_dir)

    bench = json.loads((latest_attempt(run_dir.bench) / "result.json").read_text())
    point = bench["points"][-1]
    assert bench["valid"] is True and point["completed"] == 8
    groups = point["server_groups"]
    assert groups["prefill"]["total"]["generation_tokens"] >= 8  # one token per request (+ warmup)
    assert groups["decode"]["total"]["generation_tokens"] >= 8 * 8 - 8
    assert groups["decode"]["mean_kv_transfer_ms"] > 0  # the decode pulled KV through NIXL
    names = sorted(p.name for p in run_dir.traces.glob("*.trace.json.gz"))
    assert names == ["node0-TP0-prefill.trace.json.gz", "node0-api-server-prefill.trace.json.gz",
                     "node1-TP0-decode.trace.json.gz", "node1-api-server-decode.trace.json.gz"]
    alignment = json.loads((run_dir.merged / "alignment.json").read_text())
    node1 = alignment["nodes"]["node1"]
    error_us = abs(node1["offset_ns"] - FAKETIME_OFFSET_S * 1e9) / 1e3
    print(f"decode group placed at {node1['offset_ns'] / 1e6:.3f} ms by {node1['method']}, "
          f"+-{node1['uncertainty_us']:.0f} us (injected {FAKETIME_OFFSET_S * 1000:.0f} ms)")
    assert node1["method"] == "probe" and error_us <= node1["uncertainty_us"]
    state = load_state(run_dir)
    assert set(state.handles) == {"node0", "node1", "router"}
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 15)
