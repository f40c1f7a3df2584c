"""Real vLLM (CPU build), pipeline parallel PP=2 across two loopback "nodes", node 1's clock 250 ms
ahead under libfaketime: the stages share no collective, only send/recv (node 0's `c10d::send`,
node 1's `gloo:recv`), which bound node 1's offset from above only; the clock probe taken around the
capture closes the other side. The run must succeed end to end, and alignment.json must say node 1
is aligned with `send/recv` and `probe` among what placed it, its offset within 1 ms of the injected
250 ms and within its stated uncertainty (the printed line gives method, offset, error, uncertainty
and anchor count)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from magpie_trace.config import (
    BenchmarkConfig,
    Config,
    NodeConfig,
    OutputConfig,
    ProfileConfig,
    SchedulerConfig,
    ServerConfig,
    validate,
)
from magpie_trace.ports import free_port
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.fixtures.engine_env import _ENGINE_ENV, FAKETIME_OFFSET_S

pytestmark = pytest.mark.engine


def test_real_vllm_pp2_send_recv_and_probe_place_the_skewed_stage(tiny_model, vllm_command, engine_env,
                                                                  libfaketime, tmp_path: Path):
    scheduler = SchedulerConfig(
        backend="local", gpus_per_node=1,
        nodes=[NodeConfig(host="127.0.0.1", address="127.0.0.1"),
               NodeConfig(host="127.0.0.1", address="127.0.0.1",
                          env={"LD_PRELOAD": str(libfaketime), "FAKETIME": f"+{FAKETIME_OFFSET_S}"})],
        env={key: engine_env[key] for key in _ENGINE_ENV},
    )
    config = Config(
        scheduler=scheduler,
        server=ServerConfig(engine="vllm", model=str(tiny_model), pp=2, command=list(vllm_command),
                            host="127.0.0.1", port=free_port("127.0.0.1"), rendezvous_port=free_port("127.0.0.1"),
                            ready_timeout_s=600.0),
        profile=ProfileConfig(enabled=True, with_stack=False, start_after_s=1.0, duration_s=4.0, timeout_s=300.0),
        benchmark=BenchmarkConfig(input_len=32, output_len=16, num_prompts=24, concurrency=[4],
                                  warmup_requests=1, stall_timeout_s=120.0),
        output=OutputConfig(dir=str(tmp_path / "runs")), source="real-vllm-pp-test",
    )
    validate(config)
    result = run(config)
    run_dir = RunDir(result.run_dir)
    alignment = json.loads((run_dir.merged / "alignment.json").read_text())
    node1 = alignment["nodes"]["node1"]
    error_us = abs(node1["offset_ns"] / 1e3 - FAKETIME_OFFSET_S * 1e6)
    print(f"node1: {node1['method']} {node1['placed_by']} offset {node1['offset_ns'] / 1e6:.3f} ms, "
          f"error {error_us:.0f} us, +-{node1['uncertainty_us']} us, {node1['n_anchors']} anchors")
    assert node1["aligned"] and {"send/recv", "probe"} <= set(node1["placed_by"]), node1
    assert error_us < 1000
    assert error_us <= node1["uncertainty_us"]
