"""`magpie-trace run` on a real vLLM (CPU build), TP=2 across two ssh "nodes", node 1's clock 250 ms
ahead under libfaketime: benchmark results, collected node0-TP0/node1-TP1 traces, an alignment that
recovers the injected offset within 1 ms with its residuals in the report, and the report itself.

On these CPU traces two processes' clocks already differ by about 0.1 ms through Kineto's own time
conversion, and one all-reduce ends up to about 1.4 ms apart on the two ranks, so 1 ms is the bar.
"""

from __future__ import annotations

import json

import pytest

from magpie_trace.bench import read_result
from magpie_trace.config import (
    BenchmarkConfig,
    ProfileConfig,
)
from magpie_trace.launch import load_state
from magpie_trace.run import run
from magpie_trace.rundir import RunDir
from tests.fixtures.engine_env import FAKETIME_OFFSET_S
from tests.procs import leftover_processes, wait_for

pytestmark = pytest.mark.engine


def test_run_real_vllm_tp2_two_ssh_nodes_with_clock_offset(skewed_vllm_tp2):
    config = skewed_vllm_tp2(
        "real-vllm-run-test",
        profile=ProfileConfig(enabled=True, with_stack=False, start_after_s=1.0, duration_s=3.0, timeout_s=300.0),
        benchmark=BenchmarkConfig(input_len=32, output_len=16, num_prompts=24, concurrency=[4],
                                  warmup_requests=1, stall_timeout_s=120.0),
    )
    result = run(config)
    run_dir = RunDir(result.run_dir)

    bench = read_result(run_dir.bench)
    assert bench["valid"] is True and [p["point"] for p in bench["points"]] == ["profile-c4", "c4"]
    assert bench["points"][1]["completed"] == 24
    names = sorted(p.name for p in run_dir.traces.glob("*.trace.json.gz"))
    assert names == ["node0-TP0.trace.json.gz", "node0-api-server.trace.json.gz", "node1-TP1.trace.json.gz"]

    alignment = json.loads((run_dir.merged / "alignment.json").read_text())
    node1 = alignment["nodes"]["node1"]
    recovered_ms = abs(node1["offset_ns"]) / 1e6
    print(f"recovered offset {recovered_ms:.3f} ms (injected {FAKETIME_OFFSET_S * 1000:.0f} ms), "
          f"{node1['n_anchors']} anchors, residuals {node1.get('residuals')}")
    assert abs(recovered_ms - FAKETIME_OFFSET_S * 1000) < 1.0
    report = run_dir.report_md.read_text()
    alignment_part = report.split("## Clock alignment", 1)[1].split("\n## ", 1)[0]
    assert "end skew p95 (µs)" in alignment_part and "| node1 |" in alignment_part
    state = load_state(run_dir)
    assert wait_for(lambda: not leftover_processes(h.pgid for h in state.handles.values()), 15)
